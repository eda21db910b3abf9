//! Host SGEMM: packed panels, cache blocking, and a register-blocked micro-kernel chosen at
//! run time — AVX2 + FMA (6×16, twelve 256-bit accumulators, and 6×8 for strips of at most
//! 8 columns such as the 49th column of a 7×7 map) on x86-64, NEON on aarch64 (6×16 with
//! twenty-four 128-bit accumulators, and 6×8), a portable kernel elsewhere; where an x86-64
//! CPU also has AVX-512F, pairs of full 16-column strips run on a 6×32 kernel with twelve
//! 512-bit accumulators ([`wide`]), in [`gemm_strided`] too.
//! Cranelift 0.135 has no 256-bit vectors and its f32x4 FMA reaches about a third of this
//! kernel (see ARCHITECTURE.md), so the inner products run here; generated code calls
//! [`adcnn_sgemm`] through `JITBuilder::symbol`.
//!
//! `C[m×n] (+)= A[m×k] · B[k×n]`, all row-major with explicit leading dimensions.
//! Weights (A) are packed once when a plan loads ([`PackedA`]); B is packed per block, except
//! that a B in memory at least 64 columns wide (1×1 convolutions read their input directly)
//! is read in place, full 16-column strips at its row stride, only a partial strip packed.
#![allow(
    unsafe_code,
    reason = "SIMD intrinsics and the raw-pointer C entry point for JIT code; each unsafe \
              block states the bounds it relies on"
)]

use std::sync::OnceLock;

use super::act::Act;

/// Rows of A per micro-tile.
pub const MR: usize = 6;
/// Columns of B per micro-tile.
pub const NR: usize = 16;
/// Depth of one packed block (A and B panels of this depth stay in L1/L2).
const KC: usize = 256;
/// Columns of B per packed block: KC × NC floats = 192 KiB stay in the 512 KiB L2 of the
/// target next to C; 512 columns measured no better (`examples/gemm_bench.rs`).
const NC: usize = 192;

/// Which micro-kernel this machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx2Fma,
    /// AArch64 Advanced SIMD (mandatory there; detected for uniformity).
    Neon,
    Portable,
}

/// The micro-kernel for this CPU, detected once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Isa::Neon;
            }
        }
        Isa::Portable
    })
}

/// Whether full pairs of B panels run on the AVX-512 6×32 kernel (twelve 512-bit
/// accumulators): where [`isa()`] is AVX2 + FMA and the CPU also has AVX-512F. On cores
/// with full-width AVX-512 units (Zen 5, Xeon) that doubles the FMAs per instruction; every
/// element is still one FMA chain over k, so the bits are the AVX2 kernel's.
pub fn wide() -> bool {
    static WIDE: OnceLock<bool> = OnceLock::new();
    *WIDE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if isa() == Isa::Avx2Fma && std::is_x86_feature_detected!("avx512f") {
                return true;
            }
        }
        false
    })
}

/// A (`m × k`, row-major) packed into MR-row strips per KC block: for each k block, for each
/// strip, `kc` groups of MR values (rows past `m` are zero).
#[derive(Clone, Debug)]
pub struct PackedA {
    pub m: usize,
    pub k: usize,
    data: Vec<f32>,
}

impl PackedA {
    pub fn new(a: &[f32], m: usize, k: usize, lda: usize) -> PackedA {
        assert!(m == 0 || a.len() >= (m - 1) * lda + k, "A too short");
        let strips = m.div_ceil(MR);
        let mut data = vec![0.0f32; strips * MR * k];
        let mut off = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for s in 0..strips {
                for kk in 0..kc {
                    for r in 0..MR {
                        let row = s * MR + r;
                        if row < m {
                            data[off + kk * MR + r] = a[row * lda + k0 + kk];
                        }
                    }
                }
                off += kc * MR;
            }
        }
        PackedA { m, k, data }
    }

    /// Bytes of packed data held.
    pub fn bytes(&self) -> usize {
        self.data.len() * size_of::<f32>()
    }

    /// Element `A[row, col]`. Panics if it is outside the matrix.
    pub fn at(&self, row: usize, col: usize) -> f32 {
        assert!(row < self.m && col < self.k, "outside A");
        let k0 = col / KC * KC;
        self.strip(k0, KC.min(self.k - k0), row / MR)[(col - k0) * MR + row % MR]
    }

    /// The packed strip `s` of the k block starting at `k0` (depth `kc`).
    fn strip(&self, k0: usize, kc: usize, s: usize) -> &[f32] {
        let strips = self.m.div_ceil(MR);
        let start = k0 * strips * MR + s * kc * MR;
        &self.data[start..start + kc * MR]
    }
}

/// B (`k × n`, the weights of a 1×1 convolution transposed: input by output channels)
/// packed once for [`gemm_strided`]: per KC block, NR-column panels of `kc` rows each
/// (columns past `n` are zero).
#[derive(Clone, Debug)]
pub struct PackedB {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// `B[kk, j] = b(kk, j)`.
    pub fn new(b: impl Fn(usize, usize) -> f32, k: usize, n: usize) -> PackedB {
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; panels * NR * k];
        let mut off = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for t in 0..panels {
                for kk in 0..kc {
                    for j in (t * NR..n).take(NR) {
                        data[off + kk * NR + j - t * NR] = b(k0 + kk, j);
                    }
                }
                off += kc * NR;
            }
        }
        PackedB { k, n, data }
    }

    /// `Aᵀ` of packed weights `A` (`m × k`: output by input channels).
    pub fn transposed(a: &PackedA) -> PackedB {
        PackedB::new(|kk, j| a.at(j, kk), a.k, a.m)
    }

    /// Bytes of packed data held.
    pub fn bytes(&self) -> usize {
        self.data.len() * size_of::<f32>()
    }

    /// Panel `t` of the k block starting at `k0` (depth `kc`).
    fn panel(&self, k0: usize, kc: usize, t: usize) -> &[f32] {
        self.panels(k0, kc, t, t + 1)
    }

    /// Panels `t0..t1` of the k block starting at `k0` (depth `kc`), one after another.
    fn panels(&self, k0: usize, kc: usize, t0: usize, t1: usize) -> &[f32] {
        let start = k0 * self.n.div_ceil(NR) * NR + t0 * kc * NR;
        &self.data[start..start + (t1 - t0) * kc * NR]
    }
}

/// A matrix read in place: element `(i, kk)` at `a[i·rs + kk·ks]`. Channel-interleaved
/// pixels as A are `rs` = channels, `ks` = 1; channel planes as A (pixels by channels) are
/// `rs` = 1, `ks` = the plane's size.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub a: &'a [f32],
    pub rs: usize,
    pub ks: usize,
}

/// `act(v + bias[column])`, applied to C as it is stored.
#[derive(Clone, Copy, Debug)]
pub struct ColumnEpilogue<'a> {
    pub bias: &'a [f32],
    pub act: Act,
}

