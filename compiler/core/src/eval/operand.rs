//! What an operator is given and how it fails: the error type, and checked access to the
//! input's dimensions and the layer's weights.

use ndarray::{Array3, ArrayD};

use crate::ops::WeightRole;
use crate::weights::Weights;

/// Errors are only for inputs the layer graph's validation should have rejected.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("missing weight tensor `{tensor}`")]
    MissingWeight { tensor: String },
    #[error("weight tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    WeightShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("`{op}` takes {expected} input(s), got {found}")]
    Arity {
        op: &'static str,
        expected: String,
        found: usize,
    },
    #[error("`{op}`: unsupported input shape(s) {shapes:?}: {reason}")]
    InputShape {
        op: &'static str,
        shapes: Vec<[usize; 3]>,
        reason: String,
    },
    #[error("`{op}`: invalid parameter: {reason}")]
    Parameter { op: &'static str, reason: String },
}

/// `(c, h, w)` of a tensor as an array, for error messages.
pub(super) fn dims(x: &Array3<f32>) -> [usize; 3] {
    let (c, h, w) = x.dim();
    [c, h, w]
}

/// The weight tensor `{layer}.{role}`, checked to have shape `expected`.
pub(super) fn weight<'w>(
    weights: &'w Weights,
    layer: &str,
    role: WeightRole,
    expected: &[usize],
) -> Result<&'w ArrayD<f32>, EvalError> {
    let tensor = Weights::tensor_name(layer, role);
    let t = weights
        .get(layer, role)
        .ok_or_else(|| EvalError::MissingWeight {
            tensor: tensor.clone(),
        })?;
    if t.shape() != expected {
        return Err(EvalError::WeightShape {
            tensor,
            expected: expected.to_vec(),
            found: t.shape().to_vec(),
        });
    }
    Ok(t)
}

/// A per-channel weight vector of length `c` as a plain `Vec`.
pub(super) fn channel_vector(
    weights: &Weights,
    layer: &str,
    role: WeightRole,
    c: usize,
) -> Result<Vec<f32>, EvalError> {
    Ok(weight(weights, layer, role, &[c])?
        .iter()
        .copied()
        .collect())
}
