//! Inverted-residual blocks (MobileNetV2's 1×1 expansion → 3×3 depthwise → 1×1 projection)
//! over bands of output rows.
//!
//! Layer by layer, the expanded tensor (six times the block's input) is written by the
//! expansion's GEMM, read and written by its epilogue, read by the depthwise kernel, and the
//! depthwise output is read by the projection's GEMM: at 112×112 and 56×56 these tensors are
//! 1.8–4.8 MB, larger than L2, so each pass goes to memory. Here a band of output rows is
//! computed end to end instead: the expanded rows it needs (its rows plus the depthwise
//! halo), their bias and activation, the depthwise band and the projection into the band's
//! columns of the output, with bias, residual and activation. A band's expanded rows are
//! sized to stay in L2. The halo rows two bands share are computed once: the next band
//! copies them from the previous band's buffer (two buffers alternate), so the block does
//! no more arithmetic than the three layers one after another.
//!
//! Without an expansion (MobileNetV2's first block: depthwise → projection), the depthwise
//! kernel reads the band's rows straight from the input, and the band's depthwise output
//! stays in L2 for the projection.
//!
//! Blocks with an expansion and whole groups of 8 hidden channels run channel-interleaved
//! inside (`[pixel, channel]`, see [`interleaves`]): the expansion's GEMM reads the input's
//! channel planes in place as A (pixels by channels) against its weights packed as B, and
//! stores the expanded rows interleaved with their bias and activation; the depthwise
//! kernel then reads eight channels of a pixel per vector (no padded copy, no
//! deinterleaving at stride 2: `depthwise::run_nhwc`), and the projection's GEMM reads its
//! output rows in place, writing `[pixel, cout]`, which is transposed into the output's
//! planes with bias, residual and activation. The block's input and output stay planar.
//!
//! Every operation is the one the layer-by-layer path does (the same GEMM sums in the same
//! order, the same depthwise taps, the epilogues' `act(v + bias (+ residual))`), only on
//! fewer columns at a time, so the results are the same up to the GEMM's blocking — and
//! the interleaved path's bits are the planar path's.

use super::depthwise::{self as host_dw, Pre, bias_act};
use crate::act::Act;
use crate::gemm::{ColumnEpilogue, PackedA, PackedB, Strided, gemm_packed, gemm_strided};
use crate::jit::DepthwiseSpec;

/// A 1×1 convolution of a block: packed weights `[cout, cin]`, bias, activation.
#[derive(Clone, Copy, Debug)]
pub struct Pointwise<'a> {
    pub weights: &'a PackedA,
    /// The same weights transposed, as the B of the interleaved path's GEMM.
    pub transposed: Option<&'a PackedB>,
    pub bias: &'a [f32],
    pub act: Act,
}

/// One block: `expand` (if any) on the input `[cin, h, w]`, then the depthwise `dw` (over
/// the whole expanded tensor `[hidden, h, w]`, or the input itself; no residual) with
/// weights `[hidden, 9]` and bias, then `project` with an optional residual
/// `[cout, oh, ow]`.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    pub expand: Option<Pointwise<'a>>,
    pub dw: DepthwiseSpec,
    pub dw_weights: &'a [f32],
    /// The depthwise weights tap by tap, `[9, hidden]` (`depthwise::taps_by_channel`), for
    /// the interleaved path.
    pub dw_taps: Option<&'a [f32]>,
    pub dw_bias: &'a [f32],
    pub project: Pointwise<'a>,
    /// Output rows per band (at least 1).
    pub rows: usize,
}

/// A band: output rows `o0..o1`, computed from expanded rows `lo..hi`; `spec` is the
/// depthwise convolution of those rows (with the padding that falls in the band).
#[derive(Clone, Copy, Debug)]
pub struct Band {
    pub o0: usize,
    pub o1: usize,
    pub lo: usize,
    pub hi: usize,
    pub spec: DepthwiseSpec,
}

/// Output rows per band so that a band's expanded rows take about `bytes` (at least one
/// row, at most all of them).
pub fn band_rows(spec: &DepthwiseSpec, bytes: usize) -> usize {
    let row = (spec.channels * spec.w * size_of::<f32>()).max(1);
    let span = spec.dh * spec.kh.saturating_sub(1) + 1;
    let rows_in = bytes / row;
    (rows_in.saturating_sub(span) / spec.sh.max(1) + 1).clamp(1, spec.oh.max(1))
}