/// `C = A · B`, then `epi` if given, for `m` rows of A read in place (full MR-row strips
/// straight from `a`, a last partial strip copied) and B packed once; C is `m × b.n` with
/// leading dimension `ldc`. The sums run over k in the same order and KC blocks as
/// [`gemm_packed`]'s, so `Aᵀ`'s product there has the same bits. Panics if a slice is
/// short.
pub fn gemm_strided(
    a: Strided,
    m: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Option<ColumnEpilogue>,
) {
    gemm_strided_on(isa(), a, m, b, c, ldc, epi);
}

/// [`gemm_strided`] on `isa`, which must be [`isa()`] or [`Isa::Portable`].
fn gemm_strided_on(
    isa: Isa,
    a: Strided,
    m: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Option<ColumnEpilogue>,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too short");
    assert!(epi.is_none_or(|e| e.bias.len() >= n), "bias too short");
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            for (j, v) in row[..n].iter_mut().enumerate() {
                *v = epi.map_or(0.0, |e| e.act.apply(0.0 + e.bias[j]));
            }
        }
        return;
    }
    assert!(a.a.len() > (m - 1) * a.rs + (k - 1) * a.ks, "A too short");
    let panels = n.div_ceil(NR);
    let mut strip = [0.0f32; KC * MR];
    for p0 in (0..panels).step_by(NC / NR) {
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let e = epi.filter(|_| k0 + kc == k);
            for r0 in (0..m).step_by(MR) {
                let mr = MR.min(m - r0);
                let first = r0 * a.rs + k0 * a.ks;
                // A full strip is read in place; a partial one from zero-padded rows.
                let (ap, rs, ks) = if mr == MR {
                    (&a.a[first..], a.rs, a.ks)
                } else {
                    let strip = &mut strip[..kc * MR];
                    strip.fill(0.0);
                    for kk in 0..kc {
                        for r in 0..mr {
                            strip[kk * MR + r] = a.a[first + r * a.rs + kk * a.ks];
                        }
                    }
                    (&strip[..], 1, MR)
                };
                let p1 = (p0 + NC / NR).min(panels);
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut t = p0;
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx2Fma && mr == MR {
                    // The full panels in one call; then a last panel of exactly 8 columns
                    // on the 8-wide kernel. Other last panels take `micro_strided` below.
                    let full = (n / NR).clamp(p0, p1);
                    let eight = full < p1 && n - full * NR == NR / 2;
                    // Pairs of full panels on the AVX-512 kernel where the CPU has it.
                    let pairs = if wide() { (full - p0) / 2 * 2 } else { 0 };
                    if pairs > 0 {
                        let c0 = p0 * NR;
                        let cols = pairs * NR;
                        let bias = e.map(|e| (&e.bias[c0..c0 + cols], e.act));
                        let cblk = &mut c[r0 * ldc + c0..];
                        assert!(cblk.len() >= (MR - 1) * ldc + cols);
                        let bp = b.panels(k0, kc, p0, p0 + pairs);
                        // SAFETY: `wide()` detected AVX-512F; A holds MR rows of kc at (rs,
                        // ks) (asserted by gemm_strided_on), `bp` an even number of panels,
                        // C MR rows of `cols` at ldc (asserted above), the bias `cols`.
                        unsafe {
                            avx512::strip(kc, (ap, rs, ks), bp, cblk, ldc, k0 > 0, bias);
                        }
                    }
                    let p0 = p0 + pairs;
                    for (t0, t1, w) in [(p0, full, 2), (full, full + usize::from(eight), 1)] {
                        if t1 == t0 {
                            continue;
                        }
                        let cols = if w == 2 { (t1 - t0) * NR } else { NR / 2 };
                        let c0 = t0 * NR;
                        let bias = e.map(|e| (&e.bias[c0..c0 + cols], e.act));
                        let cblk = &mut c[r0 * ldc + c0..];
                        assert!(cblk.len() >= (MR - 1) * ldc + cols);
                        let bp = b.panels(k0, kc, t0, t1);
                        // SAFETY: AVX2 and FMA were detected; A holds MR rows of kc at
                        // (rs, ks) (asserted by gemm_strided_on), `bp` the panels, C
                        // MR rows of `cols` at ldc (asserted above), the bias `cols`.
                        unsafe {
                            avx2::strip(w, kc, (ap, rs, ks), bp, cblk, ldc, k0 > 0, bias);
                        }
                        t = t1;
                    }
                    t = t.max(p0);
                }
                for t in t..p1 {
                    let c0 = t * NR;
                    let nr = NR.min(n - c0);
                    let bias = e.map(|e| (&e.bias[c0..c0 + nr], e.act));
                    let cblk = &mut c[r0 * ldc + c0..];
                    let bp = b.panel(k0, kc, t);
                    micro_strided(isa, kc, (ap, rs, ks), bp, cblk, ldc, (mr, nr), k0 > 0, bias);
                }
            }
        }
    }
}

/// One `mr × nr` block of C from an A strip read at strides `(rs, ks)` (MR rows of `kc`)
/// and a packed B panel: `C (+)= A·B`, then `act(v + bias)` when `epi` is given.
#[allow(clippy::too_many_arguments, reason = "micro-kernel signature")]
#[inline]
fn micro_strided(
    isa: Isa,
    kc: usize,
    (a, rs, ks): (&[f32], usize, usize),
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    (mr, nr): (usize, usize),
    acc: bool,
    epi: Option<(&[f32], Act)>,
) {
    assert!(a.len() > (MR - 1) * rs + (kc - 1) * ks && b.len() >= kc * NR);
    assert!(epi.is_none_or(|(bias, _)| bias.len() >= nr));
    debug_assert!(c.len() >= (mr - 1) * ldc + nr);
    let mut tmp = [[0.0f32; NR]; MR];
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma {
        // SAFETY: AVX2 and FMA were detected; A holds MR rows of kc at (rs, ks) and B kc
        // rows of NR (asserted above); the kernel writes the local MR × NR block.
        unsafe {
            avx2::strip(
                2,
                kc,
                (a, rs, ks),
                b,
                tmp.as_flattened_mut(),
                NR,
                false,
                None,
            );
        }
    } else {
        strided_portable(kc, (a, rs, ks), b, &mut tmp, false);
    }
    // NEON's kernels fuse each multiply-add (`vfmaq`), so this one does too (`mul_add` is
    // one `fmadd` on aarch64): the same bits as `gemm_packed` there.
    #[cfg(not(target_arch = "x86_64"))]
    strided_portable(kc, (a, rs, ks), b, &mut tmp, isa == Isa::Neon);
    for (r, row) in tmp.iter().enumerate().take(mr) {
        let dst = &mut c[r * ldc..r * ldc + nr];
        for (j, (d, &v)) in dst.iter_mut().zip(row).enumerate() {
            let v = if acc { v + *d } else { v };
            *d = epi.map_or(v, |(bias, act)| act.apply(v + bias[j]));
        }
    }
}

