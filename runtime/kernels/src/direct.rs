//! Direct stride-1 and stride-2 convolutions with few input channels (network stems:
//! MobileNetV2's 3×3/2 and ResNet's 7×7/2 on RGB, YOLOv2-tiny's and VGG16's 3×3/1, K = 27)
//! in AVX2+FMA, chosen at run time where the CPU has it. With K this small, im2col + GEMM
//! spends most of its time gathering the B panel (27 rows per output pixel) and loading
//! and storing C once per 27-deep product; here each input vector is loaded once per 4
//! output channels and the accumulators stay in registers for the whole window.
//!
//! Per call the input is copied into a zeroed scratch of padded rows — at stride 2 split
//! into even and odd columns (as the depthwise kernel does) — so each tap of 8 output
//! columns is one contiguous load. Per output row, two 8-column vectors at a time (the last overlapping
//! the one before; rows under 8 wide take the GEMM), per block of 4 output channels: eight
//! ymm accumulators, two loads and four broadcast weights per eight FMAs per tap, then
//! bias and activation in registers before the stores.
#![allow(
    unsafe_code,
    reason = "AVX2+FMA intrinsics on raw pointers into bounds-checked slices"
)]

use super::gemm::{Isa, isa};
use crate::act::Act;
use adcnn_core::ops::Conv2d;

/// The most input channels the kernel takes (beyond a few, the GEMM's blocking wins).
pub const MAX_CIN: usize = 4;

/// Whether conv `c` with `cin` input channels has the shape the kernel handles: stride
/// 1×1 (not 1×1 kernels: the GEMM reads their input in place, there is no gather to save)
/// or 2×2, one group, no dilation, kernel at most 7×7, at most [`MAX_CIN`] input channels, a
/// multiple of 8 output channels.
pub fn shape_fits(c: &Conv2d, cin: usize) -> bool {
    let pointwise = (c.kernel.h, c.kernel.w) == (1, 1);
    (((c.stride.h, c.stride.w) == (1, 1) && !pointwise) || (c.stride.h, c.stride.w) == (2, 2))
        && c.groups == 1
        && (c.dilation.h, c.dilation.w) == (1, 1)
        && (1..=7).contains(&c.kernel.h)
        && (1..=7).contains(&c.kernel.w)
        && (1..=MAX_CIN).contains(&cin)
        && c.out_channels > 0
        && c.out_channels.is_multiple_of(8)
}

/// Whether the kernel computes a tile of conv `c` (`shape_fits`) with output width `ow` on
/// this machine: rows at least 8 wide, AVX2 and FMA.
pub fn applies(c: &Conv2d, cin: usize, ow: usize) -> bool {
    shape_fits(c, cin) && ow >= 8 && isa() == Isa::Avx2Fma
}

/// The geometry of one call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    /// Top, left, bottom, right.
    pub pad: [usize; 4],
    /// Write the 2×2 stride-2 max pool of the output instead (`[cout, oh/2, ow/2]`, floor
    /// mode), taken in registers: the full-resolution output is never stored.
    pub pool: bool,
}

/// Floats per column phase of a scratch row (one phase per stride step): the padded width
/// over the stride, plus slack for the last vector.
fn phase_len(c: &Conv2d, s: &Shape) -> usize {
    (s.w + s.pad[1] + s.pad[3]).div_ceil(c.stride.w) + c.kernel.w / 2 + 8
}

/// Floats of scratch [`run`] needs: every input channel's padded rows, one phase per
/// stride step each.
pub fn scratch_len(c: &Conv2d, s: &Shape) -> usize {
    s.cin * (s.h + s.pad[0] + s.pad[2]) * c.stride.w * phase_len(c, s)
}

