//! Winograd F(4×4, 3×3) convolution for 3×3, stride-1, undilated, ungrouped convolutions
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! The output is cut into 4×4 tiles, each computed from a 6×6 input patch `d`:
//! `Y = Aᵀ [ Σ_c (G g G ᵀ) ⊙ (Bᵀ d B) ] A`. For each of the 36 positions ξ of the 6×6
//! transformed tile the channel sum is a matrix product `M[ξ] = U[ξ] · V[ξ]` with
//! `U[ξ]` (`cout × cin`, the transformed weights, packed once when a plan loads) and
//! `V[ξ]` (`cin × tiles`, the transformed input), which runs on the host SGEMM. That is
//! 36 multiplications per 16 outputs instead of 144: a quarter of a direct convolution's
//! products, plus the transforms, which cost `O(cin + cout)` per tile, not `O(cin · cout)`.
//!
//! Tiles are processed in blocks (so `V` and `M` stay in the last-level cache) and the
//! transforms run on `LANES` tiles at a time, lane-parallel arrays that the compiler
//! vectorises. Rounding: the transforms' constants (¼, ⅙, 1/24 …) and the longer sums add
//! error of the order of 1e-6 relative to a direct convolution in f32 (measured in the tests
//! of this module and `runtime/kernels/tests/codegen.rs`).

#![allow(
    unsafe_code,
    reason = "calling the AVX2-compiled transforms after detecting AVX2 at run time"
)]

use super::gemm::{MR, PackedA, gemm_packed_strips};
use crate::act::Act;

/// Output tile side.
const M: usize = 4;
/// Input tile side (`M + 3 − 1`).
const T: usize = 6;
/// Tiles transformed together (one 256-bit or two 128-bit vectors).
const LANES: usize = 8;
/// Bytes of `V` plus `M` one block may use (they stay in L2/L3 between the transforms and
/// the GEMMs).
const BLOCK_BYTES: usize = 3 << 20;

type Lanes = [f32; LANES];

/// Whether a convolution with these parameters runs as Winograd F(4×4, 3×3): 3×3 kernel,
/// stride 1, no dilation, one group, enough channels on both sides that the transforms (per
/// input and per output channel) are cheap next to the products they save, and outputs (the
/// largest tile a node computes, `oh × ow`) of at least 8 tiles. Below that the 36
/// transformed matrices (4× the weights, streamed from memory once per call) cost more than
/// the direct products: at 7×7 (4 tiles) ResNet-18 and -50 ran 4–5 % slower with Winograd,
/// at 14×14 and above faster (`adcnn-run bench`, one thread).
pub fn applies(c: &adcnn_core::ops::Conv2d, cin: usize, oh: usize, ow: usize) -> bool {
    (c.kernel.h, c.kernel.w) == (3, 3)
        && (c.stride.h, c.stride.w) == (1, 1)
        && (c.dilation.h, c.dilation.w) == (1, 1)
        && c.groups == 1
        && cin >= 16
        && c.out_channels >= 16
        && oh.div_ceil(M) * ow.div_ceil(M) >= 8
}

/// A convolution's transformed, packed weights.
#[derive(Debug)]
pub struct Winograd {
    cin: usize,
    cout: usize,
    /// `U[ξ]` for the 36 positions of the transformed tile, each `cout × cin`.
    u: Vec<PackedA>,
}

