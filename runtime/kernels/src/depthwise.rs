//! Host depthwise 3×3 convolutions (stride 1×1 or 2×2, undilated, any padding) in AVX2+FMA,
//! chosen at run time where the CPU has them; every other depthwise shape, and every CPU
//! without AVX2+FMA, runs the Cranelift kernel (`jit/`), whose f32x4 code is limited to
//! 128-bit vectors (Cranelift 0.135 has no 256-bit types on x86-64).
//!
//! Per channel the plane is copied into a scratch plane whose padding (and an 8-float slack
//! after every row, so a row's last vector may read past its end) is zeroed once per call;
//! for stride 2 each row is split into its even and odd padded columns (two column phases,
//! one `vpermps` per 8 input columns) so every tap reads contiguous columns. Output rows
//! are 8-column ymm vectors (the last one overlapping the one before; rows under 8 wide
//! spill into the rows after them, stored later), two output rows per pass: at stride 1
//! the four input rows they share are loaded once for both (6 loads per 9 FMAs), at stride
//! 2 the middle one of five. Taps are summed in the reference's order (a product for the
//! first, then one FMA per tap), then bias, residual and activation (const generic
//! parameters) are applied in registers before the one store — bit for bit what the
//! generated kernel computes. Measurements: ARCHITECTURE.md, "Generated vs host code".
#![allow(
    unsafe_code,
    reason = "AVX2+FMA intrinsics on raw pointers into bounds-checked slices"
)]

use super::gemm::{Isa, isa};
use crate::act::Act;
use crate::jit::DepthwiseSpec;

/// Whether the host kernel computes `spec` on this machine.
pub fn applies(spec: &DepthwiseSpec) -> bool {
    shape_fits(spec) && isa() == Isa::Avx2Fma
}

/// Whether `spec` is a shape the host kernel has code for (on any CPU).
pub fn shape_fits(spec: &DepthwiseSpec) -> bool {
    spec.kh == 3
        && spec.kw == 3
        && spec.dh == 1
        && spec.dw == 1
        && ((spec.sh, spec.sw) == (1, 1) || (spec.sh, spec.sw) == (2, 2))
        && spec.is_compilable()
}

/// Floats per column phase of a scratch row: the padded width over the stride, plus the
/// slack a narrow row's vector reads.
fn phase_len(spec: &DepthwiseSpec) -> usize {
    (spec.w + spec.pad[1] + spec.pad[3]).div_ceil(spec.sw) + 8
}

/// Floats of scratch [`run`] needs: one padded plane, rows of `sw` phases.
pub fn scratch_len(spec: &DepthwiseSpec) -> usize {
    (spec.h + spec.pad[0] + spec.pad[2]) * spec.sw * phase_len(spec)
}

/// The previous layer's epilogue, applied to the input as it is copied into the scratch
/// plane: `act(x + bias[channel])` (the padding stays zero).
#[derive(Clone, Copy, Debug)]
pub struct Pre<'a> {
    pub bias: &'a [f32],
    pub act: Act,
}