/// The portable strided micro-kernel: `out = A·B` for an MR-row A strip at `(rs, ks)`,
/// each multiply-add fused or not as the packed GEMM's kernel on the same ISA does it.
fn strided_portable(
    kc: usize,
    (a, rs, ks): (&[f32], usize, usize),
    b: &[f32],
    out: &mut [[f32; NR]; MR],
    fused: bool,
) {
    for kk in 0..kc {
        let bk = &b[kk * NR..kk * NR + NR];
        for (r, row) in out.iter_mut().enumerate() {
            let av = a[r * rs + kk * ks];
            for (o, bv) in row.iter_mut().zip(bk) {
                *o = if fused {
                    av.mul_add(*bv, *o)
                } else {
                    *o + av * bv
                };
            }
        }
    }
}

/// Something that can write blocks of a `k × n` B matrix in packed form: for the block
/// `B[k0..k0+kc, n0..n0+nc]`, NR-column strips one after another, each `kc` rows of NR
/// values (`out` is `nc.div_ceil(NR) · NR · kc` long and arrives zeroed unless
/// [`PackB::writes_every_column`] says otherwise). A convolution implements it straight
/// from its input (implicit im2col), so the `(Cin·kh·kw) × (H·W)` matrix never exists in
/// memory.
pub trait PackB {
    fn pack(&self, k0: usize, kc: usize, n0: usize, nc: usize, out: &mut [f32]);

    /// Whether `pack` writes every one of the block's `nc` columns in every row, so `out`
    /// need not be zeroed first (columns past `n0 + nc` then hold stale values, which only
    /// reach C columns that are never stored).
    fn writes_every_column(&self) -> bool {
        false
    }

    /// The whole row-major matrix and its leading dimension, when B exists in memory: full
    /// 16-column strips are then read in place (rows `ldb` apart) instead of packed.
    fn rows(&self) -> Option<(&[f32], usize)> {
        None
    }
}

/// A row-major `k × n` matrix with leading dimension `ldb`.
#[derive(Clone, Copy, Debug)]
pub struct Dense<'a> {
    pub b: &'a [f32],
    pub ldb: usize,
}

impl PackB for Dense<'_> {
    fn pack(&self, k0: usize, kc: usize, n0: usize, nc: usize, out: &mut [f32]) {
        pack_b(self.b, self.ldb, k0, kc, n0, nc, out);
    }

    fn writes_every_column(&self) -> bool {
        true
    }

    fn rows(&self) -> Option<(&[f32], usize)> {
        Some((self.b, self.ldb))
    }
}

/// Packs `B[k0..k0+kc, n0..n0+nc]` into NR-column strips (columns past the edge are zero).
fn pack_b(b: &[f32], ldb: usize, k0: usize, kc: usize, n0: usize, nc: usize, out: &mut [f32]) {
    let strips = nc.div_ceil(NR);
    for s in 0..strips {
        let c0 = n0 + s * NR;
        let w = NR.min(n0 + nc - c0);
        let dst = &mut out[s * NR * kc..(s + 1) * NR * kc];
        for kk in 0..kc {
            let src = &b[(k0 + kk) * ldb + c0..(k0 + kk) * ldb + c0 + w];
            dst[kk * NR..kk * NR + w].copy_from_slice(src);
        }
    }
}

/// `C (+)= A · B` with A pre-packed. `accumulate == false` overwrites C.
/// `b` is `k × n` with leading dimension `ldb`; `c` is `m × n` with `ldc`.
pub fn gemm_packed(
    a: &PackedA,
    b: &[f32],
    ldb: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_packed_strips(a, 0..a.m.div_ceil(MR), b, ldb, n, c, ldc, accumulate);
}

/// `C (+)= A · B` with A pre-packed and B packed block by block by `b`.
pub fn gemm_packed_with(
    a: &PackedA,
    b: &impl PackB,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_packed_on(
        isa(),
        wide(),
        a,
        0..a.m.div_ceil(MR),
        b,
        n,
        c,
        ldc,
        accumulate,
    );
}

/// [`gemm_packed_with`] with C's rows split over the threads of the rayon pool the caller
/// runs in ([`crate::par`]): each thread computes whole MR-row strips of C (packing its own
/// blocks of B), so every element is computed as on one thread.
pub fn gemm_packed_par(
    a: &PackedA,
    b: &(impl PackB + Sync),
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let flops = 2.0 * a.m as f64 * a.k as f64 * n as f64;
    let strips = crate::par::ranges(a.m.div_ceil(MR), 1, flops);
    let (isa, wide) = (isa(), wide());
    crate::par::for_each(c, MR * ldc, &strips, |s, c| {
        gemm_packed_on(isa, wide, a, s, b, n, c, ldc, accumulate);
    });
}

/// [`gemm_packed`] of the MR-row strips `strips` of A only: `c` starts at the first row of
/// strip `strips.start` (a range of output channels, as [`crate::winograd`] splits them).
#[allow(clippy::too_many_arguments, reason = "BLAS-shaped signature")]
pub fn gemm_packed_strips(
    a: &PackedA,
    strips: std::ops::Range<usize>,
    b: &[f32],
    ldb: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let b = &Dense { b, ldb };
    gemm_packed_on(isa(), wide(), a, strips, b, n, c, ldc, accumulate);
}

/// [`gemm_packed_with`] of A's MR-row strips `strips` (C starting at the first of their
/// rows) on the micro-kernel `isa`, which must be [`isa()`] or [`Isa::Portable`] (the tests
/// run both), with the AVX-512 kernel for pairs of panels if `wide` (only where [`wide()`]).
#[allow(clippy::too_many_arguments, reason = "BLAS-shaped signature")]
fn gemm_packed_on(
    isa: Isa,
    wide: bool,
    a: &PackedA,
    strips: std::ops::Range<usize>,
    b: &impl PackB,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let strips = strips.start..strips.end.min(a.m.div_ceil(MR));
    let m = (strips.end * MR).min(a.m).saturating_sub(strips.start * MR);
    let k = a.k;
    if m == 0 || n == 0 {
        return;
    }
    if let Some((bm, ldb)) = b.rows().filter(|_| k > 0) {
        // The micro-kernel reads a B in place through raw pointers.
        assert!(ldb >= n && bm.len() >= (k - 1) * ldb + n, "B too short");
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too short");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[r * ldc..r * ldc + n].fill(0.0);
            }
        }
        return;
    }
    // The packed-B buffer is reused per thread: at 192 KiB it is above glibc's mmap
    // threshold, and a fresh one per call cost a map, page faults and an unmap each time.
    thread_local! {
        static PACKED_B: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let wide = wide && isa == Isa::Avx2Fma;
    PACKED_B.with_borrow_mut(|bp| {
        gemm_blocks(isa, wide, a, strips, b, n, c, ldc, accumulate, bp);
    });
}