/// The geometry of one call: input `cin × h × w`, output `cout × oh × ow`, and the padding
/// before the first row and column (padding after is implied by `oh`, `ow`).
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl Winograd {
    /// Transforms `w` (`cout × cin × 3 × 3`, row-major, batch norm already folded):
    /// `U = G g Gᵀ` per (output, input) channel pair. `U` is linear in `g`, so each of the 36
    /// matrices is a weighted sum of the nine tap planes `g[·][·][a][b]` with coefficients
    /// `G[r][a]·G[c][b]` (computed in f64): long vectorisable sums instead of a small
    /// transform per channel pair, and one matrix at a time before packing.
    pub fn new(w: &[f32], cout: usize, cin: usize) -> Winograd {
        assert_eq!(w.len(), cout * cin * 9, "weights of a 3×3 convolution");
        let pairs = cout * cin;
        let mut planes = vec![0.0f32; 9 * pairs];
        for (p, g) in w.chunks_exact(9).enumerate() {
            for (t, v) in g.iter().enumerate() {
                planes[t * pairs + p] = *v;
            }
        }
        let mut m = vec![0.0f32; pairs];
        let u = (0..T * T)
            .map(|xi| {
                let (r, c) = (xi / T, xi % T);
                m.fill(0.0);
                for (t, plane) in planes.chunks_exact(pairs).enumerate() {
                    let coef = (G[r][t / 3] * G[c][t % 3]) as f32;
                    if coef != 0.0 {
                        m.iter_mut().zip(plane).for_each(|(d, s)| *d += coef * s);
                    }
                }
                PackedA::new(&m, cout, cin, cin)
            })
            .collect();
        Winograd { cin, cout, u }
    }

    /// Bytes of transformed weights held (36/9 = 4× the convolution's own).
    pub fn bytes(&self) -> usize {
        self.u.iter().map(PackedA::bytes).sum()
    }

    /// `y` (`cout × oh × ow`, overwritten) = the convolution of `x` (`cin × h × w`), zero
    /// padding outside `x`, without bias or activation. With `pool`, `y` is instead the
    /// 2×2 stride-2 max pool of that (`cout × ⌊oh/2⌋ × ⌊ow/2⌋`), taken inside each 4×4 output
    /// tile, so the full-resolution output is never written.
    ///
    /// `epilogue`: bias and activation applied to the output tiles before they are written
    /// (the caller then skips its own pass over `y`).
    pub fn conv(
        &self,
        s: &Shape,
        x: &[f32],
        y: &mut [f32],
        pool: bool,
        epilogue: Option<Epilogue>,
    ) {
        assert!(x.len() >= self.cin * s.h * s.w, "input too short");
        let (out_h, out_w) = if pool {
            (s.oh / 2, s.ow / 2)
        } else {
            (s.oh, s.ow)
        };
        let out_len = out_h * out_w;
        assert!(y.len() >= self.cout * out_len, "output too short");
        let (th, tw) = (s.oh.div_ceil(M), s.ow.div_ceil(M));
        let tiles = th * tw;
        // Nothing to write (a pooled output 0 wide or high), or nothing to compute.
        if tiles == 0 || out_len == 0 {
            return;
        }
        // Split over the threads of the caller's pool: by rows of tiles when the transformed
        // input outweighs U (large maps: each thread transforms, multiplies and writes its
        // own tiles, into its own rows of every output plane), else by output channels,
        // whole MR-row strips of U (small maps, many channels: each thread streams its part
        // of U once and transforms the whole, small, input).
        let flops = 2.0 * (T * T * self.cin * self.cout * tiles) as f64;
        let strips = self.cout.div_ceil(MR);
        let parts: Vec<_> = if tiles >= self.cout {
            let rows = crate::par::ranges(th, 1, flops);
            rows.into_iter().map(|r| (r, 0..strips)).collect()
        } else {
            let channels = crate::par::ranges(strips, 1, flops);
            channels.into_iter().map(|c| (0..th, c)).collect()
        };
        let y = &mut y[..self.cout * out_len];
        let out = Out {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            plane: out_len,
            width: out_w,
            height: out_h,
        };
        crate::par::map(&parts, |(rows, strips)| {
            self.conv_part(s, x, &out, pool, epilogue, rows.clone(), strips.clone());
        });
    }

    /// [`Self::conv`]'s tiles in the tile rows `rows`, output channels of U's MR-row strips
    /// `strips`, written to their rows of their planes of `out`.
    #[allow(clippy::too_many_arguments, reason = "conv's operands and the part")]
    fn conv_part(
        &self,
        s: &Shape,
        x: &[f32],
        out: &Out,
        pool: bool,
        epilogue: Option<Epilogue>,
        rows: std::ops::Range<usize>,
        strips: std::ops::Range<usize>,
    ) {
        let k0 = strips.start * MR;
        let cout = (strips.end * MR).min(self.cout) - k0;
        let epilogue = epilogue.map(|e| Epilogue {
            bias: &e.bias[k0..],
            act: e.act,
        });
        let tw = s.ow.div_ceil(M);
        let (t0, t1) = (rows.start * tw, rows.end * tw);
        let tiles = t1 - t0;
        // The output rows these tiles write (pooled: half as many), and the shape that
        // places them from row 0 of the part.
        let (r0, r1) = if pool {
            (rows.start * M / 2, (rows.end * M / 2).min(out.height))
        } else {
            (rows.start * M, (rows.end * M).min(out.height))
        };
        let part = Shape {
            oh: if pool { 2 * (r1 - r0) } else { r1 - r0 },
            ..*s
        };
        // Tiles per block, a multiple of LANES, spread evenly over the blocks.
        let per_tile = T * T * (self.cin + self.cout) * 4;
        let most = (BLOCK_BYTES / per_tile).max(16);
        let blocks = tiles.div_ceil(most);
        let nb = tiles.div_ceil(blocks).next_multiple_of(LANES);
        thread_local! {
            static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
                const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with_borrow_mut(|(v, m)| {
            // Grown, never shrunk: every element a block reads was written by it first.
            for (buf, len) in [
                (&mut *v, T * T * self.cin * nb),
                (&mut *m, T * T * cout * nb),
            ] {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
            }
            for b0 in (t0..t1).step_by(nb) {
                let n = nb.min(t1 - b0);
                let blk = Block {
                    s,
                    part: &part,
                    rows: r0..r1,
                    t0,
                    tw,
                    nb,
                    b0,
                    n,
                };
                dispatch!(input_block(&blk, self.cin, x, v));
                for (xi, u) in self.u.iter().enumerate() {
                    let vb = &v[xi * self.cin * nb..(xi + 1) * self.cin * nb];
                    let mb = &mut m[xi * cout * nb..(xi + 1) * cout * nb];
                    // Wide blocks: the GEMM reads V's rows in place, without packing.
                    gemm_packed_strips(u, strips.clone(), vb, nb, n, mb, nb, false);
                }
                dispatch!(output_block(&blk, k0, cout, m, out, pool, epilogue));
            }
        });
    }
}

/// The output planes of one [`Winograd::conv`] call, written by several threads at once,
/// each to its own part: rows of every plane, or every row of some planes.
struct Out {
    ptr: *mut f32,
    len: usize,
    /// Floats per plane (output channel).
    plane: usize,
    /// Floats per row, and rows per plane.
    width: usize,
    height: usize,
}

// SAFETY: `Out` is shared only by the threads of one `conv` call, which borrows the output
// mutably for the whole call; each thread writes through `rows` alone, to (plane, row)
// pairs no other thread writes (the parts' tile rows or channel strips are disjoint).
unsafe impl Sync for Out {}

impl Out {
    /// Rows `r0..r1` of plane `k`. Panics if they lie outside the output. Callers on
    /// different threads must ask for disjoint parts (each `conv_part` has its own).
    #[allow(
        clippy::mut_from_ref,
        reason = "disjoint rows per thread: see the SAFETY note on `Out`"
    )]
    fn rows(&self, k: usize, r0: usize, r1: usize) -> &mut [f32] {
        assert!(r0 <= r1 && r1 <= self.height, "rows outside the plane");
        let start = k * self.plane + r0 * self.width;
        let len = (r1 - r0) * self.width;
        assert!(start + len <= self.len, "plane outside the output");
        // SAFETY: in bounds (asserted); the output outlives the call (`conv` holds its
        // borrow), and no other thread touches these rows (see `Out`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Bias (batch norm folded in) and activation, applied to the output tiles in registers.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub bias: &'a [f32],
    pub act: Act,
}

