//! Compiled tile kernels: a plan's segments prepared once when it loads (weights packed for
//! the host GEMM, batch norm folded into conv weights and bias, activations fused), plus the
//! JIT functions for every tile shape a node runs. [`CompiledKernels::run_tile`] takes the
//! same inputs as [`crate::reference::tile::run_tile`], the oracle it is tested against.
//!
//! Generated/host split: convolutions (dense and grouped) are im2col (or the input itself for
//! 1×1 stride-1 convolutions) + the host GEMM, or Winograd F(4×4, 3×3) for 3×3 stride-1
//! layers (`winograd.rs`, which applies bias and activation in its output transform and can
//! take a following 2×2 max pool there too), + a JIT epilogue (bias, folded batch norm,
//! residual add, activation), or for stride-1/2 stems with 1–4 input channels the direct
//! kernel (`direct.rs`, bias and activation fused); depthwise convolutions are JIT loop
//! nests with the epilogue fused — 3×3 stride-1/2 ones the host AVX2+FMA kernel
//! (`depthwise.rs`, epilogue fused too) where the CPU has it — and a direct host loop +
//! epilogue only for a tile shape that was not compiled; max pools are JIT loop nests
//! (padding: the input is copied into a −∞ border first); the
//! tail's fully connected layers run on the host GEMV. Inverted-residual blocks (1×1
//! expansion or none → 3×3 depthwise on the host kernel → 1×1 projection) run over bands of
//! output rows (`block.rs`) when a tile's regions line up. Every other layer kind runs on
//! the reference interpreter (`eval_op`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use ndarray::{Array3, ShapeError, s};

use adcnn_core::eval::{self, EvalError, eval_op};
use adcnn_core::geometry::{input_region, tile_op};
use adcnn_core::net::{LayerId, Source};
use adcnn_core::ops::{Conv2d, Hw, Op, Pad2, Pool2d, Shape, WeightRole};
use adcnn_core::plan::{Compression, Mode, Region, Segment, Tile};
use adcnn_core::program::Program;
use adcnn_core::tensor::{crop, empty};
use adcnn_core::weights::Weights;

use crate::act::Act;
use crate::block::{self, Block, Pointwise};
use crate::depthwise::{self as host_dw, bias_act};
use crate::direct;
use crate::gemm::{Isa, NR, PackB, PackedA, PackedB, gemm_packed, gemm_packed_with, gemv, isa};
use crate::jit::{DepthwiseSpec, EpilogueSpec, Handle, JitCode, JitError, JitSession, MaxPoolSpec};
use crate::winograd::{self, Winograd};
use crate::wire::{self, QuantError, Quantised, WireTile};

/// A convolution with what follows it folded or fused.
#[derive(Debug)]
struct ConvKernel {
    cin_g: usize,
    cout_g: usize,
    groups: usize,
    /// Per group: weights `[cout_g, cin_g·kh·kw]`, packed. Empty for depthwise.
    packed: Vec<PackedA>,
    /// Depthwise only: `[c, kh·kw]`.
    depthwise: Vec<f32>,
    /// In an inverted-residual block run channel-interleaved (`block.rs`): a 1×1 conv's
    /// weights transposed, or a depthwise conv's tap by tap (`[9, c]`).
    interleaved: Interleaved,
    /// Stride-1/2 convolutions with few input channels (`direct.rs`): `[cout, cin·kh·kw]`,
    /// for tiles the direct kernel takes (`packed` serves the others).
    direct: Option<Vec<f32>>,
    /// 3×3 stride-1 convolutions: Winograd F(4×4, 3×3) weights (then `packed` is empty).
    winograd: Option<Winograd>,
    /// A following 2×2 stride-2 max pool taken inside the Winograd output tiles (then the
    /// epilogue runs on the pooled values: bias and the monotone activations commute with
    /// max).
    pool2: bool,
    bias: Vec<f32>,
    act: Act,
    /// The fused `add` layer and the index (0 or 1) of its other operand, if any.
    residual: Option<(usize, usize)>,
    /// The last layer of the fused chain (conv itself when nothing is fused).
    last: usize,
}

/// A block conv's weights for the channel-interleaved path.
#[derive(Debug, Default)]
enum Interleaved {
    #[default]
    None,
    Pointwise(PackedB),
    Taps(Vec<f32>),
}

impl ConvKernel {
    /// One input and one output channel per group (no packed GEMM weights, no Winograd).
    fn is_depthwise(&self) -> bool {
        self.packed.is_empty() && self.winograd.is_none()
    }

    /// Its GEMM weights, bias and activation, for a block (one group only).
    fn as_pointwise(&self) -> Option<Pointwise<'_>> {
        Some(Pointwise {
            weights: self.packed.first().filter(|_| self.groups == 1)?,
            transposed: match &self.interleaved {
                Interleaved::Pointwise(b) => Some(b),
                _ => None,
            },
            bias: &self.bias,
            act: self.act,
        })
    }
}

/// Choices made when kernels are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    /// Winograd F(4×4, 3×3) where it pays (see `winograd::applies`); off: every dense
    /// convolution on im2col + GEMM, with 4× less memory for 3×3 weights.
    pub winograd: bool,
    /// Generate the Cranelift functions (epilogues, depthwise convolutions, pools). Off,
    /// every layer takes its host fallback — what a tile shape that was not compiled gets;
    /// the tests use it to check those paths.
    pub generate: bool,
    /// The plan's wire compression: with q8/q4, the epilogue of a segment's last
    /// convolution also quantises its tile output (see [`CompiledKernels::run_tile_wire`]).
    pub wire: Compression,
    /// Depthwise 3×3 stride-1/2 convolutions on the host AVX2+FMA kernel
    /// (`depthwise.rs`) where the CPU has it, instead of generated code; off, they take the
    /// generated kernel (or, with `generate` off too, the host loop).
    pub host_depthwise: bool,
    /// Stride-1/2 convolutions with few input channels on the direct AVX2+FMA kernel
    /// (`direct.rs`) where the CPU has it; off, on im2col + GEMM.
    pub direct: bool,
    /// Inverted-residual blocks (1×1 expansion → 3×3 depthwise on the host kernel → 1×1
    /// projection) computed over bands of output rows (`block.rs`), so the expanded tensor
    /// stays in L2; off, layer by layer.
    pub blocks: bool,
    /// About how many bytes of expanded rows a band of such a block holds (at least one
    /// output row per band).
    pub band_bytes: usize,
    /// Blocks with an expansion and whole groups of 8 hidden channels run
    /// channel-interleaved inside (`block.rs`), with their 1×1 weights also prepared
    /// transposed; off, planar like the layers one by one.
    pub interleave: bool,
}

/// The default [`CompileOptions::band_bytes`]: half of a 1 MiB L2, leaving room for the
/// depthwise band, the weights and the band's output columns (`block_bench`: 512 KiB and
/// 1 MiB measured alike, 128 KiB slower than layer by layer).
pub const BAND_BYTES: usize = 512 << 10;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            winograd: true,
            generate: true,
            wire: Compression::None,
            host_depthwise: true,
            direct: true,
            blocks: true,
            band_bytes: BAND_BYTES,
            interleave: true,
        }
    }
}

/// Milliseconds per kind of work (see [`CompiledKernels::run_tile_profiled`]).
pub type Profile = std::collections::BTreeMap<&'static str, f64>;

