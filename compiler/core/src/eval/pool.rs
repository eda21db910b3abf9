//! Max and average pooling, with PyTorch's output-size and divisor rules.

use ndarray::Array3;

use super::operand::{EvalError, dims};
use crate::ops::Pool2d;

/// Output length of a pooling window along one axis, as PyTorch's `pooling_output_shape`:
/// `(len + pad_begin + pad_end - k) / stride + 1`, rounded up in ceil mode; in ceil mode a
/// last window that would start in the end padding (at or past `len + pad_begin`) is dropped.
/// `None` when the window does not fit in the padded input.
pub(super) fn pool_out_len(
    len: usize,
    pad_begin: usize,
    pad_end: usize,
    k: usize,
    stride: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let padded = len + pad_begin + pad_end;
    if padded < k || k == 0 || stride == 0 {
        return None;
    }
    let span = padded - k;
    let mut out = if ceil_mode {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    if ceil_mode && (out - 1) * stride >= len + pad_begin {
        out -= 1;
    }
    Some(out)
}

/// One window along one axis, as PyTorch's CPU kernels compute it (all in padded-free input
/// coordinates): `start = o * stride - pad_begin`, `end = min(start + k, len + pad_end)`.
/// Returns `(start, end)` before clipping to the input.
fn window(
    o: usize,
    stride: usize,
    pad_begin: usize,
    pad_end: usize,
    k: usize,
    len: usize,
) -> (isize, isize) {
    let start = (o * stride) as isize - pad_begin as isize;
    let end = (start + k as isize).min((len + pad_end) as isize);
    (start, end)
}

/// `(clipped start, clipped end)` of a window: the real (non-padding) input positions.
fn clip_window((start, end): (isize, isize), len: usize) -> (usize, usize) {
    let s = start.max(0) as usize;
    let e = end.clamp(0, len as isize) as usize;
    (s, e.max(s))
}

/// Output `(oh, ow)` of a pooling layer on `x`, or the error to report.
fn out_dims(op: &'static str, p: &Pool2d, x: &Array3<f32>) -> Result<(usize, usize), EvalError> {
    let (_, h, w) = x.dim();
    let pad = p.padding;
    match (
        pool_out_len(h, pad.top, pad.bottom, p.kernel.h, p.stride.h, p.ceil_mode),
        pool_out_len(w, pad.left, pad.right, p.kernel.w, p.stride.w, p.ceil_mode),
    ) {
        (Some(oh), Some(ow)) => Ok((oh, ow)),
        _ => Err(EvalError::InputShape {
            op,
            shapes: vec![dims(x)],
            reason: format!(
                "window {} with stride {} and padding {} does not fit (kernel and stride must be positive)",
                p.kernel, p.stride, p.padding
            ),
        }),
    }
}

/// Max pooling; padding counts as −∞ (a window made only of padding gives −∞). NaN propagates,
/// as in PyTorch.
pub fn max_pool(p: &Pool2d, x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
    let (c, h, w) = x.dim();
    let (oh, ow) = out_dims("maxpool", p, x)?;
    let pad = p.padding;
    Ok(Array3::from_shape_fn((c, oh, ow), |(ch, oy, ox)| {
        let (y0, y1) = clip_window(
            window(oy, p.stride.h, pad.top, pad.bottom, p.kernel.h, h),
            h,
        );
        let (x0, x1) = clip_window(
            window(ox, p.stride.w, pad.left, pad.right, p.kernel.w, w),
            w,
        );
        let mut m = f32::NEG_INFINITY;
        for iy in y0..y1 {
            for ix in x0..x1 {
                let v = x[[ch, iy, ix]];
                if v > m || v.is_nan() {
                    m = v;
                }
            }
        }
        m
    }))
}

/// Average pooling with zero padding. The divisor follows PyTorch's CPU kernel: with
/// `count_include_pad` it is the window clipped to the padded extent (so a ceil-mode window
/// hanging past the end padding divides by fewer), otherwise the number of real elements.
/// A window with no real elements gives 0.
pub(super) fn avg_pool(p: &Pool2d, x: &Array3<f32>) -> Result<Array3<f32>, EvalError> {
    let (c, h, w) = x.dim();
    let (oh, ow) = out_dims("avgpool", p, x)?;
    let pad = p.padding;
    Ok(Array3::from_shape_fn((c, oh, ow), |(ch, oy, ox)| {
        let wy = window(oy, p.stride.h, pad.top, pad.bottom, p.kernel.h, h);
        let wx = window(ox, p.stride.w, pad.left, pad.right, p.kernel.w, w);
        let pool_size = (wy.1 - wy.0) * (wx.1 - wx.0);
        let (y0, y1) = clip_window(wy, h);
        let (x0, x1) = clip_window(wx, w);
        if y0 >= y1 || x0 >= x1 {
            return 0.0;
        }
        let mut sum = 0.0f32;
        for iy in y0..y1 {
            for ix in x0..x1 {
                sum += x[[ch, iy, ix]];
            }
        }
        let divisor = if p.count_include_pad {
            pool_size as f32
        } else {
            ((y1 - y0) * (x1 - x0)) as f32
        };
        sum / divisor
    }))
}
