//! 2-D convolution by im2col and one matrix product per group.

use ndarray::{Array2, Array3, Ix4, linalg::general_mat_mul, s};

use super::operand::{EvalError, channel_vector, dims, weight};
use crate::ops::{Conv2d, WeightRole};
use crate::weights::Weights;

/// Output length of a convolution along one axis:
/// `(len + pad_begin + pad_end - dilation * (k - 1) - 1) / stride + 1`, or `None` when the
/// dilated kernel does not fit in the padded input.
pub(super) fn conv_out_len(
    len: usize,
    pad_begin: usize,
    pad_end: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = len + pad_begin + pad_end;
    let span = dilation * (k - 1) + 1;
    if padded < span || stride == 0 {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// The input index of padded position `p` (= output position × stride + tap offset), or
/// `None` when it falls in the padding.
fn unpad(p: usize, pad_begin: usize, len: usize) -> Option<usize> {
    p.checked_sub(pad_begin).filter(|&i| i < len)
}

pub(super) fn conv2d(
    c: &Conv2d,
    layer: &str,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let param = |reason: String| EvalError::Parameter { op: "conv", reason };
    let (cin, h, w) = x.dim();
    let (cout, g) = (c.out_channels, c.groups);
    let (kh, kw) = (c.kernel.h, c.kernel.w);
    let (sh, sw) = (c.stride.h, c.stride.w);
    let (dh, dw) = (c.dilation.h, c.dilation.w);
    if g == 0 || cin % g != 0 || cout % g != 0 {
        return Err(param(format!(
            "groups = {g} must divide input channels {cin} and output channels {cout}"
        )));
    }
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 || dh == 0 || dw == 0 {
        return Err(param("kernel, stride and dilation must be positive".into()));
    }
    let p = c.padding;
    let (Some(oh), Some(ow)) = (
        conv_out_len(h, p.top, p.bottom, kh, sh, dh),
        conv_out_len(w, p.left, p.right, kw, sw, dw),
    ) else {
        return Err(EvalError::InputShape {
            op: "conv",
            shapes: vec![dims(x)],
            reason: format!(
                "the padded input is smaller than the (dilated) kernel {}",
                c.kernel
            ),
        });
    };
    let (cin_g, cout_g) = (cin / g, cout / g);
    let wt = weight(weights, layer, WeightRole::Weight, &[cout, cin_g, kh, kw])?;
    let wt = wt
        .view()
        .into_dimensionality::<Ix4>()
        .map_err(|e| param(e.to_string()))?;
    // [cout, cin_g * kh * kw], rows in (ci, ky, kx) order, matching the im2col rows below.
    let wt = wt
        .to_shape((cout, cin_g * kh * kw))
        .map_err(|e| param(e.to_string()))?;

    let mut y = Array2::<f32>::zeros((cout, oh * ow));
    let mut cols = Array2::<f32>::zeros((cin_g * kh * kw, oh * ow));
    for gi in 0..g {
        // im2col: cols[(ci, ky, kx), (oy, ox)] = padded input at (oy*s + ky*d, ox*s + kx*d).
        cols.fill(0.0);
        for ci in 0..cin_g {
            let plane = x.slice(s![gi * cin_g + ci, .., ..]);
            for ky in 0..kh {
                for kx in 0..kw {
                    let mut row = cols.row_mut((ci * kh + ky) * kw + kx);
                    for oy in 0..oh {
                        let Some(iy) = unpad(oy * sh + ky * dh, p.top, h) else {
                            continue;
                        };
                        for ox in 0..ow {
                            if let Some(ix) = unpad(ox * sw + kx * dw, p.left, w) {
                                row[oy * ow + ox] = plane[[iy, ix]];
                            }
                        }
                    }
                }
            }
        }
        let wg = wt.slice(s![gi * cout_g..(gi + 1) * cout_g, ..]);
        let mut yg = y.slice_mut(s![gi * cout_g..(gi + 1) * cout_g, ..]);
        general_mat_mul(1.0, &wg, &cols, 0.0, &mut yg);
    }
    if c.bias {
        let b = channel_vector(weights, layer, WeightRole::Bias, cout)?;
        for (mut row, b) in y.rows_mut().into_iter().zip(b) {
            row += b;
        }
    }
    y.into_shape_with_order((cout, oh, ow))
        .map_err(|e| param(e.to_string()))
}
