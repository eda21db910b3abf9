//! Each layer's operator and input size on a tile, and the specs of the generated functions
//! for them.

use adcnn_core::geometry::{input_region, tile_op};
use adcnn_core::net::LayerId;
use adcnn_core::ops::{Conv2d, Op};
use adcnn_core::plan::{Mode, Segment, Tile};
use adcnn_core::program::Program;

use super::compiled::CompileError;
use super::prepare::ConvKernel;
use crate::jit::{DepthwiseSpec, MaxPoolSpec};

/// The operator a tile runs for layer `i` of `seg` (whose program is `prog`) and the
/// `(h, w)` of its first input.
pub(super) fn tile_geometry(
    prog: &Program,
    seg: &Segment,
    tile: &Tile,
    i: LayerId,
) -> Result<(Op, usize, usize), CompileError> {
    let first = seg.first.index();
    let layer = prog
        .get(i.index())
        .ok_or_else(|| CompileError::Tile(format!("no layer {}", i.0)))?;
    let region = tile.regions[i.index() - first];
    let src = &layer.inputs[0];
    match seg.mode {
        Mode::Halo => {
            let need = input_region(&layer.op, &region, prog.shape_of(src));
            let op = tile_op(&layer.op, &region, prog.shape_of(src))
                .map_err(|e| CompileError::Tile(e.0))?;
            Ok((op, need.rows(), need.cols()))
        }
        Mode::Fdsp => {
            let r = match prog.position(src) {
                Some(j) => tile.regions[j],
                None => tile.input,
            };
            Ok((layer.op.clone(), r.rows(), r.cols()))
        }
    }
}

/// The generated pool for a max pool over `[c, h, w]`: its spec is over the input padded
/// with −∞ (padding is copied in at run time), so every window lies inside. `None` (the
/// reference runs it) for ceil-mode windows hanging past the padded input, and for padding
/// as wide as the window (a window could then see only padding).
pub(super) fn max_pool_spec(op: &Op, c: usize, h: usize, w: usize) -> Option<MaxPoolSpec> {
    let Op::MaxPool(p) = op else { return None };
    let pad = p.padding;
    let (h, w) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    if h < p.kernel.h
        || w < p.kernel.w
        || p.stride.h == 0
        || p.stride.w == 0
        || pad.top.max(pad.bottom) >= p.kernel.h
        || pad.left.max(pad.right) >= p.kernel.w
    {
        return None;
    }
    let (oh, ow) = (
        (h - p.kernel.h) / p.stride.h + 1,
        (w - p.kernel.w) / p.stride.w + 1,
    );
    let exact = |len: usize, k: usize, s: usize| (len - k).is_multiple_of(s);
    if p.ceil_mode && !(exact(h, p.kernel.h, p.stride.h) && exact(w, p.kernel.w, p.stride.w)) {
        return None;
    }
    Some(MaxPoolSpec {
        c,
        h,
        w,
        kh: p.kernel.h,
        kw: p.kernel.w,
        sh: p.stride.h,
        sw: p.stride.w,
        oh,
        ow,
    })
}

/// The output width of conv `c` on an input `w` wide, if the window fits.
pub(super) fn tile_ow(c: &Conv2d, w: usize) -> Option<usize> {
    let padded = w + c.padding.left + c.padding.right;
    let span = c.dilation.w * c.kernel.w.checked_sub(1)? + 1;
    (c.stride.w > 0 && padded >= span).then(|| (padded - span) / c.stride.w + 1)
}

/// The generated depthwise kernel's spec for conv `c` on a `[channels, h, w]` input, if it
/// has one.
pub(super) fn depthwise_spec(
    c: &Conv2d,
    channels: usize,
    h: usize,
    w: usize,
    k: &ConvKernel,
) -> Option<DepthwiseSpec> {
    let out = |len: usize, pb: usize, pe: usize, kk: usize, s: usize, d: usize| {
        let span = d * kk.checked_sub(1)? + 1;
        (s > 0 && len + pb + pe >= span).then(|| (len + pb + pe - span) / s + 1)
    };
    let p = c.padding;
    let spec = DepthwiseSpec {
        channels,
        h,
        w,
        kh: c.kernel.h,
        kw: c.kernel.w,
        sh: c.stride.h,
        sw: c.stride.w,
        dh: c.dilation.h,
        dw: c.dilation.w,
        pad: [p.top, p.left, p.bottom, p.right],
        oh: out(h, p.top, p.bottom, c.kernel.h, c.stride.h, c.dilation.h)?,
        ow: out(w, p.left, p.right, c.kernel.w, c.stride.w, c.dilation.w)?,
        act: k.act,
        residual: k.residual.is_some(),
    };
    (k.is_depthwise() && channels == k.groups && spec.is_compilable()).then_some(spec)
}
