//! The plain implementation of every [`Op`] over whole tensors: obviously correct, and the
//! arithmetic of the oracle that every faster path is checked against. The compiler's
//! reference interpreter runs networks with it; the runtime runs it for the layers that
//! have no compiled kernel.
//!
//! Tensors are one image (batch 1) in `[C, H, W]` layout; flat vectors are `[N, 1, 1]`.
//! Semantics follow PyTorch exactly (see each operator's notes); the golden tests in
//! `tests/golden/` compare this module with PyTorch's own results.
//!
//! Nothing here is tuned beyond what keeps full-size networks (VGG16 at 224×224) testable:
//! convolution is im2col followed by one matrix product per group.

mod conv;
mod operand;
mod pool;
pub use operand::EvalError;
use operand::{channel_vector, dims, weight};
pub use pool::max_pool;
#[cfg(test)]
mod tests;

use ndarray::{Array3, Axis, s};

use crate::ops::{Op, Pad2, Shape, WeightRole};
use crate::weights::Weights;

/// Checks that `x` has shape `want`, the input of `what` (a network, a program).
pub fn check_input(what: &'static str, want: Shape, x: &Array3<f32>) -> Result<(), EvalError> {
    if x.dim() != (want.c, want.h, want.w) {
        let (c, h, w) = x.dim();
        return Err(EvalError::InputShape {
            op: what,
            shapes: vec![[c, h, w]],
            reason: format!("the {what} takes {want}"),
        });
    }
    Ok(())
}

