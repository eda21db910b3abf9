//! 2-D convolution by im2col and one matrix product per group.

use ndarray::{Array2, Array3, Ix4, linalg::general_mat_mul, s};

use super::operand::{EvalError, channel_vector, dims, weight};
use crate::ops::{Conv2d, ConvTranspose2d, WeightRole};
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

/// Groups dividing both channel counts; kernel, stride and dilation positive.
fn check_params(
    op: &'static str,
    cin: usize,
    cout: usize,
    g: usize,
    windows: [usize; 6],
) -> Result<(), EvalError> {
    if g == 0 || !cin.is_multiple_of(g) || !cout.is_multiple_of(g) {
        return Err(EvalError::Parameter {
            op,
            reason: format!(
                "groups = {g} must divide input channels {cin} and output channels {cout}"
            ),
        });
    }
    if windows.contains(&0) {
        return Err(EvalError::Parameter {
            op,
            reason: "kernel, stride and dilation must be positive".into(),
        });
    }
    Ok(())
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
    check_params("conv", cin, cout, g, [kh, kw, sh, sw, dh, dw])?;
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

/// Transposed convolution: per group, one matrix product `Wᵀ · X` gives every input pixel's
/// taps (col2im's columns), which are then added into the output at `i·s + k·d`, the
/// padding cropping the sides. Output padding only adds rows and columns that get the bias.
pub(super) fn conv_transpose2d(
    c: &ConvTranspose2d,
    layer: &str,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let param = |reason: String| EvalError::Parameter {
        op: "conv_transpose",
        reason,
    };
    let (cin, h, w) = x.dim();
    let (cout, g) = (c.out_channels, c.groups);
    let (kh, kw) = (c.kernel.h, c.kernel.w);
    let (sh, sw) = (c.stride.h, c.stride.w);
    let (dh, dw) = (c.dilation.h, c.dilation.w);
    check_params("conv_transpose", cin, cout, g, [kh, kw, sh, sw, dh, dw])?;
    let p = c.padding;
    let crop = |full: Option<usize>, p0: usize, p1: usize| {
        full.and_then(|n| n.checked_sub(p0)?.checked_sub(p1))
            .filter(|&n| n > 0)
    };
    let (fh, fw) = (
        ConvTranspose2d::full_len(h, kh, sh, dh, c.output_padding.h),
        ConvTranspose2d::full_len(w, kw, sw, dw, c.output_padding.w),
    );
    let (Some(oh), Some(ow)) = (crop(fh, p.top, p.bottom), crop(fw, p.left, p.right)) else {
        return Err(EvalError::InputShape {
            op: "conv_transpose",
            shapes: vec![dims(x)],
            reason: format!("the padding {p} leaves no output"),
        });
    };
    let (cin_g, cout_g) = (cin / g, cout / g);
    let wt = weight(weights, layer, WeightRole::Weight, &[cin, cout_g, kh, kw])?;
    // [cin, cout_g · kh · kw]: row ci holds its taps for every output channel of its group.
    let wt = wt
        .to_shape((cin, cout_g * kh * kw))
        .map_err(|e| param(e.to_string()))?;
    let xs = x.to_shape((cin, h * w)).map_err(|e| param(e.to_string()))?;
    let mut y = vec![0.0f32; cout * oh * ow];
    let mut cols = Array2::<f32>::zeros((cout_g * kh * kw, h * w));
    // The input columns whose tap `kx` lands inside the output, and where the first lands.
    let span = |i: usize, k: usize, s: usize, d: usize, before: usize, out: usize| {
        let off = (k * d) as isize - before as isize;
        let first = if off < 0 {
            ((-off) as usize).div_ceil(s)
        } else {
            0
        };
        let last = ((out as isize - off + s as isize - 1).max(0) as usize / s).min(i);
        (first, last.max(first), off)
    };
    for gi in 0..g {
        let wg = wt.slice(s![gi * cin_g..(gi + 1) * cin_g, ..]);
        let xg = xs.slice(s![gi * cin_g..(gi + 1) * cin_g, ..]);
        general_mat_mul(1.0, &wg.t(), &xg, 0.0, &mut cols);
        for co in 0..cout_g {
            let o = gi * cout_g + co;
            let plane = &mut y[o * oh * ow..(o + 1) * oh * ow];
            for ky in 0..kh {
                let (y0, y1, yoff) = span(h, ky, sh, dh, p.top, oh);
                for kx in 0..kw {
                    let (x0, x1, xoff) = span(w, kx, sw, dw, p.left, ow);
                    let row = cols.row((co * kh + ky) * kw + kx);
                    let row = row.as_slice().unwrap_or(&[]);
                    for iy in y0..y1 {
                        let oy = (iy * sh) as isize + yoff;
                        let dst = &mut plane[oy as usize * ow..(oy as usize + 1) * ow];
                        let src = &row[iy * w..(iy + 1) * w];
                        for ix in x0..x1 {
                            dst[((ix * sw) as isize + xoff) as usize] += src[ix];
                        }
                    }
                }
            }
        }
    }
    let mut y = Array3::from_shape_vec((cout, oh, ow), y).map_err(|e| param(e.to_string()))?;
    if c.bias {
        let b = channel_vector(weights, layer, WeightRole::Bias, cout)?;
        for (mut plane, b) in y.outer_iter_mut().zip(b) {
            plane += b;
        }
    }
    Ok(y)
}