/// Runs `spec` (which must satisfy [`applies`]) on `x` `[c, h, w]` whose channel planes
/// start `plane` floats apart (`h·w` when packed; more for rows of a larger map), first
/// transformed by `pre` if given, with weights `[c, 9]`, bias `[c]` and an optional
/// residual `[c, oh, ow]`, writing `[c, oh, ow]` to `y`; `scratch` (at least
/// [`scratch_len`] floats) is overwritten. Panics if a slice is short or the kernel does
/// not apply.
#[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
pub fn run(
    spec: &DepthwiseSpec,
    x: &[f32],
    plane: usize,
    pre: Option<Pre>,
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(
        applies(spec),
        "host depthwise kernel does not apply: {spec:?}"
    );
    let (c, out) = (spec.channels, spec.channels * spec.oh * spec.ow);
    let hw = spec.h * spec.w;
    assert!(plane >= hw && (c == 0 || x.len() >= (c - 1) * plane + hw));
    assert!(weights.len() >= c * 9);
    assert!(pre.is_none_or(|p| p.bias.len() >= c), "pre bias too short");
    assert!(bias.len() >= c && y.len() >= out && scratch.len() >= scratch_len(spec));
    assert_eq!(residual.is_some(), spec.residual);
    if let Some(r) = residual {
        assert!(r.len() >= out, "residual too short");
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` checked AVX2 and FMA; the slice lengths are checked above and the
    // kernel stays within them (see `avx2::channel`).
    unsafe {
        avx2::conv(spec, (x, plane), pre, weights, bias, residual, y, scratch);
    }
}

/// Whether [`run_nhwc`] computes `spec` on this machine: the shapes of [`applies`], whole
/// groups of 8 channels, no residual.
pub fn nhwc_applies(spec: &DepthwiseSpec) -> bool {
    applies(spec) && spec.channels.is_multiple_of(8) && !spec.residual
}

/// Weights `[c, 9]` as `[9, c]`: each tap's weights for eight channels side by side.
pub fn taps_by_channel(weights: &[f32], c: usize) -> Vec<f32> {
    (0..9 * c).map(|i| weights[(i % c) * 9 + i / c]).collect()
}

/// `spec` (which must satisfy [`nhwc_applies`]) on channel-interleaved tensors: `x` `[h,
/// w, c]`, weights `[9, c]` ([`taps_by_channel`]), bias `[c]`, writing `y` `[oh, ow, c]`.
/// Each output is eight channels of one pixel, nine loads and FMAs (no padded copy, no
/// deinterleaving at stride 2), the taps summed in the same order as [`run`], whose bits
/// it gives. Panics if a slice is short or the kernel does not apply.
pub fn run_nhwc(spec: &DepthwiseSpec, x: &[f32], weights: &[f32], bias: &[f32], y: &mut [f32]) {
    run_nhwc_lanes(nhwc_lanes(spec), spec, x, weights, bias, y);
}

/// Channels per vector [`run_nhwc`] takes for `spec` on this machine: 16 (AVX-512F) where
/// the CPU has it and the channels come in groups of 16, else 8 (AVX2+FMA).
pub fn nhwc_lanes(spec: &DepthwiseSpec) -> usize {
    #[cfg(target_arch = "x86_64")]
    let wide = avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    if wide && spec.channels.is_multiple_of(16) {
        16
    } else {
        8
    }
}

/// [`run_nhwc`] with `lanes` channels per vector: 8, or 16 where [`nhwc_lanes`] gives 16
/// (both give the same bits). Panics otherwise, or if a slice is short.
pub fn run_nhwc_lanes(
    lanes: usize,
    spec: &DepthwiseSpec,
    x: &[f32],
    weights: &[f32],
    bias: &[f32],
    y: &mut [f32],
) {
    assert!(
        nhwc_applies(spec),
        "channel-interleaved kernel does not apply: {spec:?}"
    );
    assert!(
        lanes == 8 || lanes == nhwc_lanes(spec),
        "no {lanes}-lane kernel here"
    );
    let c = spec.channels;
    assert!(x.len() >= spec.h * spec.w * c && weights.len() >= 9 * c && bias.len() >= c);
    assert!(y.len() >= spec.oh * spec.ow * c, "output too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `nhwc_applies` checked AVX2 and FMA, `nhwc_lanes` AVX-512F for 16 lanes and
    // channels in groups of 16; the lengths are checked above and the kernels read and
    // write within them (see `avx2::nhwc`).
    unsafe {
        if lanes == 16 {
            avx512::nhwc_conv(spec, x, weights, bias, y);
        } else {
            avx2::nhwc_conv(spec, x, weights, bias, y);
        }
    }
}

/// `act(v + bias (+ residual))` of one value: the epilogues' operations, in their order.
#[inline(always)]
fn epilogue(v: f32, bias: f32, residual: Option<f32>, act: Act) -> f32 {
    act.apply(match residual {
        Some(r) => v + bias + r,
        None => v + bias,
    })
}

/// `row = act(row + bias (+ residual))` (what the generated epilogue computes, bit for bit),
/// on AVX2 where the CPU has it. Panics if `residual` is shorter than `row`.
pub fn bias_act(row: &mut [f32], bias: f32, residual: Option<&[f32]>, act: Act) {
    if let Some(r) = residual {
        assert!(r.len() >= row.len(), "residual too short");
    }
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2Fma {
        let (p, len) = (row.as_mut_ptr(), row.len());
        let rp = residual.map_or(std::ptr::null(), <[f32]>::as_ptr);
        // SAFETY: AVX2 checked; `p` and `rp` hold `len` floats (checked above).
        unsafe { avx2::bias_act(p, p, len, bias, rp, act) };
        return;
    }
    match residual {
        Some(r) => row
            .iter_mut()
            .zip(r)
            .for_each(|(v, x)| *v = epilogue(*v, bias, Some(*x), act)),
        None => row
            .iter_mut()
            .for_each(|v| *v = epilogue(*v, bias, None, act)),
    }
}

/// `y[co·ldy + p] = act(t[p·cout + co] + bias[co] (+ residual[co·ldy + p]))` for `p <
/// pixels`, `co < cout`: a `[pixel, channel]` band written into channel planes (rows `ldy`
/// apart) with the epilogue — by 8×8 transposes in AVX2 registers where the CPU has them.
/// Panics if a slice is short.
#[allow(
    clippy::too_many_arguments,
    reason = "the band, its planes and the epilogue"
)]
pub fn planes_bias_act(
    t: &[f32],
    (pixels, cout): (usize, usize),
    y: &mut [f32],
    ldy: usize,
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Act,
) {
    if pixels == 0 || cout == 0 {
        return;
    }
    assert!(t.len() >= pixels * cout && bias.len() >= cout && ldy >= pixels);
    let need = (cout - 1) * ldy + pixels;
    assert!(y.len() >= need && residual.is_none_or(|r| r.len() >= need));
    let vector = cfg!(target_arch = "x86_64") && isa() == Isa::Avx2Fma;
    let (p8, c8) = if vector {
        (pixels / 8 * 8, cout / 8 * 8)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    if p8 > 0 && c8 > 0 {
        // SAFETY: AVX2 checked; the blocks read pixels < p8 ≤ pixels and channels < c8 ≤
        // cout of `t`, and write (and read the residual at) planes < c8, columns < p8.
        unsafe { avx2::to_planes(t, (p8, c8, cout), y, ldy, bias, residual, act) };
    }
    // What the 8×8 blocks left: the last columns of their planes, then the last planes.
    for co in 0..cout {
        let from = if co < c8 { p8 } else { 0 };
        for p in from..pixels {
            let r = residual.map(|r| r[co * ldy + p]);
            y[co * ldy + p] = epilogue(t[p * cout + co], bias[co], r, act);
        }
    }
}

/// Splits one input row into the two column phases of a stride-2 scratch row (`row`: two
/// phases of `ps` floats): padded column `pl + c` goes to phase `(pl + c) % 2`, index
/// `(pl + c) / 2`. Also used by the direct kernel at stride 2 (`direct.rs`). Panics unless
/// the CPU has AVX2+FMA and the row holds every column.
#[cfg(target_arch = "x86_64")]
pub(crate) fn deinterleave(src: &[f32], row: &mut [f32], pl: usize, ps: usize) {
    assert!(isa() == Isa::Avx2Fma, "deinterleave needs AVX2");
    assert!(row.len() >= 2 * ps && (pl + src.len()).div_ceil(2) <= ps);
    // SAFETY: AVX2 and the row's size are checked above.
    unsafe {
        avx2::deinterleave(src, row, pl, ps, |v| v, |v| v);
    }
}

/// The channel-interleaved depthwise kernel for one vector width: `$lanes` channels of a
/// pixel per `$v` (AVX2: 8, AVX-512: 16), with that width's `Epi` and `store` in scope.
#[cfg(target_arch = "x86_64")]
macro_rules! nhwc_kernel {
    ($name:ident, $features:literal, $v:ty, $lanes:literal, $load:ident, $zero:ident, $mul:ident, $fma:ident, $set1:ident) => {
        /// [`super::run_nhwc_lanes`] with `$lanes` lanes: dispatches on the activation once.
        ///
        /// # Safety
        /// The target features; channels in groups of `$lanes`; the slices as
        /// `super::run_nhwc_lanes` checks them.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn nhwc_conv(
            s: &DepthwiseSpec,
            x: &[f32],
            weights: &[f32],
            bias: &[f32],
            y: &mut [f32],
        ) {
            // SAFETY: the caller's guarantee.
            unsafe {
                match s.act {
                    Act::None => $name::<NONE>(s, x, weights, bias, y, 0.0, 0.0),
                    Act::Relu => $name::<RELU>(s, x, weights, bias, y, 0.0, 0.0),
                    Act::Clip { min, max } => $name::<CLIP>(s, x, weights, bias, y, min, max),
                    Act::Leaky { slope } => $name::<LEAKY>(s, x, weights, bias, y, slope, 0.0),
                }
            }
        }

        /// For each output row, each group of `$lanes` channels (its nine weight vectors and bias
        /// in registers; the row's three input rows stay in L1 across the groups), every
        /// output pixel: inner pixels (all nine taps inside the map) two at a time from fixed
        /// offsets, border pixels with zero vectors for the taps in the padding.
        ///
        /// # Safety
        /// As [`nhwc_conv`].
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
        unsafe fn $name<const ACT: u8>(
            s: &DepthwiseSpec,
            x: &[f32],
            weights: &[f32],
            bias: &[f32],
            y: &mut [f32],
            lo: f32,
            hi: f32,
        ) {
            let (h, w, c, oh, ow) = (s.h as isize, s.w as isize, s.channels, s.oh, s.ow as isize);
            let (sh, sw) = (s.sh as isize, s.sw as isize);
            let (pt, pl) = (s.pad[0] as isize, s.pad[1] as isize);
            // Output columns whose three tap columns lie inside the map: ox·sw − pl ≥ 0 and
            // ox·sw − pl + 2 < w, i.e. ox in first..last.
            let first = (pl + sw - 1) / sw;
            let last = if w + pl >= 3 {
                ((w + pl - 3) / sw + 1).min(ow)
            } else {
                0
            }
            .max(first);
            let (xp, yp, ci) = (x.as_ptr(), y.as_mut_ptr(), c as isize);
            // Tap t's offset from a window's first input pixel, in floats.
            let offs: [isize; 9] =
                std::array::from_fn(|t| ((t as isize / 3) * w + t as isize % 3) * ci);
            for oy in 0..oh as isize {
                let iy0 = oy * sh - pt;
                let rows_in = iy0 >= 0 && iy0 + 2 < h;
                for c0 in (0..c).step_by($lanes) {
                    // SAFETY (whole body): weights hold 9·c floats and bias c (checked by the
                    // caller), c0 + $lanes ≤ c; input pixels read are inside the map (checked per
                    // tap, or by `rows_in` and first..last), each `$lanes` floats at c0 within the
                    // pixel's c; outputs are pixels of the oh × ow map.
                    unsafe {
                        let wv: [$v; 9] =
                            std::array::from_fn(|t| $load(weights.as_ptr().add(t * c + c0)));
                        let e = Epi {
                            bias: $load(bias.as_ptr().add(c0)),
                            lo: $set1(lo),
                            hi: $set1(hi),
                        };
                        let at = |iy: isize, ix: isize| xp.offset((iy * w + ix) * ci + c0 as isize);
                        let out = |ox: isize| yp.offset((oy * ow + ox) * ci + c0 as isize);
                        // One output pixel with every tap checked.
                        let border = |ox: isize| {
                            let ix0 = ox * sw - pl;
                            let tap = |t: usize| {
                                let (iy, ix) = (iy0 + t as isize / 3, ix0 + t as isize % 3);
                                if (0..h).contains(&iy) && (0..w).contains(&ix) {
                                    $load(at(iy, ix))
                                } else {
                                    $zero()
                                }
                            };
                            let mut acc = $mul(tap(0), wv[0]);
                            for (t, wt) in wv.iter().enumerate().skip(1) {
                                acc = $fma(tap(t), *wt, acc);
                            }
                            store::<ACT, false>(&e, acc, std::ptr::null(), out(ox));
                        };
                        if !rows_in {
                            (0..ow).for_each(border);
                            continue;
                        }
                        (0..first).for_each(border);
                        let mut ox = first;
                        // Two pixels at a time: two independent chains of nine FMAs.
                        while ox + 2 <= last {
                            let p = at(iy0, ox * sw - pl);
                            let q = p.offset(sw * ci);
                            let mut a0 = $mul($load(p), wv[0]);
                            let mut a1 = $mul($load(q), wv[0]);
                            for t in 1..9 {
                                a0 = $fma($load(p.offset(offs[t])), wv[t], a0);
                                a1 = $fma($load(q.offset(offs[t])), wv[t], a1);
                            }
                            store::<ACT, false>(&e, a0, std::ptr::null(), out(ox));
                            store::<ACT, false>(&e, a1, std::ptr::null(), out(ox + 1));
                            ox += 2;
                        }
                        (ox..ow).for_each(border);
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Act, DepthwiseSpec, Pre, phase_len, scratch_len};

    /// Activation codes (const generic parameters).
    const NONE: u8 = 0;
    const RELU: u8 = 1;
    const CLIP: u8 = 2;
    const LEAKY: u8 = 3;

    /// The epilogue's constants as vectors: bias, and the activation's bound(s) or slope.
    #[derive(Clone, Copy)]
    struct Epi {
        bias: __m256,
        lo: __m256,
        hi: __m256,
    }

    /// `act(acc + bias (+ residual))`, all eight lanes stored to `dst`.
    ///
    /// # Safety
    /// AVX2 and FMA; `dst` (and `res` when `RES`) hold 8 floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store<const ACT: u8, const RES: bool>(
        e: &Epi,
        acc: __m256,
        res: *const f32,
        dst: *mut f32,
    ) {
        // SAFETY: the caller's guarantee.
        unsafe {
            let mut v = _mm256_add_ps(acc, e.bias);
            if RES {
                v = _mm256_add_ps(v, _mm256_loadu_ps(res));
            }
            // max/min return the second operand when either is NaN: a NaN value becomes
            // the bound, as with `Act::apply`'s f32::max / f32::min.
            v = match ACT {
                RELU => _mm256_max_ps(v, e.lo),
                CLIP => _mm256_min_ps(_mm256_max_ps(v, e.lo), e.hi),
                LEAKY => {
                    let pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
                    _mm256_blendv_ps(_mm256_mul_ps(v, e.lo), v, pos)
                }
                _ => v,
            };
            _mm256_storeu_ps(dst, v);
        }
    }

    /// The epilogue's constants for `bias` and `act`'s bound(s) or slope.
    #[target_feature(enable = "avx2,fma")]
    fn epi(bias: f32, act: Act) -> Epi {
        let (lo, hi) = act.bounds();
        Epi {
            bias: _mm256_set1_ps(bias),
            lo: _mm256_set1_ps(lo),
            hi: _mm256_set1_ps(hi),
        }
    }

    /// `act(v)` with `e`'s bound(s) or slope, as [`store`] applies it.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn activate(v: __m256, e: &Epi, act: Act) -> __m256 {
        match act {
            Act::None => v,
            Act::Relu => _mm256_max_ps(v, e.lo),
            Act::Clip { .. } => _mm256_min_ps(_mm256_max_ps(v, e.lo), e.hi),
            Act::Leaky { .. } => {
                let pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
                _mm256_blendv_ps(_mm256_mul_ps(v, e.lo), v, pos)
            }
        }
    }

    /// `dst[i] = act(src[i] + bias (+ res[i]))` for `i < len`, eight at a time, then the
    /// rest: one vector ending at `len` (overlapping the one before) when `src` is not
    /// `dst` and `len ≥ 8`, else one at a time; `src` may equal `dst`, else they must not
    /// overlap.
    ///
    /// # Safety
    /// AVX2; `src`, `dst` (and `res` unless null) hold `len` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_act(
        src: *const f32,
        dst: *mut f32,
        len: usize,
        bias: f32,
        res: *const f32,
        act: Act,
    ) {
        // SAFETY: the caller's guarantee.
        unsafe {
            match (act, res.is_null()) {
                (Act::None, true) => row::<NONE, false>(src, dst, len, bias, res, act),
                (Act::None, false) => row::<NONE, true>(src, dst, len, bias, res, act),
                (Act::Relu, true) => row::<RELU, false>(src, dst, len, bias, res, act),
                (Act::Relu, false) => row::<RELU, true>(src, dst, len, bias, res, act),
                (Act::Clip { .. }, true) => row::<CLIP, false>(src, dst, len, bias, res, act),
                (Act::Clip { .. }, false) => row::<CLIP, true>(src, dst, len, bias, res, act),
                (Act::Leaky { .. }, true) => row::<LEAKY, false>(src, dst, len, bias, res, act),
                (Act::Leaky { .. }, false) => row::<LEAKY, true>(src, dst, len, bias, res, act),
            }
        }
    }

    /// [`bias_act`] for one activation and residual.
    ///
    /// # Safety
    /// As [`bias_act`]; `RES` iff `res` is not null.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn row<const ACT: u8, const RES: bool>(
        src: *const f32,
        dst: *mut f32,
        len: usize,
        bias: f32,
        res: *const f32,
        act: Act,
    ) {
        let e = epi(bias, act);
        let full = len / 8 * 8;
        let vector = |i: usize| {
            // SAFETY: called for i + 8 ≤ len (the caller's guarantee covers it).
            unsafe {
                let v = _mm256_loadu_ps(src.add(i));
                store::<ACT, RES>(&e, v, res.wrapping_add(i), dst.add(i));
            }
        };
        for i in (0..full).step_by(8) {
            vector(i);
        }
        // Out of place, recomputing a value stores the same bits again.
        if full < len && len >= 8 && !std::ptr::eq(src, dst) {
            vector(len - 8);
            return;
        }
        // SAFETY: the caller's guarantee; i < len.
        unsafe {
            for i in full..len {
                let r = RES.then(|| *res.add(i));
                *dst.add(i) = super::epilogue(*src.add(i), bias, r, act);
            }
        }
    }

    /// The output vector at `o` floats into the plane, in a row `ow` wide: rows of at least
    /// 8 end on a vector overlapping the one before it (nothing is written past the row); a
    /// narrower row's one vector spills into the rows (and planes) after it, which are
    /// stored later, unless fewer than 8 floats are left before the end (`room` floats
    /// from `yp`, and from `rp` when `RES`): then only the row's own, through a stack copy
    /// (masked loads and stores are microcoded on AMD Zen).
    ///
    /// # Safety
    /// AVX2 and FMA; the vector lies in its row (`o + 8 ≤` the row's end, or `ow < 8` and
    /// `o` is the row's start); `o + ow ≤ room`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn put<const ACT: u8, const RES: bool>(
        e: &Epi,
        acc: __m256,
        rp: *const f32,
        yp: *mut f32,
        o: usize,
        ow: usize,
        room: usize,
    ) {
        // SAFETY: the caller's guarantee; the stack copies hold 8 floats.
        unsafe {
            if o + 8 <= room {
                store::<ACT, RES>(e, acc, rp.wrapping_add(o), yp.add(o));
            } else {
                let mut r = [0.0f32; 8];
                let mut out = [0.0f32; 8];
                if RES {
                    std::ptr::copy_nonoverlapping(rp.add(o), r.as_mut_ptr(), ow);
                }
                store::<ACT, RES>(e, acc, r.as_ptr(), out.as_mut_ptr());
                std::ptr::copy_nonoverlapping(out.as_ptr(), yp.add(o), ow);
            }
        }
    }

    /// The vector starts of a row `ow` wide: every 8 columns, the last one moved back to
    /// end at `ow` (overlapping the one before) when `ow ≥ 8`; `[0]` when `ow < 8`.
    fn starts(ow: usize) -> impl Iterator<Item = usize> {
        let n = ow.div_ceil(8);
        (0..n).map(move |i| if ow >= 8 { (8 * i).min(ow - 8) } else { 0 })
    }

    /// The whole convolution: dispatches on the activation and residual once.
    ///
    /// # Safety
    /// AVX2 and FMA; the slices as `super::run` checks them.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    pub(super) unsafe fn conv(
        s: &DepthwiseSpec,
        x: (&[f32], usize),
        pre: Option<Pre>,
        weights: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let act = match s.act {
            Act::None => NONE,
            Act::Relu => RELU,
            Act::Clip { .. } => CLIP,
            Act::Leaky { .. } => LEAKY,
        };
        let (lo, hi) = s.act.bounds();
        let a = (s, x, pre, weights, bias, residual, y, scratch, lo, hi);
        // SAFETY: the caller's guarantee.
        unsafe {
            match (act, residual.is_some()) {
                (NONE, false) => planes::<NONE, false>(a),
                (NONE, true) => planes::<NONE, true>(a),
                (RELU, false) => planes::<RELU, false>(a),
                (RELU, true) => planes::<RELU, true>(a),
                (CLIP, false) => planes::<CLIP, false>(a),
                (CLIP, true) => planes::<CLIP, true>(a),
                (LEAKY, false) => planes::<LEAKY, false>(a),
                (_, _) => planes::<LEAKY, true>(a),
            }
        }
    }

    type Args<'a> = (
        &'a DepthwiseSpec,
        (&'a [f32], usize),
        Option<Pre<'a>>,
        &'a [f32],
        &'a [f32],
        Option<&'a [f32]>,
        &'a mut [f32],
        &'a mut [f32],
        f32,
        f32,
    );

    /// Every channel: the plane copied into the scratch plane, then its output rows.
    /// (A ring of four scratch rows filled just before the output rows that read them was
    /// slower: the loads of a row just stored miss store-to-load forwarding.)
    ///
    /// # Safety
    /// AVX2 and FMA; the slices as `super::run` checks them (`RES` iff a residual).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn planes<const ACT: u8, const RES: bool>(a: Args) {
        let (s, (x, xp), pre, weights, bias, residual, y, scratch, lo, hi) = a;
        let (h, w, oh, ow, sw) = (s.h, s.w, s.oh, s.ow, s.sw);
        let [pt, pl, _, _] = s.pad;
        let ps = phase_len(s);
        let rows = h + s.pad[0] + s.pad[2];
        // Floats per scratch row: `sw` phases.
        let rs = sw * ps;
        let scratch = &mut scratch[..scratch_len(s)];
        // The padding and the slack stay zero: each channel overwrites only the interior.
        scratch.fill(0.0);
        let end = residual.map_or(y.len(), |r| r.len().min(y.len()));
        let n = oh * ow;
        // With `pre` at stride 1: the plane after it, made in one pass over the whole plane
        // (one short tail per plane, not one per row: rows 7 or 14 wide were mostly tail).
        // At stride 2 the deinterleaving copy applies it on the way.
        let mut staged = vec![0.0f32; if pre.is_some() && sw == 1 { h * w } else { 0 }];
        for ch in 0..s.channels {
            let mut plane = &x[ch * xp..ch * xp + h * w];
            if let Some(p) = pre.filter(|_| sw == 1) {
                // SAFETY: AVX2 (caller); `plane` and `staged` hold h·w floats.
                unsafe {
                    let (src, dst) = (plane.as_ptr(), staged.as_mut_ptr());
                    bias_act(src, dst, h * w, p.bias[ch], std::ptr::null(), p.act);
                }
                plane = &staged;
            }
            // The stride-2 copy's `pre`: its vectors, and the scalar epilogue.
            let (pe, pb, pa) = match pre {
                Some(p) => (Some(epi(p.bias[ch], p.act)), p.bias[ch], p.act),
                None => (None, 0.0, Act::None),
            };
            for (r, src) in plane.chunks_exact(w.max(1)).take(h).enumerate() {
                let row = &mut scratch[(pt + r) * rs..][..rs];
                if sw == 1 {
                    row[pl..pl + w].copy_from_slice(src);
                } else if let Some(e) = pe {
                    let f = |v: __m256| activate(_mm256_add_ps(v, e.bias), &e, pa);
                    let g = |v: f32| super::epilogue(v, pb, None, pa);
                    // SAFETY: AVX2 (caller); `row` holds two phases of `ps` floats and
                    // (pl + w).div_ceil(2) < ps.
                    unsafe { deinterleave(src, row, pl, ps, f, g) };
                } else {
                    // SAFETY: as above.
                    unsafe { deinterleave(src, row, pl, ps, |v| v, |v| v) };
                }
            }
            let wv: [__m256; 9] = std::array::from_fn(|t| _mm256_set1_ps(weights[9 * ch + t]));
            let e = Epi {
                bias: _mm256_set1_ps(bias[ch]),
                lo: _mm256_set1_ps(lo),
                hi: _mm256_set1_ps(hi),
            };
            // The plane's output, residual and the room left in them (see `put`).
            let yp = y[ch * n..].as_mut_ptr();
            let rp = residual.map_or(std::ptr::null(), |r| r[ch * n..].as_ptr());
            let room = end - ch * n;
            let row = |r: usize| scratch[r * rs..].as_ptr();
            // SAFETY (the row calls): AVX2 and FMA (caller); every scratch row pointer has `rs`
            // floats, of which a vector at column x0 ≤ max(ow, 8) − 8 reads at most up to
            // x0 + 9 < max(ow, 8) + 2 ≤ ps (stride 1) or phase index x0 + 8 < ps (stride
            // 2), so within the row's slack; outputs at o = oy·ow (+ ow) are within the
            // plane, stored as `put` requires, rows in increasing order.
            let mut oy = 0;
            while oy < oh {
                if oy + 1 < oh {
                    // Stride 1 reads rows up to oy + 3, stride 2 up to 2·oy + 4.
                    let r: [_; 5] = std::array::from_fn(|k| row((oy * sw + k).min(rows - 1)));
                    if sw == 1 {
                        unsafe { pair::<ACT, RES, 1>(r, ps, &wv, &e, rp, yp, oy * ow, ow, room) };
                    } else {
                        unsafe { pair::<ACT, RES, 2>(r, ps, &wv, &e, rp, yp, oy * ow, ow, room) };
                    }
                    oy += 2;
                } else {
                    let r = [row(oy * sw), row(oy * sw + 1), row(oy * sw + 2)];
                    if sw == 1 {
                        unsafe { single::<ACT, RES, 1>(r, ps, &wv, &e, rp, yp, oy * ow, ow, room) };
                    } else {
                        unsafe { single::<ACT, RES, 2>(r, ps, &wv, &e, rp, yp, oy * ow, ow, room) };
                    }
                    oy += 1;
                }
            }
        }
    }

    /// [`super::planes_bias_act`]'s 8×8 blocks: pixels `..p8` and channels `..c8` of a
    /// band `cout` channels wide.
    ///
    /// # Safety
    /// AVX2; the slices as `super::planes_bias_act` checks them, `p8` and `c8` multiples
    /// of 8 within them.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn to_planes(
        t: &[f32],
        (p8, c8, cout): (usize, usize, usize),
        y: &mut [f32],
        ldy: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
        act: Act,
    ) {
        let a = (t, (p8, c8, cout), y, ldy, bias, residual, act);
        // SAFETY: the caller's guarantee.
        unsafe {
            match (act, residual.is_some()) {
                (Act::None, false) => to_planes_k::<NONE, false>(a),
                (Act::None, true) => to_planes_k::<NONE, true>(a),
                (Act::Relu, false) => to_planes_k::<RELU, false>(a),
                (Act::Relu, true) => to_planes_k::<RELU, true>(a),
                (Act::Clip { .. }, false) => to_planes_k::<CLIP, false>(a),
                (Act::Clip { .. }, true) => to_planes_k::<CLIP, true>(a),
                (Act::Leaky { .. }, false) => to_planes_k::<LEAKY, false>(a),
                (Act::Leaky { .. }, true) => to_planes_k::<LEAKY, true>(a),
            }
        }
    }

    type PlanesArgs<'a> = (
        &'a [f32],
        (usize, usize, usize),
        &'a mut [f32],
        usize,
        &'a [f32],
        Option<&'a [f32]>,
        Act,
    );

    /// [`to_planes`] for one activation and residual.
    ///
    /// # Safety
    /// As [`to_planes`]; `RES` iff a residual.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn to_planes_k<const ACT: u8, const RES: bool>(a: PlanesArgs) {
        let (t, (p8, c8, cout), y, ldy, bias, residual, act) = a;
        let (tp, yp) = (t.as_ptr(), y.as_mut_ptr());
        let rp = residual.map_or(std::ptr::null(), <[f32]>::as_ptr);
        // SAFETY (whole loop): reads t[p·cout + co] and writes y[co·ldy + p] (and reads
        // the residual there) for p < p8, co < c8 only (the caller's guarantee).
        unsafe {
            for c0 in (0..c8).step_by(8) {
                let epis: [Epi; 8] = std::array::from_fn(|j| epi(bias[c0 + j], act));
                for p0 in (0..p8).step_by(8) {
                    let rows: [__m256; 8] =
                        std::array::from_fn(|i| _mm256_loadu_ps(tp.add((p0 + i) * cout + c0)));
                    for (j, v) in transpose8(rows).into_iter().enumerate() {
                        let at = (c0 + j) * ldy + p0;
                        store::<ACT, RES>(&epis[j], v, rp.wrapping_add(at), yp.add(at));
                    }
                }
            }
        }
    }

    /// The 8×8 transpose: lane `j` of row `i` becomes lane `i` of row `j`.
    #[target_feature(enable = "avx2,fma")]
    fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // Pairs of rows interleaved, then groups of four, then the 128-bit halves.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    nhwc_kernel!(
        nhwc,
        "avx2,fma",
        __m256,
        8,
        _mm256_loadu_ps,
        _mm256_setzero_ps,
        _mm256_mul_ps,
        _mm256_fmadd_ps,
        _mm256_set1_ps
    );

    /// One input row into its two column phases, through `f` (eight values at a time) or
    /// `g` (one at a time, rows under 8 wide), which must compute the same function:
    /// padded column `pl + c` goes to phase `(pl + c) % 2`, index `(pl + c) / 2`. Eight
    /// columns at a time (the last eight overlapping the ones before when `w` is not a
    /// multiple of 8), one `vpermps` each.
    ///
    /// # Safety
    /// AVX2; `row` holds `2·ps` floats and `(pl + src.len()).div_ceil(2) ≤ ps`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn deinterleave(
        src: &[f32],
        row: &mut [f32],
        pl: usize,
        ps: usize,
        f: impl Fn(__m256) -> __m256,
        g: impl Fn(f32) -> f32,
    ) {
        let w = src.len();
        let at = |c: usize| ((pl + c) % 2) * ps + (pl + c) / 2;
        if w < 8 {
            for (c, &v) in src.iter().enumerate() {
                row[at(c)] = g(v);
            }
            return;
        }
        // SAFETY: loads read src[c0..c0 + 8] with c0 ≤ w − 8; each store writes 4 floats
        // of one phase from index (pl + c0 + q)/2 to (pl + c0 + q)/2 + 3 = (pl + c0 + q +
        // 6)/2 < (pl + w).div_ceil(2) ≤ ps.
        unsafe {
            let (s, d) = (src.as_ptr(), row.as_mut_ptr());
            let idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            for c0 in starts(w) {
                let v = _mm256_permutevar8x32_ps(f(_mm256_loadu_ps(s.add(c0))), idx);
                _mm_storeu_ps(d.add(at(c0)), _mm256_castps256_ps128(v));
                _mm_storeu_ps(d.add(at(c0 + 1)), _mm256_extractf128_ps(v, 1));
            }
        }
    }

    /// Three taps of one input row (`a`, `b`, `c`: the vectors for tap columns 0, 1, 2)
    /// into `acc`; the first row of a window starts from the product.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn taps3(
        a: __m256,
        b: __m256,
        c: __m256,
        w: (__m256, __m256, __m256),
        acc: Option<__m256>,
    ) -> __m256 {
        let acc = match acc {
            None => _mm256_mul_ps(a, w.0),
            Some(acc) => _mm256_fmadd_ps(a, w.0, acc),
        };
        _mm256_fmadd_ps(c, w.2, _mm256_fmadd_ps(b, w.1, acc))
    }

    /// Output rows o/ow and o/ow + 1: stride 1 from padded rows `r[0..4]` (the middle two
    /// loaded once for both), stride 2 from `r[0..5]` (the middle one loaded once); tap
    /// columns as in [`single`].
    ///
    /// # Safety
    /// AVX2 and FMA; see the call in `planes`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    unsafe fn pair<const ACT: u8, const RES: bool, const S: usize>(
        r: [*const f32; 5],
        ps: usize,
        wv: &[__m256; 9],
        e: &Epi,
        rp: *const f32,
        yp: *mut f32,
        o: usize,
        ow: usize,
        room: usize,
    ) {
        let [w0, w1, w2, w3, w4, w5, w6, w7, w8] = *wv;
        let (k0, k1, k2) = ((w0, w1, w2), (w3, w4, w5), (w6, w7, w8));
        let e = *e;
        let (ob, oc) = if S == 1 { (1, 2) } else { (ps, 1) };
        // SAFETY: the caller's guarantee.
        unsafe {
            let ld = |p: *const f32, x0: usize| {
                (
                    _mm256_loadu_ps(p.add(x0)),
                    _mm256_loadu_ps(p.add(x0 + ob)),
                    _mm256_loadu_ps(p.add(x0 + oc)),
                )
            };
            for x0 in starts(ow) {
                let (a, b, c) = ld(r[0], x0);
                let s0 = taps3(a, b, c, k0, None);
                let (a, b, c) = ld(r[1], x0);
                let s0 = taps3(a, b, c, k1, Some(s0));
                let (s0, s1) = if S == 1 {
                    let s1 = taps3(a, b, c, k0, None);
                    let (a, b, c) = ld(r[2], x0);
                    let s0 = taps3(a, b, c, k2, Some(s0));
                    let s1 = taps3(a, b, c, k1, Some(s1));
                    let (a, b, c) = ld(r[3], x0);
                    (s0, taps3(a, b, c, k2, Some(s1)))
                } else {
                    let (a, b, c) = ld(r[2], x0);
                    let s0 = taps3(a, b, c, k2, Some(s0));
                    let s1 = taps3(a, b, c, k0, None);
                    let (a, b, c) = ld(r[3], x0);
                    let s1 = taps3(a, b, c, k1, Some(s1));
                    let (a, b, c) = ld(r[4], x0);
                    (s0, taps3(a, b, c, k2, Some(s1)))
                };
                put::<ACT, RES>(&e, s0, rp, yp, o + x0, ow, room);
                put::<ACT, RES>(&e, s1, rp, yp, o + ow + x0, ow, room);
            }
        }
    }

    /// One output row (at o floats into the plane) from padded rows `r[0..3]`: stride 1
    /// (tap columns at +0, +1, +2) or 2 (phase 0 at +0, phase 1 at +0, phase 0 at +1;
    /// phases `ps` floats apart).
    ///
    /// # Safety
    /// AVX2 and FMA; see the call in `planes`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    unsafe fn single<const ACT: u8, const RES: bool, const S: usize>(
        r: [*const f32; 3],
        ps: usize,
        wv: &[__m256; 9],
        e: &Epi,
        rp: *const f32,
        yp: *mut f32,
        o: usize,
        ow: usize,
        room: usize,
    ) {
        let [w0, w1, w2, w3, w4, w5, w6, w7, w8] = *wv;
        let (k0, k1, k2) = ((w0, w1, w2), (w3, w4, w5), (w6, w7, w8));
        let e = *e;
        let (ob, oc) = if S == 1 { (1, 2) } else { (ps, 1) };
        // SAFETY: the caller's guarantee.
        unsafe {
            let ld = |p: *const f32, x0: usize| {
                (
                    _mm256_loadu_ps(p.add(x0)),
                    _mm256_loadu_ps(p.add(x0 + ob)),
                    _mm256_loadu_ps(p.add(x0 + oc)),
                )
            };
            for x0 in starts(ow) {
                let (a, b, c) = ld(r[0], x0);
                let acc = taps3(a, b, c, k0, None);
                let (a, b, c) = ld(r[1], x0);
                let acc = taps3(a, b, c, k1, Some(acc));
                let (a, b, c) = ld(r[2], x0);
                let acc = taps3(a, b, c, k2, Some(acc));
                put::<ACT, RES>(&e, acc, rp, yp, o + x0, ow, room);
            }
        }
    }
}