#[allow(
    clippy::too_many_arguments,
    reason = "the blocked loop nest of gemm_packed_with"
)]
fn gemm_blocks(
    isa: Isa,
    wide: bool,
    a: &PackedA,
    strips: std::ops::Range<usize>,
    b: &impl PackB,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    bp: &mut Vec<f32>,
) {
    let (m, k) = (a.m, a.k);
    let first = strips.start;
    // Narrow matrices (7×7 maps: rows 196 bytes apart, each 16-float read straddling cache
    // lines) measured faster packed.
    let direct = b.rows().filter(|_| n >= 4 * NR);
    for n0 in (0..n).step_by(NC) {
        let nc = NC.min(n - n0);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // In place, only a last partial strip is packed (at the start of `bp`).
            let (p0, pc) = match direct {
                Some(_) => (n0 + nc / NR * NR, nc % NR),
                None => (n0, nc),
            };
            let len = pc.div_ceil(NR) * NR * kc;
            if b.writes_every_column() {
                // Stale values past column nc only feed C columns that are never stored.
                if bp.len() < len {
                    bp.resize(len, 0.0);
                }
            } else {
                bp.clear();
                bp.resize(len, 0.0);
            }
            let bp = &mut bp[..len];
            if pc > 0 {
                b.pack(k0, kc, p0, pc, bp);
            }
            let acc = accumulate || k0 > 0;
            for s in strips.clone() {
                let ap = a.strip(k0, kc, s);
                let mr = MR.min(m - s * MR);
                // C's rows are counted from the first strip's.
                let r0 = (s - first) * MR;
                let panels = nc.div_ceil(NR);
                let mut t = 0;
                while t < panels {
                    let c0 = n0 + t * NR;
                    let nr = NR.min(n0 + nc - c0);
                    let panel = |t: usize| match direct {
                        Some((bm, ldb)) => (&bm[k0 * ldb + n0 + t * NR..], ldb),
                        None => (&bp[t * NR * kc..(t + 1) * NR * kc], NR),
                    };
                    // Two full panels at once: 32 columns.
                    if wide && mr == MR && n0 + nc >= c0 + 2 * NR {
                        let ((b0, ldb), (b1, _)) = (panel(t), panel(t + 1));
                        let cblk = &mut c[r0 * ldc + c0..];
                        micro_wide(kc, ap, b0, b1, ldb, cblk, ldc, acc);
                        t += 2;
                        continue;
                    }
                    let (bpanel, ldb) = match direct {
                        Some(_) if nr == NR => panel(t),
                        Some(_) => (&bp[..], NR),
                        None => panel(t),
                    };
                    let cblk = &mut c[r0 * ldc + c0..];
                    micro(isa, kc, ap, bpanel, ldb, cblk, ldc, mr, nr, acc);
                    t += 1;
                }
            }
        }
    }
}

/// `C (+)= A · B`, packing A too (for one-off products; conv weights use [`PackedA`]).
#[allow(clippy::too_many_arguments, reason = "BLAS-shaped signature")]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let pa = PackedA::new(a, m, k, lda);
    gemm_packed(&pa, b, ldb, n, c, ldc, accumulate);
}

/// `y[r] = Σⱼ a[r·lda + j] · x[j]` for `y.len()` rows of `x.len()` columns: a
/// matrix-vector product (fully connected layers at batch 1), which streams A once and is
/// bound by memory bandwidth once its sums run 8 wide with FMA.
pub fn gemv(a: &[f32], lda: usize, x: &[f32], y: &mut [f32]) {
    gemv_on(isa(), a, lda, x, y);
}

/// [`gemv`] with `y`'s rows split over the threads of the rayon pool the caller runs in
/// ([`crate::par`]); each row's sum is computed as on one thread.
pub fn gemv_par(a: &[f32], lda: usize, x: &[f32], y: &mut [f32]) {
    let flops = 2.0 * y.len() as f64 * x.len() as f64;
    // Rows in multiples of 8 (the AVX2 kernel's row block).
    let rows = crate::par::ranges(y.len(), 8, flops);
    let isa = isa();
    crate::par::for_each(y, 1, &rows, |r, y| {
        gemv_on(isa, &a[r.start * lda..], lda, x, y);
    });
}

