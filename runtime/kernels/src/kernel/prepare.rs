//! Preparing a program's convolutions once: weights packed for the host GEMM, Winograd-
//! transformed or kept for the direct and depthwise kernels; what follows each convolution
//! fused into it (a folded batch norm's identity, a residual add, an activation, a 2×2 max
//! pool); and the inverted-residual blocks that run over row bands.

use std::collections::HashMap;

use adcnn_core::net::{LayerId, Source};
use adcnn_core::ops::{Op, Shape, WeightRole};
use adcnn_core::program::Program;
use adcnn_core::weights::Weights;

use crate::act::Act;
use crate::block::Pointwise;
use crate::depthwise as host_dw;
use crate::direct;
use crate::gemm::{Isa, PackedA, PackedB, isa};
use crate::winograd::{self, Winograd};

/// A convolution with what follows it folded or fused.
#[derive(Debug)]
pub(super) struct ConvKernel {
    pub(super) cin_g: usize,
    pub(super) cout_g: usize,
    pub(super) groups: usize,
    /// Per group: weights `[cout_g, cin_g·kh·kw]`, packed. Empty for depthwise.
    pub(super) packed: Vec<PackedA>,
    /// Depthwise only: `[c, kh·kw]`.
    pub(super) depthwise: Vec<f32>,
    /// In an inverted-residual block run channel-interleaved (`block.rs`): a 1×1 conv's
    /// weights transposed, or a depthwise conv's tap by tap (`[9, c]`).
    pub(super) interleaved: Interleaved,
    /// Stride-1/2 convolutions with few input channels (`direct.rs`): `[cout, cin·kh·kw]`,
    /// for tiles the direct kernel takes (`packed` serves the others).
    pub(super) direct: Option<Vec<f32>>,
    /// 3×3 stride-1 convolutions: Winograd F(4×4, 3×3) weights (then `packed` is empty).
    pub(super) winograd: Option<Winograd>,
    /// A following 2×2 stride-2 max pool taken inside the Winograd output tiles (then the
    /// epilogue runs on the pooled values: bias and the monotone activations commute with
    /// max).
    pub(super) pool2: bool,
    pub(super) bias: Vec<f32>,
    pub(super) act: Act,
    /// The fused `add` layer and the index (0 or 1) of its other operand, if any.
    pub(super) residual: Option<(LayerId, usize)>,
    /// The last layer of the fused chain (conv itself when nothing is fused).
    pub(super) last: LayerId,
}

/// A block conv's weights for the channel-interleaved path.
#[derive(Debug, Default)]
pub(super) enum Interleaved {
    #[default]
    None,
    Pointwise(PackedB),
    Taps(Vec<f32>),
}

impl ConvKernel {
    /// One input and one output channel per group (no packed GEMM weights, no Winograd).
    pub(super) fn is_depthwise(&self) -> bool {
        self.packed.is_empty() && self.winograd.is_none()
    }

