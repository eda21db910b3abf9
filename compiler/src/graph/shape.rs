//! Shape inference and per-layer figures.

use crate::diag::{Diagnostic, Diagnostics};
use crate::dsl::network::LayerSpec;
use adcnn_core::ops::{Hw, Op, Shape, ShapeError, WeightRole};

/// The output shape of `op` on `inputs`, or a diagnostic at the layer. Fills in what the
/// DSL leaves to the graph (a depthwise convolution's channel count); the checks themselves
/// are [`Op::output_shape`]'s, the one shape inference the plan decoder also runs.
pub fn infer(
    op: &mut Op,
    inputs: &[Shape],
    layer: &LayerSpec,
    diags: &mut Diagnostics,
) -> Option<Shape> {
    let x = inputs[0];
    if let Op::Conv2d(c) = op
        && c.groups == 0
    {
        c.groups = x.c;
        c.out_channels = x.c;
    }
    let e = match op.output_shape(inputs) {
        Ok(s) => return Some(s),
        Err(e) => e,
    };
    let name = &layer.name;
    let input_label = format!("input is {x}");
    let (message, label, help): (String, String, Option<&str>) = match &e {
        ShapeError::Groups { cin, cout, groups } => (
            format!(
                "layer `{name}`: {cin} input and {cout} output channels cannot be split into {groups} groups"
            ),
            input_label,
            Some("both channel counts must be multiples of `g`"),
        ),
        ShapeError::ConvWindow { .. } | ShapeError::PoolWindow { .. } | ShapeError::NotFlat(_) => (
            format!("layer `{name}`: {e}"),
            input_label,
            match e {
                ShapeError::ConvWindow { .. } => Some(
                    "use a smaller kernel, more padding, or fewer down-sampling layers before this one",
                ),
                ShapeError::NotFlat(_) => Some("add `flatten` (or `global_avgpool`) before it"),
                _ => None,
            },
        ),
        ShapeError::Broadcast { verb, .. } => (
            format!("layer `{name}` {e}"),
            shapes_label(inputs),
            Some(if *verb == "adds" {
                "each axis of the inputs must match or be 1 (a `[C, 1, 1]` input is one value per \
                 channel); a strided branch needs a matching downsample"
            } else {
                "each axis of the inputs must match or be 1 (a `[C, 1, 1]` input is one value per \
                 channel)"
            }),
        ),
        ShapeError::ConcatSizes(..) => (
            format!("layer `{name}` {e}"),
            shapes_label(inputs),
            Some("`concat` joins channels; the inputs' H and W must match"),
        ),
        ShapeError::Arity { .. } | ShapeError::Parameter(_) => {
            (format!("layer `{name}`: {e}"), input_label, None)
        }
    };
    let mut d = Diagnostic::error(message).at(&layer.span, label);
    if let Some(h) = help {
        d = d.help(h);
    }
    diags.push(d);
    None
}