/// The bands of `spec`'s output, `rows` output rows each (the last may have fewer).
pub fn bands(spec: &DepthwiseSpec, rows: usize) -> Vec<Band> {
    let rows = rows.max(1);
    let (pt, h) = (spec.pad[0] as isize, spec.h as isize);
    let span = (spec.dh * spec.kh.saturating_sub(1) + 1) as isize;
    (0..spec.oh)
        .step_by(rows)
        .map(|o0| {
            let o1 = (o0 + rows).min(spec.oh);
            // The padded input rows the band reads, in the expanded tensor's coordinates.
            let lo_u = (o0 * spec.sh) as isize - pt;
            let hi_u = ((o1 - 1) * spec.sh) as isize + span - pt;
            let lo = lo_u.clamp(0, h);
            let hi = hi_u.clamp(lo, h);
            let spec = DepthwiseSpec {
                h: (hi - lo) as usize,
                oh: o1 - o0,
                pad: [
                    (lo - lo_u) as usize,
                    spec.pad[1],
                    (hi_u - hi).max(0) as usize,
                    spec.pad[3],
                ],
                ..*spec
            };
            Band {
                o0,
                o1,
                lo: lo as usize,
                hi: hi as usize,
                spec,
            }
        })
        .collect()
}

/// Whether [`run`] computes `b` on this machine: every band on the host depthwise kernel,
/// and consistent sizes.
pub fn applies(b: &Block) -> bool {
    let s = &b.dw;
    !s.residual
        && b.expand
            .is_none_or(|e| e.weights.m == s.channels && e.bias.len() >= s.channels)
        && b.project.weights.k == s.channels
        && b.dw_bias.len() >= s.channels
        && b.dw_weights.len() >= s.channels * 9
        && b.project.bias.len() >= b.project.weights.m
        && s.oh > 0
        && s.ow > 0
        && host_dw::applies(s)
        && bands(s, b.rows)
            .iter()
            .all(|band| band.spec.h > 0 && host_dw::applies(&band.spec))
}

/// Whether [`run`] computes `b` channel-interleaved inside: an expansion, the transposed
/// weights, and the depthwise kernel's interleaved form for every band.
pub fn interleaves(b: &Block) -> bool {
    b.expand.is_some_and(|e| e.transposed.is_some())
        && b.project.transposed.is_some()
        && b.dw_taps.is_some_and(|t| t.len() >= 9 * b.dw.channels)
        && bands(&b.dw, b.rows)
            .iter()
            .all(|band| host_dw::nhwc_applies(&band.spec))
}

/// Floats of the four scratch buffers [`run`] takes: two for expanded rows (none without
/// an expansion), one for the depthwise band, one for the depthwise kernel (interleaved:
/// for the projection's `[pixel, cout]` band).
pub fn scratch_lens(b: &Block) -> [usize; 4] {
    let bands = bands(&b.dw, b.rows);
    let rows = bands
        .iter()
        .map(|band| band.hi - band.lo)
        .max()
        .unwrap_or(0);
    let e = if b.expand.is_some() {
        b.dw.channels * rows * b.dw.w
    } else {
        0
    };
    let d = b.dw.channels * b.rows.min(b.dw.oh) * b.dw.ow;
    let dw = if interleaves(b) {
        b.rows.min(b.dw.oh) * b.dw.ow * b.project.weights.m
    } else {
        bands
            .iter()
            .map(|band| host_dw::scratch_len(&band.spec))
            .max()
            .unwrap_or(0)
    };
    [e, e, d, dw]
}

/// Computes block `b` (which must satisfy [`applies`]) on `x` `[cin, h, w]`, writing
/// `[cout, oh, ow]` to `y`; `scratch` holds buffers at least [`scratch_lens`] long. Panics
/// if a slice is short.
pub fn run(
    b: &Block,
    x: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: [&mut [f32]; 4],
) {
    run_rows(b, x, b.dw.h * b.dw.w, residual, y, scratch);
}

