//! Flatten, Reshape, Squeeze and Unsqueeze: their target dims, and what a change of dims
//! becomes in the DSL.

use super::context::{Lowered, Node, Val, Value, layer, prod};
use crate::onnx::error::ImportError;
use adcnn_core::ops::Op;

/// Flatten's target dims: the product of the dims before `axis`, and that of the rest.
pub(super) fn flatten_target(n: &Node, dims: &[usize]) -> Result<Vec<usize>, ImportError> {
    let r = dims.len() as i64;
    let axis = n.int("axis", 1);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&axis) {
        return Err(n.unsupported(format!("axis {axis} out of range for rank {r}")));
    }
    let (a, b) = dims.split_at(axis as usize);
    Ok(vec![prod(a), prod(b)])
}

/// Reshape's target dims: `0` copies (unless `allowzero`), one `-1` is inferred.
pub(super) fn reshape_target(
    n: &Node,
    dims: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, ImportError> {
    let total = prod(dims);
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*dims.get(i).ok_or_else(|| {
                    n.unsupported(format!("shape {shape:?} copies a missing axis"))
                })?)
            }
            s if s > 0 => out.push(s as usize),
            _ => return Err(n.unsupported(format!("shape {shape:?}"))),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(0);
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(n.unsupported(format!("shape {shape:?} does not fit dims {dims:?}")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(n.unsupported(format!("shape {shape:?} does not fit dims {dims:?}")));
    }
    Ok(out)
}

pub(super) fn squeeze(
    n: &Node,
    dims: &[usize],
    axes: Option<&[i64]>,
) -> Result<Vec<usize>, ImportError> {
    let r = dims.len() as i64;
    let drop: Vec<usize> = match axes {
        None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
        Some(a) => a
            .iter()
            .map(|&v| if v < 0 { v + r } else { v })
            .map(|v| {
                usize::try_from(v)
                    .ok()
                    .filter(|&v| v < dims.len() && dims[v] == 1)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| n.unsupported(format!("axes {a:?} of dims {dims:?}")))?,
    };
    Ok(dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

pub(super) fn unsqueeze(n: &Node, dims: &[usize], axes: &[i64]) -> Result<Vec<usize>, ImportError> {
    let r = (dims.len() + axes.len()) as i64;
    let mut at: Vec<usize> = axes
        .iter()
        .map(|&v| if v < 0 { v + r } else { v })
        .map(|v| usize::try_from(v).ok().filter(|&v| (v as i64) < r))
        .collect::<Option<_>>()
        .ok_or_else(|| n.unsupported(format!("axes {axes:?} of dims {dims:?}")))?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(n.unsupported(format!("repeated axes {axes:?}")));
    }
    let mut out = Vec::with_capacity(r as usize);
    let mut src = dims.iter();
    for i in 0..r as usize {
        if at.contains(&i) {
            out.push(1);
        } else if let Some(&d) = src.next() {
            out.push(d);
        }
    }
    Ok(out)
}

/// Flatten, Reshape, Squeeze and Unsqueeze: a `flatten` layer, or nothing when the DSL shape
/// does not change; anything else is an error.
pub(super) fn reshape_to(n: &Node, x: Val, target: Vec<usize>) -> Result<Lowered, ImportError> {
    let numel = prod(&x.dims);
    if target == x.dims {
        return Ok(Lowered::Alias(Value::Tensor(x)));
    }
    if target == [1, numel] && x.dims.len() == 4 {
        return Ok(Lowered::Layer(layer(Op::Flatten, vec![x.src]), target));
    }
    if x.dims.len() == 2 && target == [1, numel, 1, 1] {
        return Ok(Lowered::Alias(Value::Tensor(Val {
            src: x.src,
            dims: target,
        })));
    }
    Err(n.unsupported(format!(
        "reshaping {:?} to {target:?}; supported: flattening [1, C, H, W] to [1, C·H·W], \
         [1, N] to [1, N, 1, 1], and no-op reshapes",
        x.dims
    )))
}