    /// Its GEMM weights, bias and activation, for a block (one group only).
    pub(super) fn as_pointwise(&self) -> Option<Pointwise<'_>> {
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

/// Whether layer `id` reads only layer `from`, and is its only reader.
pub(super) fn single_input(prog: &Program, id: usize, from: usize) -> bool {
    prog.get(id)
        .is_some_and(|l| l.inputs == [Source::Layer(LayerId(from as u32))])
        && prog.consumers(LayerId(from as u32)).len() == 1
}

pub(super) fn act_of(op: &Op) -> Option<Act> {
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

pub(super) fn vector(
    weights: &Weights,
    layer: &str,
    role: WeightRole,
    n: usize,
) -> Option<Vec<f32>> {
    let t = weights.get(layer, role)?;
    (t.shape() == [n]).then(|| t.iter().copied().collect())
}

/// Prepares conv `i` of a program, or `None` to leave it to the plain operator.
/// `winograd`: whether it runs as Winograd F(4×4, 3×3) (see [`winograd_pays`]); `direct`:
/// whether it may run on the direct kernel.
pub(super) fn prepare_conv(
    prog: &Program,
    i: usize,
    in_shape: Shape,
    winograd: bool,
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
        // Not a broadcast add: the other operand has the convolution's shape.
        if let Some(k) = next.inputs.iter().position(|s| *s == me)
            && next.inputs[1 - k] != me
            && prog.shape_of(&next.inputs[1 - k]) == next.shape
            && prog.layer(LayerId(last as u32)).shape == next.shape
        {
            residual = Some((LayerId((last + 1) as u32), 1 - k));
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
    let winograd = winograd.then(|| Winograd::new(&w, cout, cin));
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
        last: LayerId(last as u32),
    })
}

/// Whether conv `i` is a 1×1 stride-1 unpadded convolution on the host GEMM with nothing
/// but bias, folded batch norm, residual and activation fused.
pub(super) fn pointwise(prog: &Program, i: usize, k: &ConvKernel) -> bool {
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

/// The convolutions of an inverted-residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockConvs {
    /// The 1×1 expansion, if the block has one.
    pub(super) expand: Option<LayerId>,
    /// The 3×3 depthwise convolution.
    pub(super) dw: LayerId,
    /// The 1×1 projection.
    pub(super) project: LayerId,
}

/// The convolutions of the inverted-residual block that starts at conv `i` of the program,
/// if one does: a 1×1 expansion (no residual; or none, when `i` is the depthwise conv), a
/// 3×3 stride-1/2 depthwise conv (no residual) reading only it, a 1×1 projection reading
/// only that. Whether a tile's shapes fit the host depthwise kernel is checked when it runs.
pub(super) fn inverted_residual(
    prog: &Program,
    convs: &HashMap<LayerId, ConvKernel>,
    i: LayerId,
) -> Option<BlockConvs> {
    let end = prog.end();
    let first = convs.get(&i)?;
    let (expand, d) = if pointwise(prog, i.index(), first) && first.residual.is_none() {
        (Some(i), first.last.next())
    } else {
        (None, i)
    };
    let dk = convs.get(&d).filter(|k| {
        k.is_depthwise()
            && k.residual.is_none()
            && d < end
            && (expand.is_none() || single_input(prog, d.index(), d.index() - 1))
    })?;
    let Op::Conv2d(c) = &prog.get(d.index())?.op else {
        return None;
    };
    let strides = [(1, 1), (2, 2)];
    let three = (c.kernel.h, c.kernel.w, c.dilation.h, c.dilation.w) == (3, 3, 1, 1);
    if !three || !strides.contains(&(c.stride.h, c.stride.w)) {
        return None;
    }
    let p = dk.last.next();
    convs.get(&p).filter(|k| {
        p < end && pointwise(prog, p.index(), k) && single_input(prog, p.index(), dk.last.index())
    })?;
    Some(BlockConvs {
        expand,
        dw: d,
        project: p,
    })
}

/// Prepares the weights of block `b` for the channel-interleaved path, when its hidden
/// channels come in whole groups of 8 (returns whether it did).
pub(super) fn interleave(convs: &mut HashMap<LayerId, ConvKernel>, b: BlockConvs) -> bool {
    let Some(hidden) = convs.get(&b.dw).map(|k| k.groups) else {
        return false;
    };
    if !hidden.is_multiple_of(8) {
        return false;
    }
    for i in b.expand.into_iter().chain([b.project]) {
        if let Some(k) = convs.get_mut(&i)
            && let Some(a) = k.packed.first()
        {
            k.interleaved = Interleaved::Pointwise(PackedB::transposed(a));
        }
    }
    if let Some(k) = convs.get_mut(&b.dw) {
        k.interleaved = Interleaved::Taps(host_dw::taps_by_channel(&k.depthwise, hidden));
    }
    true
}

/// Whether layer `i` of `prog` is a convolution that Winograd F(4×4, 3×3) computes faster
/// than the GEMM when its largest output tile is `largest` (`winograd::applies`).
pub(super) fn winograd_pays(prog: &Program, i: usize, largest: (usize, usize)) -> bool {
    let Some(layer) = prog.get(i) else {
        return false;
    };
    let Op::Conv2d(c) = &layer.op else {
        return false;
    };
    let cin = prog.shape_of(&layer.inputs[0]).c;
    winograd::applies(c, cin, largest.0, largest.1)
}

/// A segment's convolutions prepared: packed, transformed, what each one fuses, and its
/// inverted-residual blocks. Shared (through the compile cache) by the nodes of one process
/// that prepare the same program the same way.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    pub(super) convs: HashMap<LayerId, ConvKernel>,
    /// Layer → the conv it is fused into.
    pub(super) fused_into: HashMap<LayerId, LayerId>,
    /// Inverted-residual blocks by their first conv.
    pub(super) blocks: HashMap<LayerId, BlockConvs>,
}

/// How a segment's convolutions are prepared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Preparation {
    /// Per layer of the program: whether it runs as Winograd.
    pub(super) winograd: Vec<bool>,
    /// Stems may run on the direct kernel.
    pub(super) direct: bool,
    /// Inverted-residual blocks run over row bands (the CPU has the host kernels).
    pub(super) blocks: bool,
    /// Blocks with whole groups of 8 hidden channels run channel-interleaved.
    pub(super) interleave: bool,
}

/// Prepares every convolution of `prog` (and the blocks they form) as `how` says.
pub(super) fn prepare_segment(prog: &Program, how: &Preparation) -> Prepared {
    let mut p = Prepared::default();
    let first = prog.first().index();
    let end = prog.end().index();
    let mut i = first;
    while i < end {
        let layer = &prog.layers()[i - first];
        let in_shape = prog.shape_of(&layer.inputs[0]);
        let winograd = how.winograd.get(i - first).copied().unwrap_or(false);
        if let Some(k) = prepare_conv(prog, i, in_shape, winograd, how.direct) {
            let id = LayerId(i as u32);
            for j in i + 1..=k.last.index() {
                p.fused_into.insert(LayerId(j as u32), id);
            }
            let next = k.last.index() + 1;
            p.convs.insert(id, k);
            i = next;
        } else {
            i += 1;
        }
    }
    if how.blocks {
        // A depthwise conv that ends a block with an expansion starts no block of its own.
        let mut taken = std::collections::HashSet::new();
        for i in (first..end).map(|i| LayerId(i as u32)) {
            match inverted_residual(prog, &p.convs, i) {
                Some(
                    b @ BlockConvs {
                        expand: Some(e), ..
                    },
                ) => {
                    taken.insert(b.dw);
                    p.blocks.insert(e, b);
                    if how.interleave {
                        interleave(&mut p.convs, b);
                    }
                }
                Some(b) if !taken.contains(&b.dw) => {
                    p.blocks.insert(b.dw, b);
                }
                _ => {}
            }
        }
    }
    p
}