/// Runs conv `c` (which must satisfy [`applies`]) on `x` `[cin, h, w]` with weights
/// `[cout, cin·kh·kw]` (batch norm folded), bias `[cout]` and activation `act`, writing
/// `[cout, oh, ow]` (pooled with `s.pool`) to `y`; `scratch` (at least [`scratch_len`]
/// floats) is overwritten.
/// Panics if a slice is short, the output size does not follow from the input, or the
/// kernel does not apply.
#[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
pub fn run(
    c: &Conv2d,
    s: &Shape,
    x: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(
        applies(c, s.cin, s.ow),
        "direct kernel does not apply: {c:?} {s:?}"
    );
    let (kh, kw, cout) = (c.kernel.h, c.kernel.w, c.out_channels);
    let [pt, pl, pb, pr] = s.pad;
    let st = c.stride.h;
    let out = |len: usize, p: usize, k: usize| (len + p >= k).then(|| (len + p - k) / st + 1);
    assert_eq!(out(s.h, pt + pb, kh), Some(s.oh), "output height");
    assert_eq!(out(s.w, pl + pr, kw), Some(s.ow), "output width");
    assert!(x.len() >= s.cin * s.h * s.w && weights.len() >= cout * s.cin * kh * kw);
    let out_len = if s.pool {
        (s.oh / 2) * (s.ow / 2)
    } else {
        s.oh * s.ow
    };
    assert!(bias.len() >= cout && y.len() >= cout * out_len);
    assert!(scratch.len() >= scratch_len(c, s));
    #[cfg(not(target_arch = "x86_64"))]
    let _ = act;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX2 and FMA; the slice lengths and the output size are
    // checked above, and the kernel stays within them (see `avx2::conv`).
    unsafe {
        avx2::conv(c, s, x, weights, bias, act, y, scratch);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Act, Conv2d, Shape, phase_len, scratch_len};

    /// Four output channels (weights from `wp`, `taps.len()` apart) × two vectors of 8
    /// columns (windows from `ba` and `bb`), summed over the whole window in registers:
    /// two input loads and four broadcasts per eight FMAs per tap. A macro, not a function:
    /// as a `#[target_feature]` function returning the accumulators it was not inlined, and
    /// the kernel ran ~10× slower. Expands to unsafe code: every tap offset from `ba` and
    /// `bb` must have 8 readable floats, and `wp` 4 rows of `taps.len()` weights.
    macro_rules! window {
        ($ba:expr, $bb:expr, $taps:expr, $wp:expr) => {{
            let (ba, bb, taps, wp): (*const f32, *const f32, &[usize], *const f32) =
                ($ba, $bb, $taps, $wp);
            let k = taps.len();
            let mut acc = [[_mm256_setzero_ps(); 4]; 2];
            for (t, &off) in taps.iter().enumerate() {
                let va = _mm256_loadu_ps(ba.add(off));
                let vb = _mm256_loadu_ps(bb.add(off));
                for j in 0..4 {
                    let wv = _mm256_broadcast_ss(&*wp.add(j * k + t));
                    acc[0][j] = _mm256_fmadd_ps(va, wv, acc[0][j]);
                    acc[1][j] = _mm256_fmadd_ps(vb, wv, acc[1][j]);
                }
            }
            acc
        }};
    }

    /// # Safety
    /// AVX2 and FMA; the slices and shapes as `super::run` checks them.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    #[allow(
        clippy::needless_range_loop,
        reason = "j indexes accumulators, weight rows and biases together"
    )]
    pub(super) unsafe fn conv(
        c: &Conv2d,
        s: &Shape,
        x: &[f32],
        weights: &[f32],
        bias: &[f32],
        act: Act,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (kh, kw, cout) = (c.kernel.h, c.kernel.w, c.out_channels);
        let (h, w, oh, ow) = (s.h, s.w, s.oh, s.ow);
        let [pt, pl, pb, _] = s.pad;
        // The stride (1 or 2, the same on both axes).
        let st = c.stride.w;
        let ps = phase_len(c, s);
        let rows = h + pt + pb;
        let rs = st * ps;
        let scratch = &mut scratch[..scratch_len(c, s)];
        scratch.fill(0.0);
        for ci in 0..s.cin {
            for r in 0..h {
                let src = &x[(ci * h + r) * w..][..w];
                let row = &mut scratch[(ci * rows + pt + r) * rs..][..rs];
                if st == 1 {
                    row[pl..pl + w].copy_from_slice(src);
                } else {
                    super::super::depthwise::deinterleave(src, row, pl, ps);
                }
            }
        }
        // Float offsets of each tap (ci, ky, kx) from the window's top-left in the
        // scratch: row ci·rows + ky, phase kx % st, index kx / st.
        let taps: Vec<usize> = (0..s.cin)
            .flat_map(|ci| {
                (0..kh).flat_map(move |ky| {
                    (0..kw).map(move |kx| (ci * rows + ky) * rs + (kx % st) * ps + kx / st)
                })
            })
            .collect();
        let k = taps.len();
        let (lo, hi) = match act {
            Act::None => (0.0, 0.0),
            Act::Relu => (0.0, f32::INFINITY),
            Act::Clip { min, max } => (min, max),
            Act::Leaky { slope } => (slope, 0.0),
        };
        let (none, leaky) = (act == Act::None, matches!(act, Act::Leaky { .. }));
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let n = oh * ow;
        let sp = scratch.as_ptr();
        let yp = y.as_mut_ptr();
        // Vector starts, every 8 columns, the last one ending at ow; taken two at a time
        // (the second of an odd count's last pair repeats the first: same values stored
        // twice).
        let starts: Vec<usize> = (0..ow.div_ceil(8)).map(|i| (8 * i).min(ow - 8)).collect();
        let fin = |a: __m256, b: f32| {
            let v = _mm256_add_ps(a, _mm256_set1_ps(b));
            if none {
                v
            } else if leaky {
                let pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
                _mm256_blendv_ps(_mm256_mul_ps(v, vlo), v, pos)
            } else {
                // relu: an infinite upper bound.
                _mm256_min_ps(_mm256_max_ps(v, vlo), vhi)
            }
        };
        if s.pool {
            // SAFETY: the caller's guarantee (as below).
            unsafe { pooled(c, s, &taps, weights, bias, &fin, sp, rs, y) };
            return;
        }
        for oy in 0..oh {
            for pair in starts.chunks(2) {
                let (xa, xb) = (pair[0], pair[pair.len() - 1]);
                // SAFETY: tap (ci, ky, kx) of output (oy, x0..x0+8), x0 ∈ {xa, xb}, reads
                // scratch row ci·rows + st·oy + ky < cin·rows (the output size follows from
                // the padded size), phase index x0 + kx/st + 7 < ow + kw/st + 8 ≤ ps (at
                // stride 1, ow + kw − 1 is the padded width); weights co·k + t < cout·k;
                // stores y[co][oy][x0..x0 + 8] with x0 + 8 ≤ ow.
                unsafe {
                    let (ba, bb) = (sp.add(st * oy * rs + xa), sp.add(st * oy * rs + xb));
                    // Four output channels × two vectors: two input loads and four
                    // broadcasts per eight FMAs.
                    for cb in (0..cout).step_by(4) {
                        let acc = window!(ba, bb, &taps, weights.as_ptr().add(cb * k));
                        for j in 0..4 {
                            let at = yp.add((cb + j) * n + oy * ow);
                            _mm256_storeu_ps(at.add(xa), fin(acc[0][j], bias[cb + j]));
                            _mm256_storeu_ps(at.add(xb), fin(acc[1][j], bias[cb + j]));
                        }
                    }
                }
            }
        }
    }

    /// The output rows in pairs, each pair max-pooled 2×2 in registers: per block of 4
    /// output channels and two vectors of 8 columns, the first row's activated values wait
    /// while the second row is computed, then the two rows' maximum, then the maximum of
    /// neighbouring columns (two shuffles and a permute), 4 pooled values per vector.
    /// Vectors start at even columns, the last one ending at column 2·⌊ow/2⌋.
    ///
    /// # Safety
    /// AVX2 and FMA; `sp` is the filled scratch and the slices are as `super::run` checks
    /// them.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, reason = "the kernel's state")]
    #[allow(
        clippy::needless_range_loop,
        reason = "j indexes accumulators, weight rows and biases together"
    )]
    unsafe fn pooled(
        c: &Conv2d,
        s: &Shape,
        taps: &[usize],
        weights: &[f32],
        bias: &[f32],
        fin: &impl Fn(__m256, f32) -> __m256,
        sp: *const f32,
        rs: usize,
        y: &mut [f32],
    ) {
        let (ph, pw) = (s.oh / 2, s.ow / 2);
        let (k, cout, st) = (taps.len(), c.out_channels, c.stride.h);
        let pn = ph * pw;
        let yp = y.as_mut_ptr();
        let starts: Vec<usize> = (0..(2 * pw).div_ceil(8))
            .map(|i| (8 * i).min(2 * pw - 8))
            .collect();
        // Neighbouring columns' maximum: lanes 0–3 of the result are the 4 pooled values.
        let halve = |v: __m256| {
            let even = _mm256_shuffle_ps(v, v, 0b10_00_10_00);
            let odd = _mm256_shuffle_ps(v, v, 0b11_01_11_01);
            let m = _mm256_castps_pd(_mm256_max_ps(even, odd));
            _mm256_castps256_ps128(_mm256_castpd_ps(_mm256_permute4x64_pd(m, 0b00_00_10_00)))
        };
        for py in 0..ph {
            for pair in starts.chunks(2) {
                let (xa, xb) = (pair[0], pair[pair.len() - 1]);
                // SAFETY: as in `conv`, for output rows 2·py and 2·py + 1 < oh; stores
                // y[co][py][x/2..x/2 + 4] with x ≤ 2·pw − 8.
                unsafe {
                    for cb in (0..cout).step_by(4) {
                        let wp = weights.as_ptr().add(cb * k);
                        let mut top = [[_mm256_setzero_ps(); 4]; 2];
                        for r in 0..2 {
                            let oy = 2 * py + r;
                            let (ba, bb) = (sp.add(st * oy * rs + xa), sp.add(st * oy * rs + xb));
                            let acc = window!(ba, bb, taps, wp);
                            for j in 0..4 {
                                let (va, vb) =
                                    (fin(acc[0][j], bias[cb + j]), fin(acc[1][j], bias[cb + j]));
                                if r == 0 {
                                    top[0][j] = va;
                                    top[1][j] = vb;
                                } else {
                                    let at = yp.add((cb + j) * pn + py * pw);
                                    _mm_storeu_ps(
                                        at.add(xa / 2),
                                        halve(_mm256_max_ps(top[0][j], va)),
                                    );
                                    _mm_storeu_ps(
                                        at.add(xb / 2),
                                        halve(_mm256_max_ps(top[1][j], vb)),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