/// [`gemv`] on `isa`, which must be [`isa()`] or [`Isa::Portable`].
fn gemv_on(isa: Isa, a: &[f32], lda: usize, x: &[f32], y: &mut [f32]) {
    let (rows, cols) = (y.len(), x.len());
    if rows == 0 {
        return;
    }
    assert!(
        lda >= cols && a.len() >= (rows - 1) * lda + cols,
        "A too short"
    );
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma {
        // SAFETY: AVX2 and FMA were detected; A holds `rows` rows of `cols` floats at stride
        // `lda` (asserted above), x `cols` floats, y `rows`.
        unsafe { avx2::gemv(a.as_ptr(), lda, x.as_ptr(), cols, y.as_mut_ptr(), rows) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon {
        // SAFETY: NEON was detected; A holds `rows` rows of `cols` floats at stride `lda`
        // (asserted above), x `cols` floats, y `rows`.
        unsafe { neon::gemv(a.as_ptr(), lda, x.as_ptr(), cols, y.as_mut_ptr(), rows) };
        return;
    }
    for (r, out) in y.iter_mut().enumerate() {
        let row = &a[r * lda..r * lda + cols];
        // Eight partial sums, so the baseline ISA vectorises them.
        let mut acc = [0.0f32; 8];
        let (body, rest) = row.split_at(cols / 8 * 8);
        for (rc, xc) in body.chunks_exact(8).zip(x.chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += rc[l] * xc[l];
            }
        }
        let tail: f32 = rest
            .iter()
            .zip(&x[cols / 8 * 8..])
            .map(|(a, b)| a * b)
            .sum();
        *out = acc.iter().sum::<f32>() + tail;
    }
}

/// One full MR × 2·NR block of C from a packed A panel of depth `kc` and two B panels of
/// `kc` rows of NR values each, `ldb` apart, on the AVX-512 kernel ([`wide()`] must hold).
#[allow(clippy::too_many_arguments, reason = "micro-kernel signature")]
#[inline]
fn micro_wide(
    kc: usize,
    a: &[f32],
    b0: &[f32],
    b1: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
) {
    assert!(a.len() >= kc * MR && ldb >= NR);
    assert!(b0.len() >= (kc - 1) * ldb + NR && b1.len() >= (kc - 1) * ldb + NR);
    assert!(c.len() >= (MR - 1) * ldc + 2 * NR && ldc >= 2 * NR);
    assert!(wide(), "the AVX-512 kernel on a CPU without AVX-512F");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `wide()` holds only after detecting AVX-512F; `a` holds kc·MR floats, `b0`
    // and `b1` kc rows of NR floats ldb apart, and C MR rows of 2·NR floats ldc apart
    // (asserted above).
    unsafe {
        avx512::kernel_6x32(
            kc,
            a.as_ptr(),
            [b0.as_ptr(), b1.as_ptr()],
            ldb,
            c.as_mut_ptr(),
            ldc,
            acc,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (kc, a, b0, b1, ldb, c, ldc, acc);
}

/// One `mr × nr` (≤ MR × NR) block of C from a packed A panel of depth `kc` and a B panel
/// of `kc` rows of NR values, `ldb` apart (NR when packed).
#[allow(clippy::too_many_arguments, reason = "micro-kernel signature")]
#[inline]
fn micro(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
    acc: bool,
) {
    assert!(a.len() >= kc * MR && ldb >= NR && b.len() >= (kc - 1) * ldb + NR);
    debug_assert!(c.len() >= (mr - 1) * ldc + nr);
    let full = mr == MR && nr == NR;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma && full {
        // SAFETY: `isa()` returned Avx2Fma only after detecting AVX2 and FMA. `a` holds
        // kc·MR floats and `b` kc rows of NR floats ldb apart (asserted above), and C has MR
        // rows of NR floats at stride ldc (the asserts in gemm_packed_with and the block
        // bounds).
        unsafe { avx2::kernel_6x16(kc, a.as_ptr(), b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon && full {
        // SAFETY: `isa()` returned Neon only after detecting it. Bounds as for AVX2 above.
        unsafe { neon::kernel_6x16(kc, a.as_ptr(), b.as_ptr(), ldb, c.as_mut_ptr(), ldc, acc) };
        return;
    }
    // Edge blocks (and the portable kernel) go through a local block.
    let mut tmp = [[0.0f32; NR]; MR];
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            // SAFETY: as above for `a` and `b`; the kernel writes the local MR × NR `tmp`
            // (the first 8 columns of each row for the narrow kernel).
            unsafe {
                let (ap, bp, tp) = (a.as_ptr(), b.as_ptr(), tmp[0].as_mut_ptr());
                if nr <= NR / 2 {
                    // A strip of at most 8 columns (e.g. the 49th column of a 7×7 map):
                    // half the FMAs of the full kernel.
                    avx2::kernel_6x8(kc, ap, bp, ldb, tp, NR);
                } else {
                    avx2::kernel_6x16(kc, ap, bp, ldb, tp, NR, false);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: as above for `a` and `b`; the kernel writes the local MR × NR `tmp`
            // (the first 8 columns of each row for the narrow kernel).
            unsafe {
                let (ap, bp, tp) = (a.as_ptr(), b.as_ptr(), tmp[0].as_mut_ptr());
                if nr <= NR / 2 {
                    neon::kernel_6x8(kc, ap, bp, ldb, tp, NR);
                } else {
                    neon::kernel_6x16(kc, ap, bp, ldb, tp, NR, false);
                }
            }
        }
        _ => {
            portable_kernel(kc, a, b, ldb, &mut tmp);
            if full {
                for (r, row) in tmp.iter().enumerate() {
                    let dst = &mut c[r * ldc..r * ldc + NR];
                    if acc {
                        dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                    } else {
                        dst.copy_from_slice(row);
                    }
                }
                return;
            }
        }
    }
    for (r, row) in tmp.iter().enumerate().take(mr) {
        let dst = &mut c[r * ldc..r * ldc + nr];
        if acc {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        } else {
            dst.copy_from_slice(&row[..nr]);
        }
    }
}

/// Portable micro-kernel: plain loops over fixed-size arrays (LLVM vectorises them for the
/// baseline ISA: SSE2 on x86-64, NEON on aarch64).
fn portable_kernel(kc: usize, a: &[f32], b: &[f32], ldb: usize, out: &mut [[f32; NR]; MR]) {
    for (kk, ak) in a.chunks_exact(MR).take(kc).enumerate() {
        let bk = &b[kk * ldb..kk * ldb + NR];
        for r in 0..MR {
            let av = ak[r];
            for (o, bv) in out[r].iter_mut().zip(bk) {
                *o += av * bv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Act, MR, NR};

    /// [`super::avx2::strip`] for an even number of full panels, two at a time: twelve
    /// 512-bit accumulators, then `act(v + bias)` per column when `epi` is given. Each
    /// element gets the AVX2 kernel's operations in its order (FMA chain, accumulate, bias,
    /// activation), so the same bits.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` covers MR rows of `kc` at those strides, `b` an even
    /// number of whole panels, `c` MR rows of their columns `ldc` apart, the bias those
    /// columns.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn strip(
        kc: usize,
        (a, rs, ks): (&[f32], usize, usize),
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        acc: bool,
        epi: Option<(&[f32], Act)>,
    ) {
        let panels = b.len() / (kc * NR);
        let (bias, act) = match epi {
            Some((bias, act)) => (bias.as_ptr(), act),
            None => (std::ptr::null(), Act::None),
        };
        let (lo, hi) = act.bounds();
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let rows: [*const f32; MR] = std::array::from_fn(|i| a.add(i * rs));
            for t in (0..panels).step_by(2) {
                let mut r = [[_mm512_setzero_ps(); 2]; MR];
                let mut p0 = b.add(t * kc * NR);
                let mut p1 = b.add((t + 1) * kc * NR);
                for kk in 0..kc {
                    let (b0, b1) = (_mm512_loadu_ps(p0), _mm512_loadu_ps(p1));
                    for (i, ri) in r.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*rows[i].add(kk * ks));
                        ri[0] = _mm512_fmadd_ps(av, b0, ri[0]);
                        ri[1] = _mm512_fmadd_ps(av, b1, ri[1]);
                    }
                    p0 = p0.add(NR);
                    p1 = p1.add(NR);
                }
                let cp = c.add(t * NR);
                for (i, ri) in r.iter().enumerate() {
                    for (h, &v) in ri.iter().enumerate() {
                        let dst = cp.add(i * ldc + NR * h);
                        let mut v = if acc {
                            _mm512_add_ps(v, _mm512_loadu_ps(dst))
                        } else {
                            v
                        };
                        if !bias.is_null() {
                            v = _mm512_add_ps(v, _mm512_loadu_ps(bias.add(t * NR + NR * h)));
                            // max/min return their second operand when either is NaN, as
                            // the AVX2 kernel's (and `Act::apply`).
                            v = match act {
                                Act::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
                                Act::Clip { .. } => _mm512_min_ps(_mm512_max_ps(v, lo), hi),
                                Act::Leaky { .. } => {
                                    let pos =
                                        _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps());
                                    _mm512_mask_blend_ps(pos, _mm512_mul_ps(v, lo), v)
                                }
                                Act::None => v,
                            };
                        }
                        _mm512_storeu_ps(dst, v);
                    }
                }
            }
        }
    }

    /// 6×32 block: for each k two 16-float loads of B (one per panel), six broadcasts of
    /// A, twelve 512-bit FMAs into registers; then stored (added to C with `acc`). Each
    /// element is the same FMA chain as in `avx2::kernel_6x16`.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` points at `kc·MR` readable floats, `b[0]` and `b[1]`
    /// at `kc` rows of 16 readable floats `ldb` apart; `c` at MR rows of 32 writable (and
    /// with `acc` readable) floats, `ldc` apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_6x32(
        kc: usize,
        a: *const f32,
        b: [*const f32; 2],
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let mut r = [[_mm512_setzero_ps(); 2]; MR];
            let (mut ap, [mut p0, mut p1]) = (a, b);
            for _ in 0..kc {
                let b0 = _mm512_loadu_ps(p0);
                let b1 = _mm512_loadu_ps(p1);
                for (i, ri) in r.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(i));
                    ri[0] = _mm512_fmadd_ps(av, b0, ri[0]);
                    ri[1] = _mm512_fmadd_ps(av, b1, ri[1]);
                }
                ap = ap.add(MR);
                p0 = p0.add(ldb);
                p1 = p1.add(ldb);
            }
            for (i, ri) in r.iter().enumerate() {
                let row = c.add(i * ldc);
                let (mut v0, mut v1) = (ri[0], ri[1]);
                if acc {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(row));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(row.add(16)));
                }
                _mm512_storeu_ps(row, v0);
                _mm512_storeu_ps(row.add(16), v1);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Act, MR, NR};

    /// Horizontal sum of a ymm register.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Matrix-vector product, four rows at a time (x is read once per four rows), two ymm
    /// accumulators per row.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` points at `rows` rows of `cols` readable floats
    /// `lda` apart, `x` at `cols`, `y` at `rows` writable floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemv(
        a: *const f32,
        lda: usize,
        x: *const f32,
        cols: usize,
        y: *mut f32,
        rows: usize,
    ) {
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let body = cols / 16 * 16;
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(4);
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                let mut j = 0;
                while j < body {
                    let x0 = _mm256_loadu_ps(x.add(j));
                    let x1 = _mm256_loadu_ps(x.add(j + 8));
                    for (i, ai) in acc.iter_mut().enumerate().take(nr) {
                        let row = a.add((r + i) * lda + j);
                        ai[0] = _mm256_fmadd_ps(_mm256_loadu_ps(row), x0, ai[0]);
                        ai[1] = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(8)), x1, ai[1]);
                    }
                    j += 16;
                }
                for (i, ai) in acc.iter().enumerate().take(nr) {
                    let mut sum = hsum(_mm256_add_ps(ai[0], ai[1]));
                    for jj in body..cols {
                        sum += *a.add((r + i) * lda + jj) * *x.add(jj);
                    }
                    *y.add(r + i) = sum;
                }
                r += nr;
            }
        }
    }

    /// 6×16 block: twelve ymm accumulators, two B loads and six A broadcasts per k.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` points at `kc·MR` readable floats, `b` at `kc`
    /// rows of NR readable floats `ldb` apart; `c` at MR rows of NR writable floats, `ldc`
    /// apart.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let mut r = [[_mm256_setzero_ps(); 2]; MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (i, ri) in r.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(i));
                    ri[0] = _mm256_fmadd_ps(av, b0, ri[0]);
                    ri[1] = _mm256_fmadd_ps(av, b1, ri[1]);
                }
                ap = ap.add(MR);
                bp = bp.add(ldb);
            }
            for (i, ri) in r.iter().enumerate() {
                let row = c.add(i * ldc);
                let (mut v0, mut v1) = (ri[0], ri[1]);
                if acc {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row.add(8)));
                }
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            }
        }
    }

    /// 6×8 block from the first 8 columns of a packed NR-wide B strip: six accumulators,
    /// one B load and six A broadcasts per k. Overwrites C.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` points at `kc·MR` readable floats, `b` at `kc`
    /// rows of 8 readable floats `ldb` apart; `c` at MR rows of 8 writable floats, `ldc`
    /// apart.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_6x8(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let mut r = [_mm256_setzero_ps(); MR];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = _mm256_fmadd_ps(_mm256_broadcast_ss(&*ap.add(i)), b0, *ri);
                }
                ap = ap.add(MR);
                bp = bp.add(ldb);
            }
            for (i, ri) in r.iter().enumerate() {
                _mm256_storeu_ps(c.add(i * ldc), *ri);
            }
        }
    }
    /// `C (+)= A · B` for an MR-row A strip read at strides (row `i`, depth `kk` at
    /// `a[i·rs + kk·ks]`) and consecutive packed B panels (`kc·NR` floats each): `w` = 2,
    /// every panel's 16 columns; `w` = 1, the first 8 columns of one panel. Then `act(v +
    /// bias)` per column when `epi` is given. One call per strip, so A's row pointers and
    /// the activation's dispatch are set up once.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` covers MR rows of `kc` at those strides, `b`
    /// whole panels, `c` MR rows of the columns written `ldc` apart, the bias those
    /// columns.
    #[allow(clippy::too_many_arguments, reason = "micro-kernel signature")]
    pub(super) unsafe fn strip(
        w: usize,
        kc: usize,
        (a, rs, ks): (&[f32], usize, usize),
        b: &[f32],
        c: &mut [f32],
        ldc: usize,
        acc: bool,
        epi: Option<(&[f32], Act)>,
    ) {
        let panels = b.len() / (kc * NR);
        let (bias, act) = match epi {
            Some((bias, act)) => (bias.as_ptr(), act),
            None => (std::ptr::null(), Act::None),
        };
        let (lo, hi) = act.bounds();
        let args = (
            kc,
            (a.as_ptr(), rs, ks),
            b.as_ptr(),
            panels,
            c.as_mut_ptr(),
            ldc,
            acc,
            bias,
            lo,
            hi,
        );
        // SAFETY: the caller's guarantee.
        unsafe {
            match (w, act) {
                (1, Act::None) => strip_k::<1, NONE>(args),
                (1, Act::Relu) => strip_k::<1, RELU>(args),
                (1, Act::Clip { .. }) => strip_k::<1, CLIP>(args),
                (1, Act::Leaky { .. }) => strip_k::<1, LEAKY>(args),
                (_, Act::None) => strip_k::<2, NONE>(args),
                (_, Act::Relu) => strip_k::<2, RELU>(args),
                (_, Act::Clip { .. }) => strip_k::<2, CLIP>(args),
                (_, Act::Leaky { .. }) => strip_k::<2, LEAKY>(args),
            }
        }
    }

    /// Activation codes (const generic parameters).
    const NONE: u8 = 0;
    const RELU: u8 = 1;
    const CLIP: u8 = 2;
    const LEAKY: u8 = 3;

    type StripArgs = (
        usize,
        (*const f32, usize, usize),
        *const f32,
        usize,
        *mut f32,
        usize,
        bool,
        *const f32,
        f32,
        f32,
    );

    /// [`strip`] for `W` ymm per row and one activation (the bias null: no epilogue).
    ///
    /// # Safety
    /// As [`strip`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn strip_k<const W: usize, const ACT: u8>(args: StripArgs) {
        let (kc, (a, rs, ks), b, panels, c, ldc, acc, bias, lo, hi) = args;
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let rows: [*const f32; MR] = std::array::from_fn(|i| a.add(i * rs));
            for t in 0..panels {
                let mut r = [[_mm256_setzero_ps(); W]; MR];
                let mut bp = b.add(t * kc * NR);
                for kk in 0..kc {
                    let bv: [__m256; W] = std::array::from_fn(|h| _mm256_loadu_ps(bp.add(8 * h)));
                    for (i, ri) in r.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*rows[i].add(kk * ks));
                        for h in 0..W {
                            ri[h] = _mm256_fmadd_ps(av, bv[h], ri[h]);
                        }
                    }
                    bp = bp.add(NR);
                }
                let cp = c.add(t * NR);
                for (i, ri) in r.iter().enumerate() {
                    for (h, &v) in ri.iter().enumerate() {
                        let dst = cp.add(i * ldc + 8 * h);
                        let mut v = if acc {
                            _mm256_add_ps(v, _mm256_loadu_ps(dst))
                        } else {
                            v
                        };
                        if !bias.is_null() {
                            v = _mm256_add_ps(v, _mm256_loadu_ps(bias.add(t * NR + 8 * h)));
                            // max/min return their second operand when either is NaN, as
                            // f32::max / f32::min (`Act::apply`) ignore a NaN.
                            v = match ACT {
                                RELU => _mm256_max_ps(v, _mm256_setzero_ps()),
                                CLIP => _mm256_min_ps(_mm256_max_ps(v, lo), hi),
                                LEAKY => {
                                    let pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
                                    _mm256_blendv_ps(_mm256_mul_ps(v, lo), v, pos)
                                }
                                _ => v,
                            };
                        }
                        _mm256_storeu_ps(dst, v);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::MR;

    /// Matrix-vector product, four rows at a time (x is read once per four rows), four q
    /// accumulators per row.
    ///
    /// # Safety
    /// NEON must be available; `a` points at `rows` rows of `cols` readable floats `lda`
    /// apart, `x` at `cols`, `y` at `rows` writable floats.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn gemv(
        a: *const f32,
        lda: usize,
        x: *const f32,
        cols: usize,
        y: *mut f32,
        rows: usize,
    ) {
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees.
        unsafe {
            let body = cols / 16 * 16;
            let mut r = 0;
            while r < rows {
                let nr = (rows - r).min(4);
                let mut acc = [[vdupq_n_f32(0.0); 4]; 4];
                let mut j = 0;
                while j < body {
                    let xv = [
                        vld1q_f32(x.add(j)),
                        vld1q_f32(x.add(j + 4)),
                        vld1q_f32(x.add(j + 8)),
                        vld1q_f32(x.add(j + 12)),
                    ];
                    for (i, ai) in acc.iter_mut().enumerate().take(nr) {
                        let row = a.add((r + i) * lda + j);
                        for (q, (aq, xq)) in ai.iter_mut().zip(xv).enumerate() {
                            *aq = vfmaq_f32(*aq, vld1q_f32(row.add(4 * q)), xq);
                        }
                    }
                    j += 16;
                }
                for (i, ai) in acc.iter().enumerate().take(nr) {
                    let s = vaddq_f32(vaddq_f32(ai[0], ai[1]), vaddq_f32(ai[2], ai[3]));
                    let mut sum = vaddvq_f32(s);
                    for jj in body..cols {
                        sum += *a.add((r + i) * lda + jj) * *x.add(jj);
                    }
                    *y.add(r + i) = sum;
                }
                r += nr;
            }
        }
    }

    /// A `MR × 4W` block: `MR · W` q accumulators (24 for W = 4, of the 32 vector
    /// registers), `W` B loads and one A load of four rows plus one of two per k, each B
    /// vector multiplied by an A lane.
    ///
    /// # Safety
    /// NEON must be available; `a` points at `kc·MR` readable floats, `b` at `kc` rows of
    /// `4W` readable floats `ldb` apart; `c` at MR rows of `4W` writable floats, `ldc` apart.
    #[inline(always)]
    unsafe fn kernel<const W: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        const { assert!(MR == 6) };
        // SAFETY (whole body): every offset stays within the bounds the caller guarantees
        // (the A loads read rows 0–3 and 4–5 of each group of MR).
        unsafe {
            // r[j][i]: row i, columns 4j..4j+4.
            let mut r = [[vdupq_n_f32(0.0); MR]; W];
            let (mut ap, mut bp) = (a, b);
            for _ in 0..kc {
                let a03 = vld1q_f32(ap);
                let a45 = vld1_f32(ap.add(4));
                for (j, rj) in r.iter_mut().enumerate() {
                    let bj = vld1q_f32(bp.add(4 * j));
                    rj[0] = vfmaq_laneq_f32::<0>(rj[0], bj, a03);
                    rj[1] = vfmaq_laneq_f32::<1>(rj[1], bj, a03);
                    rj[2] = vfmaq_laneq_f32::<2>(rj[2], bj, a03);
                    rj[3] = vfmaq_laneq_f32::<3>(rj[3], bj, a03);
                    rj[4] = vfmaq_lane_f32::<0>(rj[4], bj, a45);
                    rj[5] = vfmaq_lane_f32::<1>(rj[5], bj, a45);
                }
                ap = ap.add(MR);
                bp = bp.add(ldb);
            }
            for (j, rj) in r.iter().enumerate() {
                for (i, &v) in rj.iter().enumerate() {
                    let dst = c.add(i * ldc + 4 * j);
                    let v = if acc { vaddq_f32(v, vld1q_f32(dst)) } else { v };
                    vst1q_f32(dst, v);
                }
            }
        }
    }

    /// 6×16 block: twenty-four q accumulators.
    ///
    /// # Safety
    /// As [`kernel`] with `4W` = 16 (NR).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn kernel_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        // SAFETY: the caller's guarantees are `kernel`'s.
        unsafe { kernel::<4>(kc, a, b, ldb, c, ldc, acc) }
    }

    /// 6×8 block from the first 8 columns of a packed NR-wide B strip: twelve accumulators.
    /// Overwrites C.
    ///
    /// # Safety
    /// As [`kernel`] with `4W` = 8.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn kernel_6x8(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: the caller's guarantees are `kernel`'s.
        unsafe { kernel::<2>(kc, a, b, ldb, c, ldc, false) }
    }
}

