//! The tail on the coordinator: fully connected layers on the host GEMV, the rest on the
//! plain operators.

use std::time::Instant;

use adcnn_core::eval::{EvalError, eval_op};
use adcnn_core::ops::{Op, WeightRole};
use adcnn_core::program::Program;
use adcnn_core::weights::Weights;
use ndarray::Array3;

use super::compiled::{CompiledKernels, Profile};
use super::prepare::vector;
use super::run::missing;
use crate::gemm::gemv_par;

impl CompiledKernels {
    /// Runs the tail program `tail` on the coordinator's thread from `live` (the last
    /// segment's output): fully connected layers on the host GEMV straight from the plan's
    /// weights, everything else on the plain operators.
    pub fn run_tail(
        tail: &Program,
        live: &Array3<f32>,
        mut profile: Option<&mut Profile>,
    ) -> Result<Array3<f32>, EvalError> {
        let weights = tail.weights();
        tail.run_with(live, |layer, inputs| {
            let t0 = Instant::now();
            let (kind, out) = match (&layer.op, inputs) {
                (Op::Linear { out_features, bias }, [x]) => (
                    "tail: linear (host gemv)",
                    linear(&layer.name, *out_features, *bias, x, weights),
                ),
                _ => (
                    "tail: other layers (reference)",
                    eval_op(&layer.op, &layer.name, inputs, weights),
                ),
            };
            if let Some(p) = profile.as_deref_mut() {
                *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
            }
            out
        })
    }
}

/// A fully connected layer at batch 1 on the host GEMV, straight from the plan's weights
/// (row-major `[out, in]`: nothing to prepare). Weights it cannot use as they are
/// (non-contiguous, wrong shape) go to the reference interpreter, which reports the errors.
pub(super) fn linear(
    name: &str,
    out: usize,
    bias: bool,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let op = Op::Linear {
        out_features: out,
        bias,
    };
    let xc = x.as_standard_layout();
    let xs = xc.as_slice().ok_or_else(|| missing(name))?;
    let w = weights.get(name, WeightRole::Weight);
    let b = if bias {
        vector(weights, name, WeightRole::Bias, out)
    } else {
        Some(vec![0.0; out])
    };
    match (
        w.filter(|w| w.shape() == [out, xs.len()])
            .and_then(|w| w.as_slice()),
        b,
    ) {
        (Some(w), Some(b)) => {
            let mut y = vec![0.0; out];
            gemv_par(w, xs.len(), xs, &mut y);
            y.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            Ok(
                Array3::from_shape_vec((out, 1, 1), y).map_err(|e| EvalError::Parameter {
                    op: "linear",
                    reason: e.to_string(),
                })?,
            )
        }
        _ => eval_op(&op, name, &[x], weights),
    }
}