/// The channel-interleaved kernel with 16 channels per vector, for CPUs with AVX-512F:
/// twice the work per chain of nine FMAs, which bounds the 8-lane kernel (measured:
/// `depthwise_bench`).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Act, DepthwiseSpec};

    /// Activation codes (const generic parameters), as in `avx2`.
    const NONE: u8 = 0;
    const RELU: u8 = 1;
    const CLIP: u8 = 2;
    const LEAKY: u8 = 3;

    /// Whether this CPU has AVX-512F.
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
    }

    /// The epilogue's constants as vectors: bias, and the activation's bound(s) or slope.
    #[derive(Clone, Copy)]
    struct Epi {
        bias: __m512,
        lo: __m512,
        hi: __m512,
    }

    /// `act(acc + bias (+ residual))`, all sixteen lanes stored to `dst`, as the AVX2
    /// kernel's `store` (NaN handling included).
    ///
    /// # Safety
    /// AVX-512F; `dst` (and `res` when `RES`) hold 16 floats.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store<const ACT: u8, const RES: bool>(
        e: &Epi,
        acc: __m512,
        res: *const f32,
        dst: *mut f32,
    ) {
        // SAFETY: the caller's guarantee.
        unsafe {
            let mut v = _mm512_add_ps(acc, e.bias);
            if RES {
                v = _mm512_add_ps(v, _mm512_loadu_ps(res));
            }
            v = match ACT {
                RELU => _mm512_max_ps(v, e.lo),
                CLIP => _mm512_min_ps(_mm512_max_ps(v, e.lo), e.hi),
                LEAKY => {
                    let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps());
                    _mm512_mask_blend_ps(pos, _mm512_mul_ps(v, e.lo), v)
                }
                _ => v,
            };
            _mm512_storeu_ps(dst, v);
        }
    }

    nhwc_kernel!(
        nhwc,
        "avx512f",
        __m512,
        16,
        _mm512_loadu_ps,
        _mm512_setzero_ps,
        _mm512_mul_ps,
        _mm512_fmadd_ps,
        _mm512_set1_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector epilogue gives the scalar one's bits for every length (vector bodies and
    /// scalar tails), activation and residual, NaN inputs included.
    #[test]
    fn bias_act_equals_the_scalar_epilogue() {
        let acts = [
            Act::None,
            Act::Relu,
            Act::Clip { min: 0.0, max: 6.0 },
            Act::Leaky { slope: 0.1 },
        ];
        for len in 0..40 {
            let x: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 7 == 3 {
                        f32::NAN
                    } else {
                        (i as f32 - 17.0) * 0.77
                    }
                })
                .collect();
            let r: Vec<f32> = (0..len).map(|i| (i as f32) * -0.31 + 2.0).collect();
            for act in acts {
                for residual in [None, Some(&r[..])] {
                    let mut got = x.clone();
                    bias_act(&mut got, 0.25, residual, act);
                    let want: Vec<f32> = (0..len)
                        .map(|i| epilogue(x[i], 0.25, residual.map(|r| r[i]), act))
                        .collect();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{len} {act:?} {residual:?}");
                }
            }
        }
    }

    /// The channel-interleaved kernel gives the planar kernel's bits, transposed: strides
    /// 1 and 2, every padding from 0 to 2 on each side, maps from 1 pixel up, every
    /// activation.
    #[test]
    fn nhwc_kernel_has_the_planar_kernels_bits() {
        if !applies(&spec_for(8, 5, 5, 1, [1; 4], Act::None)) {
            return; // no AVX2+FMA: neither host kernel runs here
        }
        let acts = [
            Act::None,
            Act::Relu,
            Act::Clip { min: 0.0, max: 6.0 },
            Act::Leaky { slope: 0.1 },
        ];
        let mut rng = adcnn_core::weights::SplitMix64::new(9);
        let mut cases = 0;
        for (h, w) in [(1, 1), (3, 3), (4, 9), (7, 7), (14, 13), (9, 20)] {
            for stride in 1..=2 {
                for pad in [[1, 1, 1, 1], [0, 0, 0, 0], [2, 1, 0, 2], [0, 2, 1, 0]] {
                    for (k, act) in acts.into_iter().enumerate() {
                        // 8 channels, and 16 (the AVX-512 kernel where the CPU has it).
                        let c = 8 * (1 + k % 2);
                        let spec = spec_for(c, h, w, stride, pad, act);
                        if !spec.is_compilable() || !nhwc_applies(&spec) {
                            continue;
                        }
                        cases += 1;
                        let mut draw = |n: usize| -> Vec<f32> {
                            (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect()
                        };
                        let (x, wt, b) = (draw(c * h * w), draw(9 * c), draw(c));
                        let (oh, ow) = (spec.oh, spec.ow);
                        let mut want = vec![0.0f32; c * oh * ow];
                        let mut scratch = vec![0.0f32; scratch_len(&spec)];
                        run(
                            &spec,
                            &x,
                            h * w,
                            None,
                            &wt,
                            &b,
                            None,
                            &mut want,
                            &mut scratch,
                        );
                        // [c, h, w] → [h, w, c]
                        let xt: Vec<f32> =
                            (0..c * h * w).map(|i| x[(i % c) * h * w + i / c]).collect();
                        let mut lanes = vec![8, nhwc_lanes(&spec)];
                        lanes.dedup();
                        for lanes in lanes {
                            let mut got = vec![f32::NAN; c * oh * ow];
                            let taps = taps_by_channel(&wt, c);
                            run_nhwc_lanes(lanes, &spec, &xt, &taps, &b, &mut got);
                            for (i, v) in got.iter().enumerate() {
                                let (ch, px) = (i % c, i / c);
                                let want = want[ch * oh * ow + px];
                                assert_eq!(
                                    v.to_bits(),
                                    want.to_bits(),
                                    "{lanes} {spec:?} at {ch}, {px}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 60, "{cases} cases");
    }

    fn spec_for(
        c: usize,
        h: usize,
        w: usize,
        s: usize,
        pad: [usize; 4],
        act: Act,
    ) -> DepthwiseSpec {
        let oh = (h + pad[0] + pad[2]).saturating_sub(3) / s + 1;
        let ow = (w + pad[1] + pad[3]).saturating_sub(3) / s + 1;
        DepthwiseSpec {
            channels: c,
            h,
            w,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            dh: 1,
            dw: 1,
            pad,
            oh,
            ow,
            act,
            residual: false,
        }
    }

    /// The band-to-planes epilogue equals the scalar one bit for bit: 8×8 blocks, the
    /// pixels and channels they leave, every activation, with and without a residual.
    #[test]
    fn planes_bias_act_equals_the_scalar_epilogue() {
        let acts = [
            Act::None,
            Act::Relu,
            Act::Clip { min: 0.0, max: 6.0 },
            Act::Leaky { slope: 0.1 },
        ];
        let mut rng = adcnn_core::weights::SplitMix64::new(3);
        for (pixels, cout) in [(1, 1), (8, 8), (17, 24), (49, 20), (64, 16), (7, 9)] {
            let ldy = pixels + 3;
            let mut draw =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-8.0, 8.0)).collect() };
            let (t, bias, res) = (draw(pixels * cout), draw(cout), draw(cout * ldy));
            for act in acts {
                for residual in [None, Some(&res[..])] {
                    let mut got = vec![f32::NAN; cout * ldy];
                    planes_bias_act(&t, (pixels, cout), &mut got, ldy, &bias, residual, act);
                    for co in 0..cout {
                        for p in 0..pixels {
                            let r = residual.map(|r| r[co * ldy + p]);
                            let want = epilogue(t[p * cout + co], bias[co], r, act);
                            let v = got[co * ldy + p];
                            assert_eq!(
                                v.to_bits(),
                                want.to_bits(),
                                "{pixels}x{cout} {act:?} ({co}, {p})"
                            );
                        }
                        // Between the planes: untouched.
                        assert!(
                            got[co * ldy + pixels..co * ldy + ldy]
                                .iter()
                                .all(|v| v.is_nan())
                        );
                    }
                }
            }
        }
    }
}