/// C entry point for generated code: `C (+)= A · B` (row-major, leading dimensions given).
///
/// # Safety
/// `a` must hold `m` rows of `k` floats at stride `lda`, `b` `k` rows of `n` at `ldb`, `c`
/// `m` rows of `n` writable floats at `ldc`, with no overlap between C and A or B.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments, reason = "BLAS-shaped C ABI")]
pub unsafe extern "C" fn adcnn_sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: u32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let span =
        |rows: usize, cols: usize, ld: usize| if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    // SAFETY: the caller guarantees these extents (see above).
    let (a, b, c) = unsafe {
        (
            std::slice::from_raw_parts(a, span(m, k, lda)),
            std::slice::from_raw_parts(b, span(k, n, ldb)),
            std::slice::from_raw_parts_mut(c, span(m, n, ldc)),
        )
    };
    sgemm(m, n, k, a, lda, b, ldb, c, ldc, accumulate != 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = adcnn_core::weights::SplitMix64::new(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// The micro-kernels under test: this machine's, and the portable one where they differ.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![isa(), Isa::Portable];
        isas.dedup();
        isas
    }

    #[test]
    fn detects_the_simd_kernel() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            isa() == Isa::Avx2Fma,
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        );
        // NEON is mandatory on aarch64, so the tests there always cover its kernels.
        #[cfg(target_arch = "aarch64")]
        assert_eq!(isas(), [Isa::Neon, Isa::Portable]);
    }

    /// `C (+)= A · B` for dense row-major `m × k` A and `k × n` B on the kernel `isa`.
    fn sgemm_on(
        isa: Isa,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        acc: bool,
    ) {
        sgemm_wide(isa, false, (m, n, k), a, b, c, acc);
    }

    /// [`sgemm_on`], with the AVX-512 kernel for pairs of panels if `wide`.
    fn sgemm_wide(
        isa: Isa,
        wide: bool,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        acc: bool,
    ) {
        let pa = PackedA::new(a, m, k, k);
        let b = &Dense { b, ldb: n };
        gemm_packed_on(isa, wide, &pa, 0..m.div_ceil(MR), b, n, c, n, acc);
    }

    /// The AVX-512 kernel (where the CPU has it) gives the AVX2 kernel's bits: packed and
    /// in place, accumulating or not, with partial strips and row blocks beside full ones.
    #[test]
    fn the_wide_kernel_has_the_avx2_kernels_bits() {
        if !wide() {
            return;
        }
        for &(m, n, k) in &[
            (6, 32, 5),
            (13, 49, 70),
            (64, 530, 27),
            (7, 200, 300),
            (160, 196, 576),
            (25, 63, 260),
        ] {
            let (a, b) = (data(m * k, 7), data(k * n, 8));
            for acc in [false, true] {
                let mut narrow = data(m * n, 9);
                let mut wide_c = narrow.clone();
                sgemm_wide(Isa::Avx2Fma, false, (m, n, k), &a, &b, &mut narrow, acc);
                sgemm_wide(Isa::Avx2Fma, true, (m, n, k), &a, &b, &mut wide_c, acc);
                let same = narrow
                    .iter()
                    .zip(&wide_c)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{m}x{n}x{k} acc {acc}");
            }
        }
    }

    #[test]
    fn matches_naive_on_odd_shapes() {
        for isa in isas() {
            matches_naive_on(isa);
        }
    }

    fn matches_naive_on(isa: Isa) {
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 17, 3),
            (6, 16, 256),
            (13, 33, 300),
            (64, 530, 27),
            (5, 3, 600),
            // N = 49, 9, 1, 23: a last strip of at most 8 columns (the narrow kernel),
            // with one or several K blocks.
            (13, 49, 70),
            (12, 9, 300),
            (6, 1, 5),
            (7, 23, 33),
            (160, 49, 576),
            // N ≥ 64: full strips read in place, the partial one packed; several K blocks
            // and several NC column blocks.
            (7, 200, 300),
            (5, 401, 20),
        ] {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            let want = naive(m, n, k, &a, &b);
            let mut got = vec![0.0f32; m * n];
            sgemm_on(isa, (m, n, k), &a, &b, &mut got, false);
            let err = crate::rel_l2(&got, &want);
            assert!(err < 1e-6, "{isa:?} {m}x{n}x{k}: {err}");
            // Accumulating adds the product once more.
            sgemm_on(isa, (m, n, k), &a, &b, &mut got, true);
            let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
            let err = crate::rel_l2(&got, &twice);
            assert!(err < 1e-6, "{isa:?} {m}x{n}x{k} accumulating: {err}");
            // The matrix-vector product against the same naive product (n = 1).
            let (a, x) = (data(m * k, 3), data(k, 4));
            let mut y = vec![f32::NAN; m];
            gemv_on(isa, &a, k, &x, &mut y);
            assert!(
                crate::rel_l2(&y, &naive(m, 1, k, &a, &x)) < 1e-6,
                "{isa:?} gemv {m}×{k}"
            );
        }
    }

    /// `gemm_strided` computes what `gemm_packed` computes for the transposed product, bit
    /// for bit: `Cᵀ = Bᵀ·Aᵀ` with the weights as B, A read in place both ways (rows of
    /// interleaved channels, and channel planes), partial strips and panels, several K
    /// blocks and column blocks, then the column epilogue of every activation.
    #[test]
    fn strided_gemm_has_the_packed_gemms_bits() {
        let acts = [
            Act::None,
            Act::Relu,
            Act::Clip { min: 0.0, max: 6.0 },
            Act::Leaky { slope: 0.1 },
        ];
        for isa in isas() {
            for &(pixels, cout, cin) in &[
                (1, 1, 1),
                (6, 16, 8),
                (49, 24, 96),
                (13, 33, 300),
                (100, 200, 40),
                (7, 400, 17),
            ] {
                // The weights (cout × cin) as `gemm_packed`'s A; the activations, channel
                // planes (cin × pixels), as its B.
                let (w, x) = (data(cout * cin, 5), data(cin * pixels, 6));
                let pa = PackedA::new(&w, cout, cin, cin);
                let mut want = vec![0.0f32; cout * pixels];
                gemm_packed_on(
                    isa,
                    false,
                    &pa,
                    0..cout.div_ceil(MR),
                    &Dense { b: &x, ldb: pixels },
                    pixels,
                    &mut want,
                    pixels,
                    false,
                );
                let pb = PackedB::transposed(&pa);
                // A as channel planes (rs 1, ks pixels) and as interleaved rows (rs cin).
                let xt: Vec<f32> = (0..pixels * cin)
                    .map(|i| x[(i % cin) * pixels + i / cin])
                    .collect();
                let planes = Strided {
                    a: &x,
                    rs: 1,
                    ks: pixels,
                };
                let rows = Strided {
                    a: &xt,
                    rs: cin,
                    ks: 1,
                };
                for a in [planes, rows] {
                    let bias = data(cout, 7);
                    for epi in [None]
                        .into_iter()
                        .chain(acts.map(|act| Some(ColumnEpilogue { bias: &bias, act })))
                    {
                        let mut got = vec![f32::NAN; pixels * cout];
                        gemm_strided_on(isa, a, pixels, &pb, &mut got, cout, epi);
                        for (p, row) in got.chunks(cout).enumerate() {
                            for (j, &v) in row.iter().enumerate() {
                                let w = want[j * pixels + p];
                                let w = epi.map_or(w, |e| e.act.apply(w + e.bias[j]));
                                assert_eq!(
                                    v.to_bits(),
                                    w.to_bits(),
                                    "{isa:?} {pixels}x{cout}x{cin} rs {} ({p}, {j}) {epi:?}",
                                    a.rs
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