/// Counters of what ran how (for reports and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub convs: usize,
    /// Convolutions computed as Winograd F(4×4, 3×3).
    pub winograd: usize,
    pub fused_layers: usize,
    pub epilogues: usize,
    pub max_pools: usize,
    /// Depthwise kernels generated (one per layer and tile shape).
    pub depthwise: usize,
    /// Epilogues that quantise a segment's output for the wire.
    pub quantising_epilogues: usize,
    /// Quantising passes for tile outputs no epilogue quantises.
    pub quantisers: usize,
    /// Depthwise layer and tile shapes that run the host AVX2+FMA kernel instead.
    pub depthwise_host: usize,
    /// Convolutions prepared for the direct kernel (`direct.rs`; on CPUs with
    /// AVX2+FMA, it runs their tiles at least 8 wide).
    pub direct: usize,
    /// Inverted-residual blocks prepared to run over row bands (`block.rs`; on CPUs with
    /// AVX2+FMA).
    pub blocks: usize,
    /// Of those, blocks prepared to run channel-interleaved inside.
    pub interleaved_blocks: usize,
}

/// A plan's compiled kernels. Shared read-only by worker threads.
#[derive(Debug)]
pub struct CompiledKernels {
    convs: HashMap<usize, ConvKernel>,
    /// Layer → the conv it is fused into.
    fused_into: HashMap<usize, usize>,
    /// By (layer, pixels, wire compression).
    epilogues: HashMap<(usize, usize, Compression), (Handle, EpilogueSpec)>,
    /// Quantising passes by (channels, pixels), for the plan's compression.
    quantisers: HashMap<(usize, usize), (Handle, EpilogueSpec)>,
    pools: HashMap<(usize, MaxPoolSpec), Handle>,
    depthwise: HashMap<(usize, DepthwiseSpec), Handle>,
    /// Whether depthwise shapes the host kernel handles run on it (`CompileOptions`).
    host_depthwise: bool,
    /// Inverted-residual blocks by their first conv: (expansion conv if any, depthwise
    /// conv, projection conv).
    blocks: HashMap<usize, (Option<usize>, usize, usize)>,
    /// [`CompileOptions::band_bytes`].
    band_bytes: usize,
    code: JitCode,
    pub stats: KernelStats,
    /// Wall time of preparation and compilation.
    pub compile_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Jit(#[from] JitError),
    #[error("{0}")]
    Tile(String),
}

/// Whether layer `id` reads only layer `from`, and is its only reader.
fn single_input(prog: &Program, id: usize, from: usize) -> bool {
    prog.get(id)
        .is_some_and(|l| l.inputs == [Source::Layer(LayerId(from as u32))])
        && prog.consumers(LayerId(from as u32)).len() == 1
}

fn act_of(op: &Op) -> Option<Act> {
    match op {
        Op::Relu => Some(Act::Relu),
        Op::Clip { min, max } => Some(Act::Clip {
            min: *min,
            max: *max,
        }),
        Op::LeakyRelu { slope } if *slope >= 0.0 => Some(Act::Leaky { slope: *slope }),
        _ => None,
    }
}

fn vector(weights: &Weights, layer: &str, role: WeightRole, n: usize) -> Option<Vec<f32>> {
    let t = weights.get(layer, role)?;
    (t.shape() == [n]).then(|| t.iter().copied().collect())
}

/// Prepares conv `i` of a program, or `None` to leave it to the plain operator.
/// `winograd_tile`: the largest output tile it computes, when Winograd may be used;
/// `direct`: whether it may run on the direct kernel.
fn prepare_conv(
    prog: &Program,
    i: usize,
    in_shape: Shape,
    winograd_tile: Option<(usize, usize)>,
    direct: bool,
) -> Option<ConvKernel> {
    let weights = prog.weights();
    let layer = prog.get(i)?;
    let Op::Conv2d(c) = &layer.op else {
        return None;
    };
    let (cin, cout, g) = (in_shape.c, c.out_channels, c.groups);
    if g == 0 || cin % g != 0 || cout % g != 0 {
        return None;
    }
    let (cin_g, cout_g) = (cin / g, cout / g);
    let taps = c.kernel.h * c.kernel.w;
    let kdim = cin_g * taps;
    let w = weights.get(&layer.name, WeightRole::Weight)?;
    if w.shape() != [cout, cin_g, c.kernel.h, c.kernel.w] {
        return None;
    }
    let w: Vec<f32> = w.iter().copied().collect();
    let bias = if c.bias {
        vector(weights, &layer.name, WeightRole::Bias, cout)?
    } else {
        vec![0.0; cout]
    };
    let mut last = i;
    // A batch norm that `adcnnc build` folded into these weights left an identity.
    if prog.get(last + 1).is_some_and(|l| l.op == Op::Identity)
        && single_input(prog, last + 1, last)
    {
        last += 1;
    }
    // A residual add whose other operand is already computed.
    let mut residual = None;
    if let Some(next) = prog.get(last + 1)
        && matches!(next.op, Op::Add)
        && next.inputs.len() == 2
        && prog.consumers(LayerId(last as u32)).len() == 1
    {
        let me = Source::Layer(LayerId(last as u32));
        if let Some(k) = next.inputs.iter().position(|s| *s == me)
            && next.inputs[1 - k] != me
        {
            residual = Some((last + 1, 1 - k));
            last += 1;
        }
    }
    let mut act = Act::None;
    if let Some(next) = prog.get(last + 1)
        && let Some(a) = act_of(&next.op)
        && single_input(prog, last + 1, last)
    {
        act = a;
        last += 1;
    }
    let depthwise = cin_g == 1 && cout_g == 1;
    let winograd = winograd_tile
        .is_some_and(|(oh, ow)| winograd::applies(c, cin, oh, ow))
        .then(|| Winograd::new(&w, cout, cin));
    let direct = (direct
        && !depthwise
        && winograd.is_none()
        && residual.is_none()
        && direct::shape_fits(c, cin)
        && isa() == Isa::Avx2Fma)
        .then(|| w.clone());
    // A following 2×2/2 max pool is taken inside the Winograd output tiles or the direct
    // kernel's registers.
    let mut pool2 = false;
    if (winograd.is_some() || direct.is_some())
        && residual.is_none()
        && let Some(next) = prog.get(last + 1)
        && let Op::MaxPool(p) = &next.op
        && (p.kernel.h, p.kernel.w, p.stride.h, p.stride.w) == (2, 2, 2, 2)
        && p.padding.is_zero()
        && !p.ceil_mode
        && single_input(prog, last + 1, last)
    {
        pool2 = true;
        last += 1;
    }
    let packed = if depthwise || winograd.is_some() {
        Vec::new()
    } else {
        (0..g)
            .map(|gi| PackedA::new(&w[gi * cout_g * kdim..], cout_g, kdim, kdim))
            .collect()
    };
    Some(ConvKernel {
        cin_g,
        cout_g,
        groups: g,
        packed,
        depthwise: if depthwise { w } else { Vec::new() },
        interleaved: Interleaved::None,
        direct,
        winograd,
        pool2,
        bias,
        act,
        residual,
        last,
    })
}

/// Whether conv `i` is a 1×1 stride-1 unpadded convolution on the host GEMM with nothing
/// but bias, folded batch norm, residual and activation fused.
fn pointwise(prog: &Program, i: usize, k: &ConvKernel) -> bool {
    let Some(Op::Conv2d(c)) = prog.get(i).map(|l| &l.op) else {
        return false;
    };
    (c.kernel.h, c.kernel.w, c.stride.h, c.stride.w) == (1, 1, 1, 1)
        && c.padding.is_zero()
        && k.groups == 1
        && k.packed.len() == 1
        && k.winograd.is_none()
        && k.direct.is_none()
        && !k.pool2
}

/// The (expansion, depthwise, projection) convs of the inverted-residual block that starts
/// at conv `i` of the program, if one does: a 1×1 expansion (no
/// residual; or none, when `i` is the depthwise conv), a 3×3 stride-1/2 depthwise conv (no
/// residual) reading only it, a 1×1 projection reading only that. Whether a tile's shapes
/// fit the host depthwise kernel is checked when it runs.
fn inverted_residual(
    prog: &Program,
    convs: &HashMap<usize, ConvKernel>,
    i: usize,
) -> Option<(Option<usize>, usize, usize)> {
    let end = prog.end().index();
    let first = convs.get(&i)?;
    let (expand, d) = if pointwise(prog, i, first) && first.residual.is_none() {
        (Some(i), first.last + 1)
    } else {
        (None, i)
    };
    let dk = convs.get(&d).filter(|k| {
        k.is_depthwise()
            && k.residual.is_none()
            && d < end
            && (expand.is_none() || single_input(prog, d, d - 1))
    })?;
    let Op::Conv2d(c) = &prog.get(d)?.op else {
        return None;
    };
    let strides = [(1, 1), (2, 2)];
    let three = (c.kernel.h, c.kernel.w, c.dilation.h, c.dilation.w) == (3, 3, 1, 1);
    if !three || !strides.contains(&(c.stride.h, c.stride.w)) {
        return None;
    }
    let p = dk.last + 1;
    convs
        .get(&p)
        .filter(|k| p < end && pointwise(prog, p, k) && single_input(prog, p, dk.last))?;
    Some((expand, d, p))
}

/// Prepares the weights of block `(e, d, p)` for the channel-interleaved path, when its
/// hidden channels come in whole groups of 8 (returns whether it did).
fn interleave(convs: &mut HashMap<usize, ConvKernel>, e: usize, d: usize, p: usize) -> bool {
    let hidden = convs[&d].groups;
    if !hidden.is_multiple_of(8) {
        return false;
    }
    for i in [e, p] {
        if let Some(k) = convs.get_mut(&i)
            && let Some(a) = k.packed.first()
        {
            k.interleaved = Interleaved::Pointwise(PackedB::transposed(a));
        }
    }
    if let Some(k) = convs.get_mut(&d) {
        k.interleaved = Interleaved::Taps(host_dw::taps_by_channel(&k.depthwise, hidden));
    }
    true
}

/// The operator a tile runs for layer `i` of `seg` (whose program is `prog`) and the
/// `(h, w)` of its first input.
fn tile_geometry(
    prog: &Program,
    seg: &Segment,
    tile: &Tile,
    i: usize,
) -> Result<(Op, usize, usize), CompileError> {
    let first = seg.first.index();
    let layer = prog
        .get(i)
        .ok_or_else(|| CompileError::Tile(format!("no layer {i}")))?;
    let region = tile.regions[i - first];
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
fn max_pool_spec(op: &Op, c: usize, h: usize, w: usize) -> Option<MaxPoolSpec> {
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

/// `x` (`[c, h, w]`) inside a border of `value`: `[c, h + top + bottom, w + left + right]`.
fn padded(x: &[f32], c: usize, h: usize, w: usize, pad: Pad2, value: f32) -> Vec<f32> {
    let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    // May be longer than `c·ph·pw` (a recycled buffer); the pool reads only that much.
    let mut out = overwritten(c * ph * pw);
    out[..c * ph * pw].fill(value);
    if w > 0 {
        for (r, src) in x.chunks_exact(w).take(c * h).enumerate() {
            let (ch, y) = (r / h, r % h);
            let at = (ch * ph + y + pad.top) * pw + pad.left;
            out[at..at + w].copy_from_slice(src);
        }
    }
    out
}

/// The output width of conv `c` on an input `w` wide, if the window fits.
fn tile_ow(c: &Conv2d, w: usize) -> Option<usize> {
    let padded = w + c.padding.left + c.padding.right;
    let span = c.dilation.w * c.kernel.w.checked_sub(1)? + 1;
    (c.stride.w > 0 && padded >= span).then(|| (padded - span) / c.stride.w + 1)
}

/// The generated depthwise kernel's spec for conv `c` on a `[channels, h, w]` input, if it
/// has one.
fn depthwise_spec(
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

impl CompiledKernels {
    /// Prepares and compiles the kernels of `segments` (each with its program) for the tiles
    /// `want` selects (a node's share; `|_| true` for all).
    pub fn compile(
        segments: &[(&Segment, &Program)],
        want: impl Fn(&Tile) -> bool,
        opts: &CompileOptions,
    ) -> Result<CompiledKernels, CompileError> {
        let t0 = Instant::now();
        let mut convs = HashMap::new();
        let mut fused_into = HashMap::new();
        let mut blocks = HashMap::new();
        let mut stats = KernelStats::default();
        // Only segments where this node computes a tile: a node without tiles in a segment
        // needs none of its weights (a `single` plan's idle nodes prepare nothing).
        for &(seg, prog) in segments
            .iter()
            .filter(|(seg, _)| seg.tiles.iter().any(&want))
        {
            let (first, end) = (seg.first.index(), seg.end.index());
            if (prog.first(), prog.end()) != (seg.first, seg.end) {
                return Err(CompileError::Tile(format!(
                    "the segment covers layers {first}..{end}, its program others"
                )));
            }
            let mut i = first;
            while i < end {
                let layer = &prog.layers()[i - first];
                let in_shape = prog.shape_of(&layer.inputs[0]);
                // The largest output region of this layer among the node's tiles.
                let largest = seg
                    .tiles
                    .iter()
                    .filter(|t| want(t))
                    .map(|t| t.regions[i - first])
                    .map(|r| (r.rows(), r.cols()))
                    .max_by_key(|&(r, c)| r * c)
                    .unwrap_or((layer.shape.h, layer.shape.w));
                let largest = opts.winograd.then_some(largest);
                if let Some(k) = prepare_conv(prog, i, in_shape, largest, opts.direct) {
                    for j in i + 1..=k.last {
                        fused_into.insert(j, i);
                    }
                    stats.convs += 1;
                    stats.winograd += usize::from(k.winograd.is_some());
                    stats.direct += usize::from(k.direct.is_some());
                    stats.fused_layers += k.last - i;
                    let next = k.last + 1;
                    convs.insert(i, k);
                    i = next;
                } else {
                    i += 1;
                }
            }
            if opts.blocks && opts.host_depthwise && isa() == Isa::Avx2Fma {
                // A depthwise conv that ends a block with an expansion starts no block of
                // its own.
                let mut taken = std::collections::HashSet::new();
                for i in first..end {
                    match inverted_residual(prog, &convs, i) {
                        Some((Some(e), d, p)) => {
                            taken.insert(d);
                            blocks.insert(e, (Some(e), d, p));
                            if opts.interleave && interleave(&mut convs, e, d, p) {
                                stats.interleaved_blocks += 1;
                            }
                        }
                        Some((None, d, p)) if !taken.contains(&d) => {
                            blocks.insert(d, (None, d, p));
                        }
                        _ => {}
                    }
                }
            }
        }
        stats.blocks = blocks.len();
        let mut session = JitSession::new()?;
        let mut epilogues = HashMap::new();
        let mut pools = HashMap::new();
        let mut depthwise = HashMap::new();
        let mut quantisers = HashMap::new();
        let mut host_depthwise = std::collections::HashSet::new();
        for &(seg, prog) in segments {
            let last = seg.end.index() - 1;
            for tile in seg.tiles.iter().filter(|t| want(t)) {
                let out = tile.regions[last - seg.first.index()];
                if opts.generate && opts.wire != Compression::None && !out.is_empty() {
                    let channels = prog.output_shape().c;
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        quantisers.entry((channels, out.area()))
                    {
                        let spec = EpilogueSpec {
                            channels,
                            pixels: out.area(),
                            bias: false,
                            act: Act::None,
                            residual: false,
                            wire: opts.wire,
                        };
                        e.insert((session.epilogue(&spec)?, spec));
                        stats.quantisers += 1;
                    }
                }
                for (n, id) in seg.layers().enumerate() {
                    let i = id.index();
                    if tile.regions[n].is_empty() {
                        continue;
                    }
                    let layer = prog.layer(id);
                    if let Some(k) = convs.get(&i).filter(|k| k.is_depthwise()) {
                        let (op, h, w) = tile_geometry(prog, seg, tile, i)?;
                        let c = prog.shape_of(&layer.inputs[0]).c;
                        let Op::Conv2d(conv) = &op else { continue };
                        let Some(spec) = depthwise_spec(conv, c, h, w, k) else {
                            continue;
                        };
                        if opts.host_depthwise && host_dw::applies(&spec) {
                            host_depthwise.insert((i, spec));
                        } else if opts.generate && !depthwise.contains_key(&(i, spec)) {
                            depthwise.insert((i, spec), session.depthwise(&spec)?);
                            stats.depthwise += 1;
                        }
                    } else if !opts.generate {
                        continue;
                    } else if let Some(k) = convs.get(&i) {
                        // Winograd applies bias and activation itself unless a residual is
                        // added.
                        if k.winograd.is_some() && k.residual.is_none() {
                            continue;
                        }
                        // The direct kernel applies them too, and its fallback with a fused
                        // pool runs the host epilogue before pooling.
                        if k.direct.is_some() && k.pool2 {
                            continue;
                        }
                        // The epilogue runs on the chain's output: the pool's, when fused.
                        let out = if k.pool2 {
                            k.last - seg.first.index()
                        } else {
                            n
                        };
                        let pixels = tile.regions[out].area();
                        // The chain ends the segment: its epilogue can quantise the output.
                        let quantising = (opts.wire != Compression::None
                            && k.last == last
                            && tile.regions[out] == tile.regions[last - seg.first.index()])
                        .then_some(opts.wire);
                        for wire in std::iter::once(Compression::None).chain(quantising) {
                            if let std::collections::hash_map::Entry::Vacant(e) =
                                epilogues.entry((i, pixels, wire))
                            {
                                let spec = EpilogueSpec {
                                    channels: layer.shape.c,
                                    pixels,
                                    bias: true,
                                    act: k.act,
                                    residual: k.residual.is_some(),
                                    wire,
                                };
                                e.insert((session.epilogue(&spec)?, spec));
                                if wire == Compression::None {
                                    stats.epilogues += 1;
                                } else {
                                    stats.quantising_epilogues += 1;
                                }
                            }
                        }
                    } else if matches!(layer.op, Op::MaxPool(_)) && !fused_into.contains_key(&i) {
                        let (op, h, w) = tile_geometry(prog, seg, tile, i)?;
                        let c = prog.shape_of(&layer.inputs[0]).c;
                        if let Some(spec) = max_pool_spec(&op, c, h, w)
                            && !pools.contains_key(&(i, spec))
                        {
                            pools.insert((i, spec), session.max_pool(&spec)?);
                            stats.max_pools += 1;
                        }
                    }
                }
            }
        }
        stats.depthwise_host = host_depthwise.len();
        let code = session.finish()?;
        Ok(CompiledKernels {
            convs,
            fused_into,
            epilogues,
            quantisers,
            pools,
            depthwise,
            host_depthwise: opts.host_depthwise,
            blocks,
            band_bytes: opts.band_bytes,
            code,
            stats,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Bytes of prepared weights these kernels hold (packed, transformed, folded): the
    /// largest part of a node's memory besides the plan's own weights.
    pub fn weight_bytes(&self) -> usize {
        self.convs
            .values()
            .map(|k| {
                k.packed.iter().map(PackedA::bytes).sum::<usize>()
                    + k.winograd.as_ref().map_or(0, Winograd::bytes)
                    + match &k.interleaved {
                        Interleaved::None => 0,
                        Interleaved::Pointwise(b) => b.bytes(),
                        Interleaved::Taps(t) => t.len() * size_of::<f32>(),
                    }
                    + (k.depthwise.len() + k.bias.len()) * size_of::<f32>()
            })
            .sum()
    }

    /// Computes `tile` of `seg` (whose program is `prog`) from `input`, like
    /// [`Program::run_tile`].
    pub fn run_tile(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
    ) -> Result<Array3<f32>, EvalError> {
        self.run_tile_profiled(prog, seg, tile, input, None)
    }

    /// [`Self::run_tile`], adding each layer's wall time to `profile` by how it ran.
    pub fn run_tile_profiled(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        profile: Option<&mut Profile>,
    ) -> Result<Array3<f32>, EvalError> {
        let wire = Compression::None;
        match self.run_tile_inner(prog, seg, tile, input, profile, wire)? {
            (WireTile::Exact(t), _) => Ok(t),
            (WireTile::Quantised(_), _) => Err(missing("the exact output")),
        }
    }

    /// `tile`'s output as it goes on the wire with `how`, and the error quantisation made.
    /// With kernels compiled for `how` ([`CompileOptions::wire`]), the epilogue of a segment's
    /// last convolution quantises each channel right after computing it (while it is in L1);
    /// other outputs take a generated quantising pass (the host [`wire::quantise`] for shapes
    /// that were not compiled). The codes equal [`wire::encode`] of [`Self::run_tile`]'s
    /// output.
    pub fn run_tile_wire(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        how: Compression,
    ) -> Result<(WireTile, QuantError), EvalError> {
        self.run_tile_inner(prog, seg, tile, input, None, how)
    }

    fn run_tile_inner(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        input: &Array3<f32>,
        mut profile: Option<&mut Profile>,
        how: Compression,
    ) -> Result<(WireTile, QuantError), EvalError> {
        if (prog.first(), prog.end()) != (seg.first, seg.end)
            || tile.regions.len() != prog.layers().len()
        {
            return Err(missing("a program for this segment"));
        }
        let weights = prog.weights();
        let first = seg.first.index();
        let seg_last = seg.end.index() - 1;
        // The output, quantised by the last convolution's epilogue.
        let mut wired: Option<Wired> = None;
        let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(seg.end.index() - first);
        // The fused chain's result waiting for its last layer.
        // (its last layer, the region the value holds, the value).
        let mut carry: Option<(usize, Region, Array3<f32>)> = None;
        // Values still to be read, by position: recycled as soon as their last consumer in the
        // segment has run, so the next layers reuse buffers that are still in cache (and
        // need no zeroing) instead of allocating while every value of a long segment lives.
        let mut live: Vec<usize> = Vec::new();
        // Inside a block computed over row bands: its last layer, whose value is `carry`.
        let mut block_until: Option<usize> = None;
        for (n, id) in seg.layers().enumerate() {
            let i = id.index();
            let layer = prog.layer(id);
            live.retain(|&j| {
                let last_use = prog.consumers(LayerId((first + j) as u32)).iter().max();
                if last_use.is_some_and(|c| c.index() < i)
                    && let Some(v) = values[j].take()
                {
                    recycle(v);
                    return false;
                }
                true
            });
            live.push(n);
            let region = tile.regions[n];
            if let Some(until) = block_until.filter(|&u| i <= u) {
                let value = if i == until {
                    block_until = None;
                    let (_, have, t) = carry.take().ok_or_else(|| missing(&layer.name))?;
                    Some(match seg.mode {
                        Mode::Halo if have != region => crop(&t, &have, &region),
                        _ => t,
                    })
                } else {
                    None
                };
                values.push(value);
                continue;
            }
            if self.fused_into.contains_key(&i) {
                let value = match carry.take() {
                    Some((last, have, t)) if last == i => Some(match seg.mode {
                        Mode::Halo if have != region => crop(&t, &have, &region),
                        _ => t,
                    }),
                    other => {
                        carry = other;
                        None
                    }
                };
                values.push(value);
                continue;
            }
            if region.is_empty() {
                // Read (zero-sized) by a consumer whose windows lie wholly in its padding.
                values.push(Some(empty(layer.shape.c, &region)));
                continue;
            }
            // The layer's inputs: cropped to what it needs (halo) or whole (FDSP).
            let operand =
                |src: &Source, need: Option<Region>| -> Result<Cow<'_, Array3<f32>>, EvalError> {
                    let (t, have) = match src {
                        Source::Layer(l) if l.index() >= first => {
                            let j = l.index() - first;
                            let t = values[j].as_ref().ok_or_else(|| missing(&layer.name))?;
                            (t, tile.regions[j])
                        }
                        _ => (input, tile.input),
                    };
                    Ok(match need {
                        Some(need) if need != have => Cow::Owned(crop(t, &have, &need)),
                        _ => Cow::Borrowed(t),
                    })
                };
            let op = match seg.mode {
                Mode::Halo => tile_op(&layer.op, &region, prog.shape_of(&layer.inputs[0]))
                    .map_err(|e| EvalError::Parameter {
                        op: "tile",
                        reason: e.0,
                    })?,
                Mode::Fdsp => layer.op.clone(),
            };
            let need_of = |src: &Source| match seg.mode {
                Mode::Halo => Some(input_region(&layer.op, &region, prog.shape_of(src))),
                Mode::Fdsp => None,
            };
            // A fused residual add's other operand, where this tile's add needs it.
            let residual_of = |k: &ConvKernel| match k.residual {
                Some((add, other)) => {
                    let src = &prog.layer(LayerId(add as u32)).inputs[other];
                    let need = match seg.mode {
                        Mode::Halo => Some(tile.regions[add - first]),
                        Mode::Fdsp => None,
                    };
                    operand(src, need).map(Some)
                }
                None => Ok(None),
            };
            let t0 = Instant::now();
            let x = operand(&layer.inputs[0], need_of(&layer.inputs[0]))?;
            if let Some(&(e, d, p)) = self.blocks.get(&i)
                && let Some(block) = self.block_at(prog, seg, tile, (e, d, p), x.dim())
            {
                let kp = &self.convs[&p];
                let residual = residual_of(kp)?;
                let y = run_block(&block, &x, residual.as_deref())?;
                if let Some(p) = profile.as_deref_mut() {
                    let kind = if block::interleaves(&block) {
                        BLOCK_INTERLEAVED
                    } else {
                        BLOCK
                    };
                    *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
                }
                carry = Some((kp.last, tile.regions[p - first], y));
                block_until = Some(kp.last);
                values.push(None);
                continue;
            }
            let kind = match (self.convs.get(&i), &op) {
                (Some(k), _) if k.winograd.is_some() => {
                    "conv winograd F(4x4,3x3) + gemm (host), epilogue fused or jit"
                }
                (Some(k), Op::Conv2d(c))
                    if k.is_depthwise()
                        && self.host_depthwise
                        && depthwise_spec(c, x.dim().0, x.dim().1, x.dim().2, k)
                            .is_some_and(|spec| host_dw::applies(&spec)) =>
                {
                    "conv depthwise 3x3 (host avx2)"
                }
                (Some(k), _) if k.is_depthwise() => "conv depthwise (jit)",
                (Some(k), Op::Conv2d(c))
                    if k.direct.is_some()
                        && tile_ow(c, x.dim().2)
                            .is_some_and(|ow| direct::applies(c, x.dim().0, ow)) =>
                {
                    "conv direct, few input channels (host avx2)"
                }
                (Some(_), _) => "conv im2col + gemm (host) + epilogue (jit)",
                (None, Op::MaxPool(_))
                    if max_pool_spec(&op, x.dim().0, x.dim().1, x.dim().2)
                        .is_some_and(|spec| self.pools.contains_key(&(i, spec))) =>
                {
                    "maxpool (jit)"
                }
                (None, other) => other.kind(),
            };
            let out = if let (Some(k), Op::Conv2d(c)) = (self.convs.get(&i), &op) {
                let residual = residual_of(k)?;
                // A fused pool's output holds the pool's region; otherwise the conv's.
                let have = tile.regions[if k.pool2 { k.last - first } else { n }];
                let quant = (how != Compression::None
                    && k.last == seg_last
                    && have == tile.regions[seg_last - first])
                    .then_some(how);
                let (y, q) = self.conv(i, k, c, &x, residual.as_deref(), quant)?;
                if q.is_some() {
                    wired = q;
                }
                if let Some(p) = profile.as_deref_mut() {
                    *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
                }
                if k.last > i {
                    carry = Some((k.last, have, y));
                    values.push(None);
                    continue;
                }
                y
            } else if let Some(h) = max_pool_spec(&op, x.dim().0, x.dim().1, x.dim().2)
                .and_then(|spec| self.pools.get(&(i, spec)).map(|h| (*h, spec)))
            {
                let (h, spec) = h;
                let (c, xh, xw) = x.dim();
                let x = x.as_standard_layout();
                let xs = x.as_slice().ok_or_else(|| missing(&layer.name))?;
                let pad = match &op {
                    Op::MaxPool(p) => p.padding,
                    _ => Pad2::uniform(0),
                };
                let mut y = overwritten(spec.c * spec.oh * spec.ow);
                if pad.is_zero() {
                    self.code.run_max_pool(h, &spec, xs, &mut y);
                } else {
                    let xp = padded(xs, c, xh, xw, pad, f32::NEG_INFINITY);
                    self.code.run_max_pool(h, &spec, &xp, &mut y);
                    recycle_vec(xp);
                }
                tensor(y, (spec.c, spec.oh, spec.ow)).map_err(|e| EvalError::Parameter {
                    op: "maxpool",
                    reason: e.to_string(),
                })?
            } else {
                let mut rest = Vec::with_capacity(layer.inputs.len());
                for src in &layer.inputs[1..] {
                    rest.push(operand(src, need_of(src))?);
                }
                let mut refs: Vec<&Array3<f32>> = vec![&x];
                refs.extend(rest.iter().map(|r| &**r));
                eval_op(&op, &layer.name, &refs, weights)?
            };
            if let Some(p) = profile.as_deref_mut() {
                *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
            }
            values.push(Some(out));
        }
        let out = values.pop().flatten();
        for v in values.into_iter().flatten() {
            recycle(v);
        }
        let out = out.ok_or_else(|| missing("the segment's output"))?;
        if let Some((q, e)) = wired {
            recycle(out);
            return Ok((WireTile::Quantised(q), e));
        }
        Ok(self.quantise(out, how))
    }

    /// Block `(expand, dw, project)` as this tile runs it on an input of `dim` (the
    /// expansion's, or the depthwise conv's, cropped to what it reads), if the host kernels
    /// compute it: in halo tiles, the expansion's region must be exactly what the
    /// depthwise conv reads, and the projection's output the depthwise region.
    fn block_at(
        &self,
        prog: &Program,
        seg: &Segment,
        tile: &Tile,
        (e, d, p): (Option<usize>, usize, usize),
        (cin, h, w): (usize, usize, usize),
    ) -> Option<Block<'_>> {
        let first = seg.first.index();
        let (kd, kp) = (self.convs.get(&d)?, self.convs.get(&p)?);
        let ke = match e {
            Some(e) => Some((e, self.convs.get(&e)?)),
            None => None,
        };
        let hidden = kd.groups;
        if cin != ke.map_or(hidden, |(_, k)| k.cin_g) || !self.host_depthwise {
            return None;
        }
        if let Some((e, ke)) = ke
            && seg.mode == Mode::Halo
        {
            let dl = prog.get(d)?;
            let need = input_region(
                &dl.op,
                &tile.regions[d - first],
                prog.shape_of(&dl.inputs[0]),
            );
            let expanded = tile.regions[e - first];
            if need != expanded || tile.regions[ke.last - first] != expanded {
                return None;
            }
        }
        let (op, dh, dw) = tile_geometry(prog, seg, tile, d).ok()?;
        let Op::Conv2d(c) = &op else { return None };
        let spec = depthwise_spec(c, hidden, h, w, kd)?;
        let out = tile.regions[p - first];
        if (dh, dw) != (h, w) || (out.rows(), out.cols()) != (spec.oh, spec.ow) {
            return None;
        }
        let expand = match ke {
            Some((_, k)) => Some(k.as_pointwise()?),
            None => None,
        };
        let b = Block {
            expand,
            dw: spec,
            dw_weights: &kd.depthwise,
            dw_taps: match &kd.interleaved {
                Interleaved::Taps(t) => Some(t),
                _ => None,
            },
            dw_bias: &kd.bias,
            project: kp.as_pointwise()?,
            rows: block::band_rows(&spec, self.band_bytes),
        };
        block::applies(&b).then_some(b)
    }

    /// `t` for the wire: on the generated quantising pass when one was compiled for its
    /// shape, else on the host.
    fn quantise(&self, t: Array3<f32>, how: Compression) -> (WireTile, QuantError) {
        let (c, h, w) = t.dim();
        let Some((f, spec)) = self
            .quantisers
            .get(&(c, h * w))
            .filter(|(_, spec)| spec.wire == how)
        else {
            return wire::encode(t, how);
        };
        let mut t = t;
        if !t.is_standard_layout() {
            t = t.as_standard_layout().into_owned();
        }
        let y = t.as_slice_mut().expect("standard layout");
        let (q, e) = quantised(&self.code, *f, spec, (c, h, w), y, &[], None);
        recycle(t);
        (WireTile::Quantised(q), e)
    }

    /// Runs the tail program `tail` on the coordinator's thread from `live` (the last
    /// segment's output): fully connected layers on the host GEMV straight from the plan's
    /// weights, everything else on the plain operators.
    pub fn run_tail(
        tail: &Program,
        live: &Array3<f32>,
        mut profile: Option<&mut Profile>,
    ) -> Result<Array3<f32>, EvalError> {
        let weights = tail.weights();
        tail.run_with(live, |layer, inputs| {
            let t0 = Instant::now();
            let (kind, out) = match (&layer.op, inputs) {
                (Op::Linear { out_features, bias }, [x]) => (
                    "tail: linear (host gemv)",
                    linear(&layer.name, *out_features, *bias, x, weights),
                ),
                _ => (
                    "tail: other layers (reference)",
                    eval_op(&layer.op, &layer.name, inputs, weights),
                ),
            };
            if let Some(p) = profile.as_deref_mut() {
                *p.entry(kind).or_default() += t0.elapsed().as_secs_f64() * 1e3;
            }
            out
        })
    }

    fn conv(
        &self,
        i: usize,
        k: &ConvKernel,
        c: &Conv2d,
        x: &Array3<f32>,
        residual: Option<&Array3<f32>>,
        quant: Option<Compression>,
    ) -> Result<(Array3<f32>, Option<Wired>), EvalError> {
        let bad = |reason: &str| EvalError::Parameter {
            op: "conv",
            reason: reason.into(),
        };
        let (cin, h, w) = x.dim();
        if cin != k.cin_g * k.groups {
            return Err(bad("input channels differ from the compiled kernel's"));
        }
        let span = |len: usize, pb: usize, pe: usize, kk: usize, s: usize, d: usize| {
            let padded = len + pb + pe;
            let sp = d * (kk - 1) + 1;
            (padded >= sp && s > 0).then(|| (padded - sp) / s + 1)
        };
        let p = c.padding;
        let (Some(oh), Some(ow)) = (
            span(h, p.top, p.bottom, c.kernel.h, c.stride.h, c.dilation.h),
            span(w, p.left, p.right, c.kernel.w, c.stride.w, c.dilation.w),
        ) else {
            return Err(bad("the padded input is smaller than the kernel"));
        };
        let x = x.as_standard_layout();
        let xs = x.as_slice().ok_or_else(|| bad("layout"))?;
        let cout = k.cout_g * k.groups;
        let n = oh * ow;
        // The output's size: pooled 2×2 when a pool is fused.
        let (yh, yw) = if k.pool2 { (oh / 2, ow / 2) } else { (oh, ow) };
        let len = cout * yh * yw;
        let spec = depthwise_spec(c, cin, h, w, k);
        let host = spec.filter(|s| self.host_depthwise && host_dw::applies(s));
        let jit = spec.and_then(|spec| Some((*self.depthwise.get(&(i, spec))?, spec)));
        // Every path but the host depthwise loop (which accumulates into y) writes all of y.
        let mut buf = if k.is_depthwise() && host.is_none() && jit.is_none() {
            zeroed(len)
        } else {
            overwritten(len)
        };
        let y = &mut buf[..len];
        let geo = Geo {
            h,
            w,
            oh,
            ow,
            c: c.clone(),
        };
        let res = match residual {
            Some(r) => {
                if r.dim() != (cout, oh, ow) {
                    return Err(bad("residual operand has the wrong shape"));
                }
                Some(r.as_standard_layout())
            }
            None => None,
        };
        let rs = res.as_ref().and_then(|r| r.as_slice());
        if let Some(wg) = &k.winograd {
            let shape = winograd::Shape {
                h,
                w,
                oh,
                ow,
                pad_top: p.top,
                pad_left: p.left,
            };
            let fused = k.residual.is_none().then_some(winograd::Epilogue {
                bias: &k.bias,
                act: k.act,
            });
            wg.conv(&shape, xs, y, k.pool2, fused);
            if fused.is_some() {
                let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
                return Ok((t, None));
            }
        } else if let Some(spec) = host {
            // The kernel zeroes its scratch itself.
            let mut scratch = overwritten(host_dw::scratch_len(&spec));
            let plane = spec.h * spec.w;
            host_dw::run(
                &spec,
                xs,
                plane,
                None,
                &k.depthwise,
                &k.bias,
                rs,
                y,
                &mut scratch,
            );
            recycle_vec(scratch);
            let t = tensor(buf, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
            return Ok((t, None));
        } else if let Some((f, spec)) = jit {
            // The kernel zeroes its scratch itself.
            let mut scratch = overwritten(spec.scratch_len());
            self.code
                .run_depthwise(f, &spec, xs, &k.depthwise, &k.bias, rs, y, &mut scratch);
            recycle_vec(scratch);
            let t = tensor(buf, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
            return Ok((t, None));
        } else if k.is_depthwise() {
            depthwise(&geo, xs, &k.depthwise, y, cout);
        } else if let Some(wd) = k.direct.as_ref().filter(|_| direct::applies(c, cin, ow)) {
            let shape = direct::Shape {
                cin,
                h,
                w,
                oh,
                ow,
                pad: [p.top, p.left, p.bottom, p.right],
                pool: k.pool2,
            };
            let mut scratch = overwritten(direct::scratch_len(c, &shape));
            direct::run(c, &shape, xs, wd, &k.bias, k.act, y, &mut scratch);
            recycle_vec(scratch);
            let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
            return Ok((t, None));
        } else if k.pool2 {
            // A direct conv's tile too narrow for the kernel: the GEMM at full resolution,
            // bias and activation, then the fused pool.
            let mut full = overwritten(cout * n);
            let pa = k.packed.first().ok_or_else(|| bad("no packed weights"))?;
            let im2col = Im2col { g: &geo, x: xs };
            gemm_packed_with(pa, &im2col, n, &mut full[..cout * n], n, false);
            epilogue_host(&mut full[..cout * n], n, &k.bias, None, k.act);
            let full = tensor(full, (cout, oh, ow)).map_err(|e| bad(&e.to_string()))?;
            let pool = Pool2d {
                kernel: Hw { h: 2, w: 2 },
                stride: Hw { h: 2, w: 2 },
                padding: Pad2::uniform(0),
                ceil_mode: false,
                count_include_pad: false,
            };
            let pooled = eval::max_pool(&pool, &full)?;
            recycle(full);
            recycle_vec(buf);
            return Ok((pooled, None));
        } else {
            let kdim = k.cin_g * c.kernel.h * c.kernel.w;
            let direct = c.kernel.h == 1
                && c.kernel.w == 1
                && c.stride.h == 1
                && c.stride.w == 1
                && p.is_zero();
            debug_assert_eq!(kdim, k.packed.first().map_or(0, |p| p.k));
            for (gi, pa) in k.packed.iter().enumerate() {
                let xg = &xs[gi * k.cin_g * h * w..(gi + 1) * k.cin_g * h * w];
                let yg = &mut y[gi * k.cout_g * n..(gi + 1) * k.cout_g * n];
                if direct {
                    gemm_packed(pa, xg, n, n, yg, n, false);
                } else {
                    gemm_packed_with(pa, &Im2col { g: &geo, x: xg }, n, yg, n, false);
                }
            }
        }
        let pixels = yh * yw;
        let mut quantised = None;
        match quant.and_then(|how| self.epilogues.get(&(i, pixels, how))) {
            Some((h, spec)) => {
                let dim = (cout, yh, yw);
                quantised = Some(self::quantised(&self.code, *h, spec, dim, y, &k.bias, rs));
            }
            None => match self.epilogues.get(&(i, pixels, Compression::None)) {
                Some((h, spec)) => self.code.run_epilogue(*h, spec, y, &k.bias, rs),
                None => epilogue_host(y, pixels, &k.bias, rs, k.act),
            },
        }
        let t = tensor(buf, (cout, yh, yw)).map_err(|e| bad(&e.to_string()))?;
        Ok((t, quantised))
    }
}

/// The profile's name for blocks computed over row bands.
const BLOCK: &str = "inverted residual block over row bands (host gemm + depthwise avx2)";
/// The same, channel-interleaved inside.
const BLOCK_INTERLEAVED: &str =
    "inverted residual block over row bands, channel-interleaved (host gemm + depthwise avx2)";

/// Runs block `b` on `x` (`[cin, h, w]`) with an optional residual for the projection.
fn run_block(
    b: &Block,
    x: &Array3<f32>,
    residual: Option<&Array3<f32>>,
) -> Result<Array3<f32>, EvalError> {
    let bad = |reason: &str| EvalError::Parameter {
        op: "block",
        reason: reason.into(),
    };
    let x = x.as_standard_layout();
    let xs = x.as_slice().ok_or_else(|| bad("layout"))?;
    let dim = (b.project.weights.m, b.dw.oh, b.dw.ow);
    let res = match residual {
        Some(r) if r.dim() != dim => return Err(bad("residual operand has the wrong shape")),
        Some(r) => Some(r.as_standard_layout()),
        None => None,
    };
    let rs = res.as_ref().and_then(|r| r.as_slice());
    let len = dim.0 * dim.1 * dim.2;
    let mut y = overwritten(len);
    let mut scratch = block::scratch_lens(b).map(overwritten);
    let [s0, s1, s2, s3] = &mut scratch;
    block::run(b, xs, rs, &mut y[..len], [s0, s1, s2, s3]);
    scratch.into_iter().for_each(recycle_vec);
    tensor(y, dim).map_err(|e| bad(&e.to_string()))
}

/// A tile output quantised by its last epilogue, and the error that made.
type Wired = (Quantised, QuantError);

/// Runs the quantising epilogue `h` (compiled from `spec`) on `y`, a `dim` tensor: the
/// codes, each channel's `[lo, step]` from the kernel's stats, and the summed error.
fn quantised(
    code: &JitCode,
    h: Handle,
    spec: &EpilogueSpec,
    dim: (usize, usize, usize),
    y: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
) -> Wired {
    let mut q = Quantised::zeroed(spec.wire, dim);
    let mut stats = vec![[0.0; 4]; dim.0];
    code.run_quantising(h, spec, y, bias, residual, &mut q.codes, &mut stats);
    let mut e = QuantError::default();
    for (r, s) in q.ranges.iter_mut().zip(&stats) {
        *r = [s[0], s[1]];
        e.add(QuantError {
            err: f64::from(s[2]),
            sq: f64::from(s[3]),
        });
    }
    (q, e)
}

// Intermediate tensors of a tile are recycled per thread: large allocations come from mmap in
// glibc, and a fresh one per layer cost page faults on every run (MobileNetV2: ~40 % of its
// time on one core).
thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many buffers wait for reuse per thread.
const POOL: usize = 16;

// A recycled buffer keeps its full length: a tensor made from it by [`tensor`] shows only
// its first values, so the buffer comes back at full length and its next use needs no
// zeroing (a shorter length would have to be zero-filled again when it grows).

/// A vector whose first `len` floats are zero (it may be longer), reusing a recycled
/// buffer when one is large enough.
fn zeroed(len: usize) -> Vec<f32> {
    let mut v = overwritten(len);
    v[..len].fill(0.0);
    v
}

/// A vector of at least `len` floats for a kernel that writes the first `len`: a recycled
/// buffer keeps its old values, saving a memset pass over the output.
fn overwritten(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0.0; len],
    }
}

/// `v[..c·h·w]` as a `[c, h, w]` tensor that owns all of `v` (the rest stays hidden), so
/// [`recycle`] gets the buffer back at full length.
fn tensor(v: Vec<f32>, (c, h, w): (usize, usize, usize)) -> Result<Array3<f32>, ShapeError> {
    let full = v.len();
    Array3::from_shape_vec((1, 1, full), v)?
        .slice_move(s![.., .., ..c * h * w])
        .into_shape_with_order((c, h, w))
}

/// The smallest recycled buffer of at least `len` floats' capacity, preferring one that
/// already holds `len` values (so [`overwritten`] has no growth to zero).
fn take(len: usize) -> Option<Vec<f32>> {
    BUFFERS.with_borrow_mut(|pool| {
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| (v.len() < len, v.capacity()))
            .map(|(i, _)| i)?;
        Some(pool.swap_remove(best))
    })
}

fn recycle(t: Array3<f32>) {
    recycle_vec(t.into_raw_vec_and_offset().0);
}

fn recycle_vec(v: Vec<f32>) {
    BUFFERS.with_borrow_mut(|pool| {
        if pool.len() < POOL {
            pool.push(v);
        } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.capacity())
            && smallest.capacity() < v.capacity()
        {
            *smallest = v;
        }
    });
}

fn missing(what: &str) -> EvalError {
    EvalError::Parameter {
        op: "tile",
        reason: format!("{what}: an input region was not computed"),
    }
}

struct Geo {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    c: Conv2d,
}

/// The im2col matrix of a convolution's input, never materialised: B`[(ci, ky, kx), (oy, ox)]`
/// = the padded input at `(oy·s + ky·d, ox·s + kx·d)`, packed block by block for the GEMM.
struct Im2col<'a> {
    g: &'a Geo,
    x: &'a [f32],
}

impl PackB for Im2col<'_> {
    fn pack(&self, k0: usize, kc: usize, n0: usize, nc: usize, out: &mut [f32]) {
        let (g, c) = (self.g, &self.g.c);
        let (kh, kw) = (c.kernel.h, c.kernel.w);
        let (sh, sw) = (c.stride.h, c.stride.w);
        let (h, w) = (g.h as isize, g.w as isize);
        // Per B row (tap): its input plane and the offsets of its window position.
        let taps: Vec<(usize, isize, isize)> = (k0..k0 + kc)
            .map(|row| {
                let (ci, ky, kx) = (row / (kh * kw), row / kw % kh, row % kw);
                let dy = (ky * c.dilation.h) as isize - c.padding.top as isize;
                let dx = (kx * c.dilation.w) as isize - c.padding.left as isize;
                (ci * g.h * g.w, dy, dx)
            })
            .collect();
        for s in 0..nc.div_ceil(NR) {
            let c0 = n0 + s * NR;
            let width = NR.min(n0 + nc - c0);
            // The strip's columns as runs along output rows: (first lane, oy, ox, length).
            let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
            let mut count = 0;
            let mut col = c0;
            while col < c0 + width {
                let (oy, ox) = (col / g.ow, col % g.ow);
                let len = (g.ow - ox).min(c0 + width - col);
                runs[count] = (col - c0, oy, ox, len);
                count += 1;
                col += len;
            }
            let strip = &mut out[s * NR * kc..(s + 1) * NR * kc];
            for (dst, &(plane, dy, dx)) in strip.chunks_exact_mut(NR).zip(&taps) {
                for &(j0, oy, ox, len) in &runs[..count] {
                    let iy = (oy * sh) as isize + dy;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let row = &self.x[plane + iy as usize * g.w..][..g.w];
                    let ix0 = (ox * sw) as isize + dx;
                    if sw == 1 {
                        let lo = (-ix0).clamp(0, len as isize);
                        let hi = (w - ix0).clamp(lo, len as isize);
                        let (lo, hi) = (lo as usize, hi as usize);
                        if hi > lo {
                            let from = (ix0 + lo as isize) as usize;
                            dst[j0 + lo..j0 + hi].copy_from_slice(&row[from..from + hi - lo]);
                        }
                    } else {
                        for t in 0..len {
                            let ix = ix0 + (t * sw) as isize;
                            if ix >= 0 && ix < w {
                                dst[j0 + t] = row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise convolution (one input and one output channel per group) for tile shapes with
/// no generated kernel (see `CompiledKernels::compile`), with fused multiply-adds in tap
/// order like the generated kernel and the reference's GEMM, direct: each
/// channel's plane is copied once into a zero-padded buffer, then every output row
/// accumulates its taps while it stays in L1.
fn depthwise(g: &Geo, x: &[f32], wts: &[f32], y: &mut [f32], channels: usize) {
    let c = &g.c;
    let (kh, kw) = (c.kernel.h, c.kernel.w);
    let (sh, sw, dh, dw) = (c.stride.h, c.stride.w, c.dilation.h, c.dilation.w);
    let p = c.padding;
    let (ph, pw) = (g.h + p.top + p.bottom, g.w + p.left + p.right);
    let n = g.oh * g.ow;
    let mut padded = vec![0.0f32; ph * pw];
    let mut wide = Vec::new();
    for ch in 0..channels {
        let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        // A tile may read no input columns at all (its window lies wholly in the padding).
        if g.w > 0 {
            for (r, src) in plane.chunks_exact(g.w).enumerate() {
                let row = (r + p.top) * pw + p.left;
                padded[row..row + g.w].copy_from_slice(src);
            }
        }
        let taps = &wts[ch * kh * kw..(ch + 1) * kh * kw];
        let out = &mut y[ch * n..(ch + 1) * n];
        if sw == 1 && sh == 1 {
            // Stride 1: compute on the padded width, so each tap is one long axpy over the
            // whole plane (rows of 7–14 pixels are too short to vectorise one by one), then
            // keep the `ow` valid columns of each row.
            let len = (g.oh - 1) * pw + g.ow;
            wide.clear();
            wide.resize(len, 0.0);
            for ky in 0..kh {
                for kx in 0..kw {
                    let wv = taps[ky * kw + kx];
                    let src = &padded[ky * dh * pw + kx * dw..][..len];
                    for (d, s) in wide.iter_mut().zip(src) {
                        *d = s.mul_add(wv, *d);
                    }
                }
            }
            for (oy, dst) in out.chunks_exact_mut(g.ow).enumerate() {
                dst.copy_from_slice(&wide[oy * pw..oy * pw + g.ow]);
            }
            continue;
        }
        for (oy, dst) in out.chunks_exact_mut(g.ow).enumerate() {
            for ky in 0..kh {
                let row = &padded[(oy * sh + ky * dh) * pw..][..pw];
                for kx in 0..kw {
                    let wv = taps[ky * kw + kx];
                    let src = &row[kx * dw..];
                    for (d, s) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                        *d = s.mul_add(wv, *d);
                    }
                }
            }
        }
    }
}

/// A fully connected layer at batch 1 on the host GEMV, straight from the plan's weights
/// (row-major `[out, in]`: nothing to prepare). Weights it cannot use as they are
/// (non-contiguous, wrong shape) go to the reference interpreter, which reports the errors.
fn linear(
    name: &str,
    out: usize,
    bias: bool,
    x: &Array3<f32>,
    weights: &Weights,
) -> Result<Array3<f32>, EvalError> {
    let op = Op::Linear {
        out_features: out,
        bias,
    };
    let xc = x.as_standard_layout();
    let xs = xc.as_slice().ok_or_else(|| missing(name))?;
    let w = weights.get(name, WeightRole::Weight);
    let b = if bias {
        vector(weights, name, WeightRole::Bias, out)
    } else {
        Some(vec![0.0; out])
    };
    match (
        w.filter(|w| w.shape() == [out, xs.len()])
            .and_then(|w| w.as_slice()),
        b,
    ) {
        (Some(w), Some(b)) => {
            let mut y = vec![0.0; out];
            gemv(w, xs.len(), xs, &mut y);
            y.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            Ok(
                Array3::from_shape_vec((out, 1, 1), y).map_err(|e| EvalError::Parameter {
                    op: "linear",
                    reason: e.to_string(),
                })?,
            )
        }
        _ => eval_op(&op, name, &[x], weights),
    }
}

/// The epilogue in plain Rust, for shapes no JIT function was compiled for.
fn epilogue_host(y: &mut [f32], n: usize, bias: &[f32], residual: Option<&[f32]>, act: Act) {
    for (ch, row) in y.chunks_mut(n).enumerate() {
        bias_act(
            row,
            bias[ch],
            residual.map(|r| &r[ch * n..(ch + 1) * n]),
            act,
        );
    }
}
