//! Shape inference and per-layer figures.

use crate::diag::{Diagnostic, Diagnostics};
use crate::dsl::network::LayerSpec;
use crate::graph::{LayerStats, Receptive};
use crate::ops::{Hw, Op, Pool2d, Shape, WeightRole};

/// The output shape of `op` on `inputs`, or a diagnostic at the layer. Fills in what the
/// DSL leaves to the graph (a depthwise convolution's channel count).
pub fn infer(
    op: &mut Op,
    inputs: &[Shape],
    layer: &LayerSpec,
    diags: &mut Diagnostics,
) -> Option<Shape> {
    let x = inputs[0];
    let mut fail = |message: String, label: String, help: Option<String>| {
        let mut d = Diagnostic::error(message).at(&layer.span, label);
        if let Some(h) = help {
            d = d.help(h);
        }
        diags.push(d);
        None
    };
    match op {
        Op::Conv2d(c) => {
            if c.groups == 0 {
                c.groups = x.c;
                c.out_channels = x.c;
            }
            if !x.c.is_multiple_of(c.groups) || c.out_channels % c.groups != 0 {
                return fail(
                    format!(
                        "layer `{}`: {} input and {} output channels cannot be split into {} groups",
                        layer.name, x.c, c.out_channels, c.groups
                    ),
                    format!("input is {x}"),
                    Some("both channel counts must be multiples of `g`".into()),
                );
            }
            let h = window_out(
                x.h,
                c.kernel.h,
                c.stride.h,
                c.dilation.h,
                c.padding.top,
                c.padding.bottom,
                false,
            );
            let w = window_out(
                x.w,
                c.kernel.w,
                c.stride.w,
                c.dilation.w,
                c.padding.left,
                c.padding.right,
                false,
            );
            match (h, w) {
                (Some(h), Some(w)) => Some(Shape::new(c.out_channels, h, w)),
                _ => fail(
                    format!(
                        "layer `{}`: the {}×{} kernel (dilation {}) does not fit the {x} input padded by {}",
                        layer.name, c.kernel.h, c.kernel.w, c.dilation, c.padding
                    ),
                    format!("input is {x}"),
                    Some("use a smaller kernel, more padding, or fewer down-sampling layers before this one".into()),
                ),
            }
        }
        Op::MaxPool(p) | Op::AvgPool(p) => match pool_out(x, p) {
            Some(s) => Some(s),
            None => fail(
                format!(
                    "layer `{}`: the {} pooling window does not fit the {x} input padded by {}",
                    layer.name, p.kernel, p.padding
                ),
                format!("input is {x}"),
                None,
            ),
        },
        Op::GlobalAvgPool => Some(Shape::new(x.c, 1, 1)),
        Op::Flatten => Some(Shape::new(x.numel(), 1, 1)),
        Op::Linear { out_features, .. } => {
            if !x.is_flat() {
                return fail(
                    format!(
                        "layer `{}`: `linear` needs a flat input, found {x}",
                        layer.name
                    ),
                    format!("input is {x}"),
                    Some("add `flatten` (or `global_avgpool`) before it".into()),
                );
            }
            Some(Shape::new(*out_features, 1, 1))
        }
        Op::Add => {
            if let Some(other) = inputs.iter().find(|s| **s != x) {
                return fail(
                    format!("layer `{}` adds tensors of different shapes: {x} and {other}", layer.name),
                    shapes_label(inputs),
                    Some("`add` needs inputs of one shape; a strided branch needs a matching downsample".into()),
                );
            }
            Some(x)
        }
        Op::Concat => {
            if let Some(other) = inputs.iter().find(|s| (s.h, s.w) != (x.h, x.w)) {
                return fail(
                    format!(
                        "layer `{}` concatenates tensors of different sizes: {x} and {other}",
                        layer.name
                    ),
                    shapes_label(inputs),
                    Some("`concat` joins channels; the inputs' H and W must match".into()),
                );
            }
            Some(Shape::new(inputs.iter().map(|s| s.c).sum(), x.h, x.w))
        }
        Op::Pad { padding, .. } => Some(Shape::new(
            x.c,
            x.h + padding.top + padding.bottom,
            x.w + padding.left + padding.right,
        )),
        Op::BatchNorm { .. }
        | Op::Relu
        | Op::Clip { .. }
        | Op::LeakyRelu { .. }
        | Op::PRelu
        | Op::Sigmoid
        | Op::Softmax
        | Op::Dropout => Some(x),
    }
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

/// Output length of a sliding window; `None` when the window does not fit.
pub fn window_out(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let padded = len + pad_begin + pad_end;
    if span > padded || stride == 0 {
        return None;
    }
    let steps = padded - span;
    let mut out = if ceil {
        steps.div_ceil(stride)
    } else {
        steps / stride
    } + 1;
    // PyTorch: in ceil mode the last window must start inside the input or the begin padding.
    if ceil && (out - 1) * stride >= len + pad_begin {
        out -= 1;
    }
    Some(out)
}

pub fn pool_out(x: Shape, p: &Pool2d) -> Option<Shape> {
    let h = window_out(
        x.h,
        p.kernel.h,
        p.stride.h,
        1,
        p.padding.top,
        p.padding.bottom,
        p.ceil_mode,
    )?;
    let w = window_out(
        x.w,
        p.kernel.w,
        p.stride.w,
        1,
        p.padding.left,
        p.padding.right,
        p.ceil_mode,
    )?;
    Some(Shape::new(x.c, h, w))
}

/// FLOPs, parameters, bytes and receptive field of a shape-checked layer.
pub fn stats(op: &Op, inputs: &[Shape], out: Shape, receptive: &[Option<Receptive>]) -> LayerStats {
    let x = inputs[0];
    let n = out.numel() as u64;
    let flops = match op {
        Op::Conv2d(c) => 2 * n * (x.c / c.groups) as u64 * (c.kernel.h * c.kernel.w) as u64,
        Op::Linear { .. } => 2 * n * x.numel() as u64,
        Op::BatchNorm { .. } => 2 * n,
        Op::Relu | Op::Clip { .. } | Op::LeakyRelu { .. } | Op::PRelu | Op::Sigmoid => n,
        Op::MaxPool(p) | Op::AvgPool(p) => n * (p.kernel.h * p.kernel.w) as u64,
        Op::GlobalAvgPool => x.numel() as u64,
        Op::Add => n * (inputs.len() as u64 - 1),
        Op::Softmax => 3 * n,
        Op::Concat | Op::Flatten | Op::Dropout | Op::Pad { .. } => 0,
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
        Op::GlobalAvgPool | Op::Flatten | Op::Linear { .. } => return None,
        _ => {}
    }
    Some(r)
}