/// [`run`] on an input whose channel planes are `plane` floats apart: `b` may be a band of
/// a larger block (its `dw` a band's spec, `x` starting at the band's first input row), as
/// when a block's rows are split over threads.
pub fn run_rows(
    b: &Block,
    x: &[f32],
    plane: usize,
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: [&mut [f32]; 4],
) {
    assert!(applies(b), "block does not apply: {b:?}");
    let s = &b.dw;
    let (hidden, w, cout) = (s.channels, s.w, b.project.weights.m);
    let n = s.oh * s.ow;
    let cin = b.expand.map_or(hidden, |e| e.weights.k);
    assert!(plane >= s.h * w && cin > 0);
    assert!(x.len() >= (cin - 1) * plane + s.h * w && y.len() >= cout * n);
    if let Some(r) = residual {
        assert!(r.len() >= cout * n, "residual too short");
    }
    if interleaves(b) {
        interleaved(b, x, plane, residual, y, scratch);
        return;
    }
    let [mut prev, mut cur, d, dw_scratch] = scratch;
    // The expanded rows `prev` holds.
    let (mut plo, mut phi) = (0, 0);
    for band in bands(s, b.rows) {
        let rows = band.hi - band.lo;
        let Some(expand) = b.expand else {
            // The depthwise kernel reads the band's rows of the input in place.
            let rows_x = &x[band.lo * w..];
            host_dw::run(
                &band.spec,
                rows_x,
                plane,
                None,
                b.dw_weights,
                b.dw_bias,
                None,
                d,
                dw_scratch,
            );
            project(b, d, band, residual, y);
            continue;
        };
        // Rows shared with the previous band are copied; the rest are computed.
        let kept = phi.clamp(band.lo, band.hi) - band.lo;
        if kept > 0 {
            let from = band.lo - plo;
            for ch in 0..hidden {
                let src = (ch * (phi - plo) + from) * w;
                cur[ch * rows * w..][..kept * w].copy_from_slice(&prev[src..src + kept * w]);
            }
        }
        let fresh = band.lo + kept;
        let new = band.hi - fresh;
        if new > 0 {
            // Without bias and activation: the depthwise kernel applies them as it copies
            // its input (`Pre`), so rows kept for the next band are copied raw.
            let c = &mut cur[kept * w..];
            gemm_packed(
                expand.weights,
                &x[fresh * w..],
                plane,
                new * w,
                c,
                rows * w,
                false,
            );
        }
        host_dw::run(
            &band.spec,
            &cur[..hidden * rows * w],
            rows * w,
            Some(Pre {
                bias: expand.bias,
                act: expand.act,
            }),
            b.dw_weights,
            b.dw_bias,
            None,
            d,
            dw_scratch,
        );
        project(b, d, band, residual, y);
        std::mem::swap(&mut prev, &mut cur);
        (plo, phi) = (band.lo, band.hi);
    }
}

/// [`run`] channel-interleaved inside (see the module's documentation); `b` satisfies
/// [`interleaves`].
fn interleaved(
    b: &Block,
    x: &[f32],
    plane: usize,
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: [&mut [f32]; 4],
) {
    let s = &b.dw;
    let (hidden, w, n) = (s.channels, s.w, s.oh * s.ow);
    let (Some(expand), Some(et), Some(pt), Some(taps)) = (
        b.expand,
        b.expand.and_then(|e| e.transposed),
        b.project.transposed,
        b.dw_taps,
    ) else {
        unreachable!("checked by `interleaves`");
    };
    let (p, cout) = (b.project, b.project.weights.m);
    let [mut prev, mut cur, d, t] = scratch;
    let (mut plo, mut phi) = (0, 0);
    for band in bands(s, b.rows) {
        let rows = band.hi - band.lo;
        // Rows shared with the previous band are copied (one run: rows are contiguous).
        let kept = phi.clamp(band.lo, band.hi) - band.lo;
        let row = w * hidden;
        if kept > 0 {
            let from = (band.lo - plo) * row;
            cur[..kept * row].copy_from_slice(&prev[from..from + kept * row]);
        }
        let fresh = band.lo + kept;
        let new = band.hi - fresh;
        if new > 0 {
            let a = Strided {
                a: &x[fresh * w..],
                rs: 1,
                ks: plane,
            };
            let epi = ColumnEpilogue {
                bias: expand.bias,
                act: expand.act,
            };
            gemm_strided(a, new * w, et, &mut cur[kept * row..], hidden, Some(epi));
        }
        host_dw::run_nhwc(&band.spec, &cur[..rows * row], taps, b.dw_bias, d);
        let (nb, c0) = ((band.o1 - band.o0) * s.ow, band.o0 * s.ow);
        let a = Strided {
            a: &d[..nb * hidden],
            rs: hidden,
            ks: 1,
        };
        gemm_strided(a, nb, pt, t, cout, None);
        let r = residual.map(|r| &r[c0..]);
        host_dw::planes_bias_act(t, (nb, cout), &mut y[c0..], n, p.bias, r, p.act);
        std::mem::swap(&mut prev, &mut cur);
        (plo, phi) = (band.lo, band.hi);
    }
}