impl Epilogue<'_> {
    /// `o = act(o + bias[k])` for output channel `k`, lane-parallel; the same operations as
    /// the generated epilogue (and `max` before or after it gives the same pooled value: the
    /// activations are monotone).
    #[inline(always)]
    fn apply(&self, o: &mut [[Lanes; M]; M], k: usize) {
        let (b, act) = (self.bias[k], self.act);
        o.iter_mut()
            .flatten()
            .flatten()
            .for_each(|x| *x = act.apply(*x + b));
    }
}

/// One block of tiles: `n` tiles from `b0`, `nb` columns apart in `V` and `M`. Its outputs
/// go to a part of the output whose first tile is `t0` and whose shape is `part` (`s` with
/// the part's output rows).
struct Block<'a> {
    s: &'a Shape,
    part: &'a Shape,
    /// The part's output rows.
    rows: std::ops::Range<usize>,
    t0: usize,
    tw: usize,
    nb: usize,
    b0: usize,
    n: usize,
}

/// Runs a block function with AVX2 + FMA code generation where the CPU has them (the
/// transforms are 8-lane arrays: one ymm register instead of two xmm), else as compiled.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        let avx2 = crate::gemm::isa() == crate::gemm::Isa::Avx2Fma;
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (detected by `isa()`); the function is safe
            // code, compiled for those features.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx2::$f($($arg),*)
            };
        } else {
            $f($($arg),*);
        }
    }};
}
use dispatch;