fn shapes_label(inputs: &[Shape]) -> String {
    format!(
        "inputs are {}",
        inputs
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Cost and geometry figures of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct LayerStats {
    /// Floating-point operations, FLOP = 2 × multiply-accumulate for conv and linear.
    pub flops: u64,
    pub params: u64,
    pub weight_bytes: u64,
    /// Bytes of the output activation (f32).
    pub output_bytes: u64,
    /// Receptive field and cumulative stride with respect to the network input, for layers
    /// whose output pixels still correspond to places in the input (the spatial head).
    pub receptive: Option<Receptive>,
}

/// How much of the input one output pixel sees, and how far apart neighbouring output
/// pixels are in input pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receptive {
    pub field: Hw,
    pub stride: Hw,
}

/// FLOPs, parameters, bytes and receptive field of a shape-checked layer.
pub fn stats(op: &Op, inputs: &[Shape], out: Shape, receptive: &[Option<Receptive>]) -> LayerStats {
    let x = inputs[0];
    let n = out.numel() as u64;
    let flops = match op {
        Op::Conv2d(c) => 2 * n * (x.c / c.groups) as u64 * (c.kernel.h * c.kernel.w) as u64,
        Op::Linear { .. } => 2 * n * x.numel() as u64,
        Op::BatchNorm { .. } => 2 * n,
        Op::ConvTranspose(c) => {
            2 * x.numel() as u64
                * (c.out_channels / c.groups) as u64
                * (c.kernel.h * c.kernel.w) as u64
        }
        Op::Relu | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::PRelu | Op::Sigmoid => n,
        Op::Affine { .. } | Op::HardSigmoid { .. } => 2 * n,
        Op::HardSwish => 4 * n,
        Op::Silu => 4 * n,
        Op::Sub | Op::Mul | Op::Div => n,
        Op::MaxPool(p) | Op::AvgPool(p) => n * (p.kernel.h * p.kernel.w) as u64,
        Op::GlobalAvgPool => x.numel() as u64,
        Op::Add => n * (inputs.len() as u64 - 1),
        Op::Softmax => 3 * n,
        Op::Concat
        | Op::Flatten
        | Op::Dropout
        | Op::Identity
        | Op::Pad { .. }
        | Op::Upsample(_) => 0,
    };
    let weights = op.weight_shapes(x);
    let numel = |s: &Vec<usize>| s.iter().product::<usize>() as u64;
    // Batch-norm running statistics are buffers, not parameters (as PyTorch counts them).
    let params: u64 = weights
        .iter()
        .filter(|(r, _)| !matches!(r, WeightRole::RunningMean | WeightRole::RunningVar))
        .map(|(_, s)| numel(s))
        .sum();
    LayerStats {
        flops,
        params,
        weight_bytes: 4 * weights.iter().map(|(_, s)| numel(s)).sum::<u64>(),
        output_bytes: 4 * n,
        receptive: receptive_field(op, receptive),
    }
}

fn receptive_field(op: &Op, inputs: &[Option<Receptive>]) -> Option<Receptive> {
    // Joins take the widest field of their inputs.
    let mut r = inputs.iter().flatten().copied().reduce(|a, b| Receptive {
        field: Hw {
            h: a.field.h.max(b.field.h),
            w: a.field.w.max(b.field.w),
        },
        stride: Hw {
            h: a.stride.h.max(b.stride.h),
            w: a.stride.w.max(b.stride.w),
        },
    })?;
    if inputs.iter().any(Option::is_none) {
        return None;
    }
    let window = |r: &mut Receptive, k: Hw, s: Hw, d: Hw| {
        r.field.h += d.h * (k.h - 1) * r.stride.h;
        r.field.w += d.w * (k.w - 1) * r.stride.w;
        r.stride.h *= s.h;
        r.stride.w *= s.w;
    };
    match op {
        Op::Conv2d(c) => window(&mut r, c.kernel, c.stride, c.dilation),
        Op::MaxPool(p) | Op::AvgPool(p) => window(&mut r, p.kernel, p.stride, Hw::square(1)),
        // Upsampling divides the cumulative stride (the field, in input pixels, stays).
        Op::Upsample(u) => {
            r.stride.h = (r.stride.h / u.scale.h).max(1);
            r.stride.w = (r.stride.w / u.scale.w).max(1);
        }
        Op::ConvTranspose(c) => {
            r.field.h += c.dilation.h * (c.kernel.h - 1) * r.stride.h / c.stride.h;
            r.field.w += c.dilation.w * (c.kernel.w - 1) * r.stride.w / c.stride.w;
            r.stride.h = (r.stride.h / c.stride.h).max(1);
            r.stride.w = (r.stride.w / c.stride.w).max(1);
        }
        Op::GlobalAvgPool | Op::Flatten | Op::Linear { .. } => return None,
        _ => {}
    }
    Some(r)
}