/// The projection of `band`'s depthwise output `d` into its columns of `y`, with bias,
/// residual and activation.
fn project(b: &Block, d: &[f32], band: Band, residual: Option<&[f32]>, y: &mut [f32]) {
    let (p, n) = (b.project, b.dw.oh * b.dw.ow);
    let (nb, c0) = ((band.o1 - band.o0) * b.dw.ow, band.o0 * b.dw.ow);
    gemm_packed(p.weights, d, nb, nb, &mut y[c0..], n, false);
    for co in 0..p.weights.m {
        let at = co * n + c0;
        let r = residual.map(|r| &r[at..at + nb]);
        bias_act(&mut y[at..at + nb], p.bias[co], r, p.act);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(h: usize, sh: usize, pt: usize, pb: usize) -> DepthwiseSpec {
        let oh = (h + pt + pb - 3) / sh + 1;
        DepthwiseSpec {
            channels: 4,
            h,
            w: 9,
            kh: 3,
            kw: 3,
            sh,
            sw: sh,
            dh: 1,
            dw: 1,
            pad: [pt, 1, pb, 1],
            oh,
            ow: (9 + 2 - 3) / sh + 1,
            act: Act::None,
            residual: false,
        }
    }

    /// Bands tile the output rows exactly, each reads exactly the padded rows its outputs'
    /// windows cover, and its padding is only where the map's border is.
    #[test]
    fn bands_cover_the_output_and_read_exactly_their_windows() {
        for h in 3..20 {
            for sh in 1..=2 {
                for (pt, pb) in [(0, 0), (1, 1), (2, 0), (0, 2), (1, 2)] {
                    let s = spec(h, sh, pt, pb);
                    for rows in 1..=s.oh + 1 {
                        let bands = bands(&s, rows);
                        let mut next = 0;
                        for band in &bands {
                            assert_eq!(band.o0, next);
                            assert!(band.o1 > band.o0 && band.o1 - band.o0 <= rows);
                            next = band.o1;
                            let first = (band.o0 * sh) as isize - pt as isize;
                            let last = ((band.o1 - 1) * sh + 2) as isize - pt as isize;
                            assert_eq!(band.lo as isize, first.max(0), "{s:?} {band:?}");
                            assert_eq!(band.hi as isize, (last + 1).min(h as isize));
                            assert_eq!(band.spec.pad[0], (-first).max(0) as usize);
                            assert_eq!(band.spec.pad[2], (last + 1 - h as isize).max(0) as usize);
                            assert!(band.spec.pad[0] <= pt && band.spec.pad[2] <= pb);
                            assert!(band.spec.is_compilable(), "{band:?}");
                        }
                        assert_eq!(next, s.oh);
                    }
                }
            }
        }
    }

    #[test]
    fn band_rows_fit_the_budget() {
        let s = spec(40, 1, 1, 1);
        let row = 4 * 9 * 4;
        assert_eq!(band_rows(&s, 0), 1);
        assert_eq!(band_rows(&s, 10 * row), 8);
        assert_eq!(band_rows(&s, usize::MAX), s.oh);
        let s2 = spec(40, 2, 1, 1);
        assert_eq!(band_rows(&s2, 11 * row), 5);
    }
}