/// Evaluate one layer. `layer` is the layer's name, used to look up its weights
/// (`weights.get(layer, WeightRole::Weight)` etc., PyTorch naming: conv/linear `weight`
/// (+ `bias` if the op has one), bn `weight` = gamma, `bias` = beta, `running_mean`,
/// `running_var`; prelu `weight` = one slope per channel).
pub fn eval_op(
    op: &Op,
    layer: &str,
    inputs: &[&Array3<f32>],
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let (min, max) = op.arity();
    if inputs.len() < min || inputs.len() > max {
        let expected = if max == usize::MAX {
            format!("at least {min}")
        } else if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(EvalError::Arity {
            op: op.kind(),
            expected,
            found: inputs.len(),
        });
    }
    let x = inputs[0];
    match op {
        Op::Conv2d(c) => conv::conv2d(c, layer, x, weights),
        Op::BatchNorm { eps } => batch_norm(*eps, layer, x, weights),
        Op::Relu => Ok(x.mapv(|v| if v < 0.0 { 0.0 } else { v })),
        Op::Clip { min, max } => Ok(x.mapv(|v| clip(v, *min, *max))),
        Op::LeakyRelu { slope } => Ok(x.mapv(|v| if v > 0.0 { v } else { v * slope })),
        Op::PRelu => prelu(layer, x, weights),
        Op::Sigmoid => Ok(x.mapv(sigmoid)),
        Op::MaxPool(p) => pool::max_pool(p, x),
        Op::AvgPool(p) => pool::avg_pool(p, x),
        Op::GlobalAvgPool => global_avg_pool(x),
        Op::Add | Op::Sub | Op::Mul | Op::Div => arithmetic(op, inputs),
        Op::Affine { scale, shift } => Ok(x.mapv(|v| v * scale + shift)),
        Op::HardSigmoid { alpha, beta } => Ok(x.mapv(|v| hard_sigmoid(v, *alpha, *beta))),
        Op::HardSwish => Ok(x.mapv(|v| v * hard_sigmoid(v, 1.0 / 6.0, 0.5))),
        Op::Silu => Ok(x.mapv(|v| v * sigmoid(v))),
        Op::Upsample(u) => upsample(u, x),
        Op::ConvTranspose(c) => conv::conv_transpose2d(c, layer, x, weights),
        Op::Concat => concat(inputs),
        Op::Flatten => flatten(x),
        Op::Linear { out_features, bias } => linear(*out_features, *bias, layer, x, weights),
        Op::Softmax => Ok(softmax(x)),
        Op::Dropout | Op::Identity => Ok(x.clone()),
        Op::Pad { padding, value } => Ok(pad(x, *padding, *value)),
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `max(0, min(1, alpha · x + beta))`, NaN propagating.
fn hard_sigmoid(v: f32, alpha: f32, beta: f32) -> f32 {
    clip(v * alpha + beta, 0.0, 1.0)
}

/// `min(max(x, min), max)` as PyTorch's `clamp`, NaN propagating.
fn clip(x: f32, min: f32, max: f32) -> f32 {
    let y = if x < min { min } else { x };
    if y > max { max } else { y }
}

fn batch_norm(
    eps: f32,
    layer: &str,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let c = x.dim().0;
    let gamma = channel_vector(weights, layer, WeightRole::Weight, c)?;
    let beta = channel_vector(weights, layer, WeightRole::Bias, c)?;
    let mean = channel_vector(weights, layer, WeightRole::RunningMean, c)?;
    let var = channel_vector(weights, layer, WeightRole::RunningVar, c)?;
    let mut y = x.clone();
    for (ch, mut plane) in y.axis_iter_mut(Axis(0)).enumerate() {
        let inv_std = 1.0 / (var[ch] + eps).sqrt();
        plane.mapv_inplace(|v| (v - mean[ch]) * inv_std * gamma[ch] + beta[ch]);
    }
    Ok(y)
}

fn prelu(layer: &str, x: &Array3<f32>, weights: &Weights) -> Result<Array3<f32>, EvalError> {
    let slope = channel_vector(weights, layer, WeightRole::Weight, x.dim().0)?;
    let mut y = x.clone();
    for (ch, mut plane) in y.axis_iter_mut(Axis(0)).enumerate() {
        plane.mapv_inplace(|v| if v > 0.0 { v } else { v * slope[ch] });
    }
    Ok(y)
}

fn global_avg_pool(x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
    let (c, h, w) = x.dim();
    if h * w == 0 {
        return Err(EvalError::InputShape {
            op: "global_avgpool",
            shapes: vec![dims(x)],
            reason: "empty spatial extent".into(),
        });
    }
    let n = (h * w) as f32;
    Ok(Array3::from_shape_fn((c, 1, 1), |(ch, _, _)| {
        x.index_axis(Axis(0), ch).sum() / n
    }))
}

/// Element-wise arithmetic over inputs broadcast to one shape (numpy's rule), left to right.
fn arithmetic(op: &Op, inputs: &[&Array3<f32>]) -> Result<Array3<f32>, EvalError> {
    let fail = || EvalError::InputShape {
        op: op.kind(),
        shapes: inputs.iter().map(|t| dims(t)).collect(),
        reason: "the shapes do not broadcast (each axis must match or be 1)".into(),
    };
    let shape = |t: &Array3<f32>| {
        let (c, h, w) = t.dim();
        Shape::new(c, h, w)
    };
    let out = inputs[1..]
        .iter()
        .try_fold(shape(inputs[0]), |a, t| crate::ops::broadcast(a, shape(t)))
        .ok_or_else(fail)?;
    let dim = (out.c, out.h, out.w);
    let mut y = inputs[0].broadcast(dim).ok_or_else(fail)?.to_owned();
    for t in &inputs[1..] {
        let t = t.broadcast(dim).ok_or_else(fail)?;
        match op {
            Op::Sub => y -= &t,
            Op::Mul => y *= &t,
            Op::Div => y /= &t,
            _ => y += &t,
        }
    }
    Ok(y)
}

/// Nearest-neighbour upsampling by whole factors, less the crop: each output row gathers
/// its input row through a column table, and rows that repeat the one before are copied.
fn upsample(u: &crate::ops::Upsample, x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
    let (c, h, w) = x.dim();
    let (sh, sw) = (u.scale.h, u.scale.w);
    let out = |len: usize, s: usize, c0: usize, c1: usize| {
        len.checked_mul(s)?
            .checked_sub(c0)?
            .checked_sub(c1)
            .filter(|&n| n > 0 && s > 0)
    };
    let (Some(oh), Some(ow)) = (
        out(h, sh, u.crop.top, u.crop.bottom),
        out(w, sw, u.crop.left, u.crop.right),
    ) else {
        return Err(EvalError::InputShape {
            op: "upsample",
            shapes: vec![dims(x)],
            reason: format!("scale {} less crop {} leaves no output", u.scale, u.crop),
        });
    };
    let x = x.as_standard_layout();
    let xs = x.as_slice().unwrap_or(&[]);
    let cols: Vec<usize> = (0..ow).map(|z| (z + u.crop.left) / sw).collect();
    let mut y = vec![0.0f32; c * oh * ow];
    for ch in 0..c {
        let plane = &mut y[ch * oh * ow..(ch + 1) * oh * ow];
        for oy in 0..oh {
            let iy = (oy + u.crop.top) / sh;
            if oy > 0 && (oy - 1 + u.crop.top) / sh == iy {
                plane.copy_within((oy - 1) * ow..oy * ow, oy * ow);
                continue;
            }
            let src = &xs[(ch * h + iy) * w..(ch * h + iy + 1) * w];
            for (d, &ix) in plane[oy * ow..(oy + 1) * ow].iter_mut().zip(&cols) {
                *d = src[ix];
            }
        }
    }
    Array3::from_shape_vec((c, oh, ow), y).map_err(|e| EvalError::Parameter {
        op: "upsample",
        reason: e.to_string(),
    })
}

fn concat(inputs: &[&Array3<f32>]) -> Result<Array3<f32>, EvalError> {
    let (_, h, w) = inputs[0].dim();
    if inputs.iter().any(|t| t.dim().1 != h || t.dim().2 != w) {
        return Err(EvalError::InputShape {
            op: "concat",
            shapes: inputs.iter().map(|t| dims(t)).collect(),
            reason: "all inputs must have the same height and width".into(),
        });
    }
    let views: Vec<_> = inputs.iter().map(|t| t.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| EvalError::InputShape {
        op: "concat",
        shapes: inputs.iter().map(|t| dims(t)).collect(),
        reason: e.to_string(),
    })
}

/// The elements of `x` in row-major (C, H, W) order.
fn row_major(x: &Array3<f32>) -> Vec<f32> {
    x.iter().copied().collect()
}

fn flatten(x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
    let n = x.len();
    Array3::from_shape_vec((n, 1, 1), row_major(x)).map_err(|e| EvalError::InputShape {
        op: "flatten",
        shapes: vec![dims(x)],
        reason: e.to_string(),
    })
}

/// Fully connected layer. The input's elements, in row-major order, are the input features
/// (for the usual `[N, 1, 1]` input that is just the vector).
fn linear(
    out: usize,
    bias: bool,
    layer: &str,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let features = row_major(x);
    let n = features.len();
    let w = weight(weights, layer, WeightRole::Weight, &[out, n])?;
    let b = if bias {
        Some(channel_vector(weights, layer, WeightRole::Bias, out)?)
    } else {
        None
    };
    let w2 = w
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .map_err(|_| EvalError::WeightShape {
            tensor: Weights::tensor_name(layer, WeightRole::Weight),
            expected: vec![out, n],
            found: w.shape().to_vec(),
        })?;
    let y = w2.dot(&ndarray::Array1::from(features));
    Ok(Array3::from_shape_fn((out, 1, 1), |(o, _, _)| match &b {
        Some(b) => y[o] + b[o],
        None => y[o],
    }))
}

/// Softmax over the channel axis at every pixel, subtracting the maximum first.
fn softmax(x: &Array3<f32>) -> Array3<f32> {
    let (_, h, w) = x.dim();
    let mut y = x.clone();
    for i in 0..h {
        for j in 0..w {
            let mut lane = y.slice_mut(s![.., i, j]);
            let m = lane.fold(
                f32::NEG_INFINITY,
                |m, &v| if v > m || v.is_nan() { v } else { m },
            );
            lane.mapv_inplace(|v| (v - m).exp());
            let sum = lane.sum();
            lane.mapv_inplace(|v| v / sum);
        }
    }
    y
}

/// Constant padding of the spatial axes.
fn pad(x: &Array3<f32>, p: Pad2, value: f32) -> Array3<f32> {
    let (c, h, w) = x.dim();
    let mut y = Array3::from_elem((c, p.top + h + p.bottom, p.left + w + p.right), value);
    y.slice_mut(s![.., p.top..p.top + h, p.left..p.left + w])
        .assign(x);
    y
}