/// `V[ξ][c][·]` = the transformed input patches of the block's tiles, every channel.
#[inline(always)]
fn input_block(b: &Block, cin: usize, x: &[f32], v: &mut [f32]) {
    let (s, nb) = (b.s, b.nb);
    for c in 0..cin {
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for g0 in (0..b.n).step_by(LANES) {
            let p0 = b.b0 + g0;
            let d = gather(plane, s, b.tw, p0, (b.b0 + b.n).min(p0 + LANES));
            let t = input_transform(&d);
            for (xi, lanes) in t.iter().flatten().enumerate() {
                v[(xi * cin + c) * nb + g0..][..LANES].copy_from_slice(lanes);
            }
        }
    }
}

/// The block's output tiles from `M[ξ][k][·]`, every output channel, into the part's rows
/// of each plane of `out`.
#[inline(always)]
fn output_block(
    b: &Block,
    k0: usize,
    cout: usize,
    m: &[f32],
    out: &Out,
    pool: bool,
    epilogue: Option<Epilogue>,
) {
    let (s, nb) = (b.part, b.nb);
    for k in 0..cout {
        let out = out.rows(k0 + k, b.rows.start, b.rows.end);
        for g0 in (0..b.n).step_by(LANES) {
            let mut mt = [[[0.0f32; LANES]; T]; T];
            for (xi, lanes) in mt.iter_mut().flatten().enumerate() {
                lanes.copy_from_slice(&m[(xi * cout + k) * nb + g0..][..LANES]);
            }
            let mut o = output_transform(&mt);
            if let Some(e) = &epilogue {
                e.apply(&mut o, k);
            }
            // Tiles counted from the part's first.
            let (p0, p1) = (b.b0 + g0 - b.t0, (b.b0 + b.n).min(b.b0 + g0 + LANES) - b.t0);
            if pool {
                scatter_pooled(&o, out, s, b.tw, p0, p1);
            } else {
                scatter(&o, out, s, b.tw, p0, p1);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Block, Epilogue, Out};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn input_block(b: &Block, cin: usize, x: &[f32], v: &mut [f32]) {
        super::input_block(b, cin, x, v);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn output_block(
        b: &Block,
        k0: usize,
        cout: usize,
        m: &[f32],
        out: &Out,
        pool: bool,
        epilogue: Option<Epilogue>,
    ) {
        super::output_block(b, k0, cout, m, out, pool, epilogue);
    }
}

/// The weight transform `G` of F(4×4, 3×3) (6 × 3).
const G: [[f64; 3]; T] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// The 6×6 input patches of tiles `p0..p1` (≤ LANES), lane `l` = tile `p0 + l`; zero outside
/// the input and in unused lanes.
#[inline(always)]
fn gather(plane: &[f32], s: &Shape, tw: usize, p0: usize, p1: usize) -> [[Lanes; T]; T] {
    let mut d = [[[0.0f32; LANES]; T]; T];
    let (h, w) = (s.h as isize, s.w as isize);
    for (l, p) in (p0..p1).enumerate() {
        let y0 = (p / tw * M) as isize - s.pad_top as isize;
        let x0 = (p % tw * M) as isize - s.pad_left as isize;
        if y0 >= 0 && x0 >= 0 && y0 + T as isize <= h && x0 + T as isize <= w {
            for (i, row) in d.iter_mut().enumerate() {
                let src = &plane[(y0 as usize + i) * s.w + x0 as usize..][..T];
                for (j, v) in src.iter().enumerate() {
                    row[j][l] = *v;
                }
            }
            continue;
        }
        for (i, row) in d.iter_mut().enumerate() {
            let iy = y0 + i as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            for (j, lanes) in row.iter_mut().enumerate() {
                let ix = x0 + j as isize;
                if ix >= 0 && ix < w {
                    lanes[l] = plane[iy as usize * s.w + ix as usize];
                }
            }
        }
    }
    d
}

/// Writes the 4×4 output tiles `p0..p1` into `out` (`oh × ow`), dropping what lies outside.
#[inline(always)]
fn scatter(o: &[[Lanes; M]; M], out: &mut [f32], s: &Shape, tw: usize, p0: usize, p1: usize) {
    for (l, p) in (p0..p1).enumerate() {
        let (y0, x0) = (p / tw * M, p % tw * M);
        let cols = M.min(s.ow - x0);
        for (i, row) in o.iter().enumerate().take(M.min(s.oh - y0)) {
            let dst = &mut out[(y0 + i) * s.ow + x0..][..cols];
            for (j, v) in dst.iter_mut().enumerate() {
                *v = row[j][l];
            }
        }
    }
}

/// The 2×2 stride-2 max pool of the 4×4 output tiles `p0..p1`: each gives a 2×2 block of
/// `out` (`⌊oh/2⌋ × ⌊ow/2⌋`); windows reaching past the output are dropped (no ceil mode).
#[inline(always)]
fn scatter_pooled(
    o: &[[Lanes; M]; M],
    out: &mut [f32],
    s: &Shape,
    tw: usize,
    p0: usize,
    p1: usize,
) {
    let (ph, pw) = (s.oh / 2, s.ow / 2);
    for (l, p) in (p0..p1).enumerate() {
        let (y0, x0) = (p / tw * M / 2, p % tw * M / 2);
        for qi in 0..M / 2 {
            if y0 + qi >= ph {
                break;
            }
            for qj in 0..M / 2 {
                if x0 + qj >= pw {
                    break;
                }
                let (r, c) = (2 * qi, 2 * qj);
                let v = o[r][c][l]
                    .max(o[r][c + 1][l])
                    .max(o[r + 1][c][l])
                    .max(o[r + 1][c + 1][l]);
                out[(y0 + qi) * pw + x0 + qj] = v;
            }
        }
    }
}

/// `Bᵀ d` along one axis, lane-parallel.
#[inline(always)]
fn bt(d: [&Lanes; T]) -> [Lanes; T] {
    let mut t = [[0.0f32; LANES]; T];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = d.map(|v| v[l]);
        t[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        t[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        t[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        t[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        t[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        t[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    t
}

/// `Aᵀ m` along one axis, lane-parallel.
#[inline(always)]
fn at(m: [&Lanes; T]) -> [Lanes; M] {
    let mut o = [[0.0f32; LANES]; M];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = m.map(|v| v[l]);
        let (a, b) = (m1 + m2, m1 - m2);
        let (c, d) = (m3 + m4, m3 - m4);
        o[0][l] = m0 + a + c;
        o[1][l] = b + 2.0 * d;
        o[2][l] = a + 4.0 * c;
        o[3][l] = b + 8.0 * d + m5;
    }
    o
}

/// `Fᵀ x F` for LANES tiles, given the one-axis transform `f` (`x ↦ Fᵀ x`): along columns
/// (combining rows) first, then along rows.
#[inline(always)]
fn separable<const N: usize>(
    x: &[[Lanes; T]; T],
    f: impl Fn([&Lanes; T]) -> [Lanes; N],
) -> [[Lanes; N]; N] {
    let mut e = [[[0.0f32; LANES]; T]; N];
    for j in 0..T {
        for (i, v) in f(std::array::from_fn(|i| &x[i][j])).into_iter().enumerate() {
            e[i][j] = v;
        }
    }
    std::array::from_fn(|i| f(std::array::from_fn(|j| &e[i][j])))
}

/// `Bᵀ d B` for LANES patches.
#[inline(always)]
fn input_transform(d: &[[Lanes; T]; T]) -> [[Lanes; T]; T] {
    separable(d, bt)
}

/// `Aᵀ m A` for LANES transformed tiles.
#[inline(always)]
fn output_transform(m: &[[Lanes; T]; T]) -> [[Lanes; M]; M] {
    separable(m, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = adcnn_core::weights::SplitMix64::new(seed);
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// Direct 3×3 convolution in f64.
    fn direct(x: &[f32], w: &[f32], cin: usize, cout: usize, s: &Shape) -> Vec<f32> {
        let mut y = vec![0.0f32; cout * s.oh * s.ow];
        for k in 0..cout {
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let mut acc = 0.0f64;
                    for c in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy + ky) as isize - s.pad_top as isize;
                                let ix = (ox + kx) as isize - s.pad_left as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w
                                {
                                    let xv = x[(c * s.h + iy as usize) * s.w + ix as usize];
                                    let wv = w[((k * cin + c) * 3 + ky) * 3 + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                    }
                    y[(k * s.oh + oy) * s.ow + ox] = acc as f32;
                }
            }
        }
        y
    }

    #[test]
    fn matches_a_direct_convolution() {
        // Odd sizes, partial tiles and blocks, asymmetric and no padding, one-pixel outputs.
        for &(cin, cout, h, w, top, left, bottom, right) in &[
            (16, 16, 8, 8, 1, 1, 1, 1),
            (17, 19, 13, 11, 1, 1, 1, 1),
            (16, 24, 5, 23, 0, 1, 2, 0),
            (32, 16, 3, 3, 0, 0, 0, 0),
            (20, 40, 30, 29, 1, 0, 0, 1),
            // Wide enough that one block holds 60 tiles: 81 tiles in two blocks (48 + 33),
            // V deeper than one KC block of the GEMM.
            (300, 64, 36, 35, 1, 1, 1, 1),
        ] {
            let s = Shape {
                h,
                w,
                oh: h + top + bottom - 2,
                ow: w + left + right - 2,
                pad_top: top,
                pad_left: left,
            };
            let (x, wts) = (data(cin * h * w, 1), data(cout * cin * 9, 2));
            let want = direct(&x, &wts, cin, cout, &s);
            let mut got = vec![f32::NAN; cout * s.oh * s.ow];
            let wg = Winograd::new(&wts, cout, cin);
            wg.conv(&s, &x, &mut got, false, None);
            let err = crate::rel_l2(&got, &want);
            // The fused 2×2 pool equals pooling the full output (odd sizes drop the last
            // row / column, as a floor-mode pool does).
            let (ph, pw) = (s.oh / 2, s.ow / 2);
            let mut pooled = vec![f32::NAN; cout * ph * pw];
            wg.conv(&s, &x, &mut pooled, true, None);
            let want_pooled: Vec<f32> = (0..cout * ph * pw)
                .map(|i| {
                    let (k, py, px) = (i / (ph * pw), i / pw % ph, i % pw);
                    let at =
                        |dy: usize, dx: usize| got[(k * s.oh + 2 * py + dy) * s.ow + 2 * px + dx];
                    at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1))
                })
                .collect();
            assert_eq!(pooled, want_pooled, "{cin}→{cout} {h}×{w} pooled");
            // The fused epilogue equals bias + activation applied afterwards, pooled or not.
            let bias = data(cout, 3);
            for act in [
                Act::Relu,
                Act::Leaky { slope: 0.1 },
                Act::Clip {
                    min: -0.3,
                    max: 0.4,
                },
            ] {
                let e = Epilogue { bias: &bias, act };
                let f = |v: f32, k: usize| {
                    let mut o = [[[v; LANES]; M]; M];
                    e.apply(&mut o, k);
                    o[0][0][0]
                };
                let mut fused = vec![f32::NAN; cout * s.oh * s.ow];
                wg.conv(&s, &x, &mut fused, false, Some(e));
                let plane = s.oh * s.ow;
                let want: Vec<f32> = got
                    .iter()
                    .enumerate()
                    .map(|(i, v)| f(*v, i / plane))
                    .collect();
                assert_eq!(fused, want, "{act:?}");
                wg.conv(&s, &x, &mut fused, true, Some(e));
                let want: Vec<f32> = want_pooled
                    .iter()
                    .enumerate()
                    .map(|(i, v)| f(*v, i / (ph * pw)))
                    .collect();
                assert_eq!(fused[..want.len()], want[..], "{act:?} pooled");
            }
            // Measured 0.5–1.1e-6 (a direct f32 convolution: ~1e-7).
            assert!(err < 3e-6, "{cin}→{cout} {h}×{w}: rel L2 {err}");
        }
    }
}
