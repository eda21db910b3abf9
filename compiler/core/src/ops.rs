//! Layer operators: what each layer computes, with every parameter resolved.
//!
//! The DSL lowers layer expressions and YAML maps into [`Op`] values; the layer graph infers
//! shapes from them; the reference interpreter and every faster path execute them. Tensors are
//! one image (batch 1) in `[C, H, W]` layout; a flat vector of `N` values is `[N, 1, 1]`, so
//! per-channel operators (softmax, batch norm) mean the same thing on both.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A tensor shape `[C, H, W]` (batch 1). Flat vectors are `[N, 1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Number of elements, `None` past `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        self.c.checked_mul(self.h)?.checked_mul(self.w)
    }

    /// True for `[N, 1, 1]`: the output of `flatten`, `linear` or a global pool.
    pub fn is_flat(&self) -> bool {
        self.h == 1 && self.w == 1
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.c, self.h, self.w)
    }
}

/// Padding of the two spatial axes, ONNX order: top, left, bottom, right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Pad2 {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Pad2 {
    pub const fn uniform(p: usize) -> Self {
        Pad2 {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Pad2::default()
    }
}

impl fmt::Display for Pad2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Pad2 {
            top,
            left,
            bottom,
            right,
        } = *self;
        if top == bottom && left == right {
            if top == left {
                write!(f, "{top}")
            } else {
                write!(f, "[{top}, {left}]")
            }
        } else {
            write!(f, "[{top}, {left}, {bottom}, {right}]")
        }
    }
}

/// A pair of values for the (height, width) axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hw {
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub const fn square(v: usize) -> Self {
        Hw { h: v, w: v }
    }
}

impl fmt::Display for Hw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.h == self.w {
            write!(f, "{}", self.h)
        } else {
            write!(f, "[{}, {}]", self.h, self.w)
        }
    }
}

/// 2-D convolution (cross-correlation, as PyTorch and ONNX define it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub out_channels: usize,
    pub kernel: Hw,
    pub stride: Hw,
    pub padding: Pad2,
    pub dilation: Hw,
    /// Input and output channels are split into `groups` independent groups;
    /// depthwise convolution has `groups == in_channels`.
    pub groups: usize,
    pub bias: bool,
}

/// Spatial pooling window (max or average).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: Hw,
    pub stride: Hw,
    /// Max pooling pads with −∞, average pooling with zeros.
    pub padding: Pad2,
    /// Output size rounds up (PyTorch `ceil_mode`); a window that would start entirely in
    /// the right/bottom padding is dropped, as PyTorch does.
    pub ceil_mode: bool,
    /// Average pooling only: padded zeros count in the divisor (PyTorch's default).
    pub count_include_pad: bool,
}

/// Transposed 2-D convolution (PyTorch's `ConvTranspose2d`, ONNX `ConvTranspose`): every
/// input pixel scatters `kernel` taps into the output, `stride` apart; `padding` crops the
/// output's sides and `output_padding` adds rows and columns at its far end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvTranspose2d {
    pub out_channels: usize,
    pub kernel: Hw,
    pub stride: Hw,
    pub padding: Pad2,
    pub output_padding: Hw,
    pub dilation: Hw,
    pub groups: usize,
    pub bias: bool,
}

impl ConvTranspose2d {
    /// Output length on one axis before `padding` crops it: `(len − 1)·s + d·(k − 1) + 1 +
    /// output_padding`; `None` on overflow or an empty input.
    pub fn full_len(len: usize, k: usize, s: usize, d: usize, out_pad: usize) -> Option<usize> {
        len.checked_sub(1)?
            .checked_mul(s)?
            .checked_add(d.checked_mul(k.checked_sub(1)?)?)?
            .checked_add(1)?
            .checked_add(out_pad)
    }
}

/// Nearest-neighbour upsampling by whole factors: output pixel `(y, x)` copies input pixel
/// `(⌊y / scale.h⌋, ⌊x / scale.w⌋)` — what ONNX `Resize` in `nearest` mode does for integer
/// scales in every coordinate mode but `align_corners`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upsample {
    pub scale: Hw,
    /// Output rows and columns left out on each side: zero in networks; a tile's operator
    /// (`geometry::tile_op`) starts and ends where its tile does.
    pub crop: Pad2,
}

/// What a layer computes. Parameters are fully resolved (no defaults left to apply).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Conv2d(Conv2d),
    /// Inference batch norm: `(x - mean) / sqrt(var + eps) * gamma + beta`, per channel.
    BatchNorm {
        eps: f32,
    },
    Relu,
    /// `min(max(x, min), max)`; `relu6` is `Clip { min: 0, max: 6 }`.
    Clip {
        min: f32,
        max: f32,
    },
    LeakyRelu {
        slope: f32,
    },
    /// `x` if positive, else `slope[c] * x`, one learned slope per channel.
    PRelu,
    Sigmoid,
    MaxPool(Pool2d),
    AvgPool(Pool2d),
    /// Mean over H×W: `[C, H, W]` → `[C, 1, 1]`.
    GlobalAvgPool,
    /// Element-wise sum of two or more inputs, broadcast as numpy does (each axis equal or
    /// 1: a `[C, 1, 1]` input is one value per channel).
    Add,
    /// `a − b`, broadcast.
    Sub,
    /// `a · b`, broadcast (a squeeze-and-excitation block's per-channel scale).
    Mul,
    /// `a / b`, broadcast.
    Div,
    /// `x · scale + shift` with constants (arithmetic with a scalar, folded).
    Affine {
        scale: f32,
        shift: f32,
    },
    /// `max(0, min(1, alpha · x + beta))`.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x · max(0, min(1, x / 6 + 1/2))` (MobileNetV3's h-swish).
    HardSwish,
    /// `x · sigmoid(x)` (also called swish).
    Silu,
    Upsample(Upsample),
    ConvTranspose(ConvTranspose2d),
    /// Concatenation of the inputs on the channel axis.
    Concat,
    /// `[C, H, W]` → `[C·H·W, 1, 1]`, row-major (PyTorch's `flatten(1)`).
    Flatten,
    /// Fully connected: `[N, 1, 1]` → `[out, 1, 1]`.
    Linear {
        out_features: usize,
        bias: bool,
    },
    /// Softmax over the channel axis of every pixel (over the vector for flat tensors).
    Softmax,
    /// Identity at inference.
    Dropout,
    /// Constant padding of the spatial axes.
    Pad {
        padding: Pad2,
        value: f32,
    },
    /// Passes its input through. Never written in the DSL: `adcnnc build` leaves it in a
    /// plan where a batch norm was folded into the convolution before it, so the layers keep
    /// their places (and the tiles their per-layer regions).
    Identity,
}

/// The weight tensors an operator expects, by suffix (`{layer}.{suffix}`, PyTorch naming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightRole {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
}

impl WeightRole {
    pub fn suffix(self) -> &'static str {
        match self {
            WeightRole::Weight => "weight",
            WeightRole::Bias => "bias",
            WeightRole::RunningMean => "running_mean",
            WeightRole::RunningVar => "running_var",
        }
    }
}

impl Op {
    /// The canonical kind name, as written in the DSL.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "conv",
            Op::BatchNorm { .. } => "bn",
            Op::Relu => "relu",
            Op::Clip { .. } => "clip",
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::PRelu => "prelu",
            Op::Sigmoid => "sigmoid",
            Op::MaxPool(_) => "maxpool",
            Op::AvgPool(_) => "avgpool",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
            Op::Affine { .. } => "affine",
            Op::HardSigmoid { .. } => "hardsigmoid",
            Op::HardSwish => "hardswish",
            Op::Silu => "silu",
            Op::Upsample(_) => "upsample",
            Op::ConvTranspose(_) => "conv_transpose",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Linear { .. } => "linear",
            Op::Softmax => "softmax",
            Op::Dropout => "dropout",
            Op::Pad { .. } => "pad",
            Op::Identity => "identity",
        }
    }

    /// How many inputs the operator takes: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Add | Op::Concat => (2, usize::MAX),
            Op::Sub | Op::Mul | Op::Div => (2, 2),
            _ => (1, 1),
        }
    }

    /// The weight tensors of this operator with their shapes, given its input shape.
    pub fn weight_shapes(&self, input: Shape) -> Vec<(WeightRole, Vec<usize>)> {
        use WeightRole::*;
        match self {
            Op::Conv2d(_) | Op::ConvTranspose(_) => {
                let Some(c) = self.conv_params() else {
                    return Vec::new();
                };
                let (k, g) = (c.kernel, c.groups.max(1));
                // PyTorch's layouts: [out, in / g, kh, kw], transposed [in, out / g, kh, kw].
                let dims = match self {
                    Op::ConvTranspose(_) => vec![input.c, c.out_channels / g, k.h, k.w],
                    _ => vec![c.out_channels, input.c / g, k.h, k.w],
                };
                let mut v = vec![(Weight, dims)];
                if c.bias {
                    v.push((Bias, vec![c.out_channels]));
                }
                v
            }
            Op::BatchNorm { .. } => vec![
                (Weight, vec![input.c]),
                (Bias, vec![input.c]),
                (RunningMean, vec![input.c]),
                (RunningVar, vec![input.c]),
            ],
            Op::PRelu => vec![(Weight, vec![input.c])],
            Op::Linear { out_features, bias } => {
                let mut v = vec![(Weight, vec![*out_features, input.numel()])];
                if *bias {
                    v.push((Bias, vec![*out_features]));
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Op {
    /// Renders the operator as a DSL layer expression with every parameter spelled out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Conv2d(c) => conv_args(
                f,
                "conv",
                c.out_channels,
                [c.kernel, c.stride, c.dilation, Hw::square(0)],
                c.padding,
                c.groups,
                c.bias,
            ),
            Op::BatchNorm { eps } => write!(f, "bn(eps={eps})"),
            Op::Clip { min, max } => write!(f, "clip({min}, {max})"),
            Op::LeakyRelu { slope } => write!(f, "leaky_relu({slope})"),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                write!(f, "{}({}, s={}", self.kind(), p.kernel, p.stride)?;
                if !p.padding.is_zero() {
                    write!(f, ", p={}", p.padding)?;
                }
                if p.ceil_mode {
                    write!(f, ", ceil=true")?;
                }
                if matches!(self, Op::AvgPool(_)) && !p.count_include_pad {
                    write!(f, ", count_pad=false")?;
                }
                write!(f, ")")
            }
            Op::Linear { out_features, bias } => {
                write!(f, "linear({out_features}")?;
                if !bias {
                    write!(f, ", bias=false")?;
                }
                write!(f, ")")
            }
            Op::Pad { padding, value } => write!(f, "pad({padding}, value={value})"),
            Op::Affine { scale, shift } => write!(f, "affine(scale={scale}, shift={shift})"),
            Op::HardSigmoid { alpha, beta } => {
                write!(f, "hardsigmoid(alpha={alpha}, beta={beta})")
            }
            Op::Upsample(u) => {
                write!(f, "upsample({}", u.scale)?;
                if !u.crop.is_zero() {
                    write!(f, ", crop={}", u.crop)?;
                }
                write!(f, ")")
            }
            Op::ConvTranspose(c) => conv_args(
                f,
                "conv_transpose",
                c.out_channels,
                [c.kernel, c.stride, c.dilation, c.output_padding],
                c.padding,
                c.groups,
                c.bias,
            ),
            other => f.write_str(other.kind()),
        }
    }
}

/// What convolutions and transposed convolutions share, for the checks.
struct ConvParams {
    out_channels: usize,
    kernel: Hw,
    stride: Hw,
    dilation: Hw,
    output_padding: Hw,
    padding: Pad2,
    groups: usize,
    bias: bool,
}

/// `NAME(out, k=…` and the arguments that differ from their defaults (`[kernel, stride,
/// dilation, output padding]`).
fn conv_args(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    out: usize,
    [kernel, stride, dilation, out_pad]: [Hw; 4],
    padding: Pad2,
    groups: usize,
    bias: bool,
) -> fmt::Result {
    write!(f, "{name}({out}, k={kernel}")?;
    if stride != Hw::square(1) {
        write!(f, ", s={stride}")?;
    }
    if !padding.is_zero() {
        write!(f, ", p={padding}")?;
    }
    if out_pad != Hw::square(0) {
        write!(f, ", op={out_pad}")?;
    }
    if dilation != Hw::square(1) {
        write!(f, ", d={dilation}")?;
    }
    if groups != 1 {
        write!(f, ", g={groups}")?;
    }
    if !bias {
        write!(f, ", bias=false")?;
    }
    write!(f, ")")
}

/// Why an operator cannot run on its input shapes (the compiler turns each into a
/// diagnostic at the layer; the plan decoder into an error naming the layer).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ShapeError {
    #[error("`{op}` takes {expected} input(s), got {found}")]
    Arity {
        op: &'static str,
        expected: String,
        found: usize,
    },
    #[error("invalid parameter: {0}")]
    Parameter(String),
    #[error("{cin} input and {cout} output channels cannot be split into {groups} groups")]
    Groups {
        cin: usize,
        cout: usize,
        groups: usize,
    },
    #[error("the {}×{} kernel (dilation {dilation}) does not fit the {input} input padded by {padding}", kernel.h, kernel.w)]
    ConvWindow {
        kernel: Hw,
        dilation: Hw,
        padding: Pad2,
        input: Shape,
    },
    #[error("the {kernel} pooling window does not fit the {input} input padded by {padding}")]
    PoolWindow {
        kernel: Hw,
        padding: Pad2,
        input: Shape,
    },
    #[error("`linear` needs a flat input, found {0}")]
    NotFlat(Shape),
    #[error("{verb} tensors whose shapes do not broadcast: {a} and {b}")]
    Broadcast {
        verb: &'static str,
        a: Shape,
        b: Shape,
    },
    #[error("concatenates tensors of different sizes: {0} and {1}")]
    ConcatSizes(Shape, Shape),
}

/// Most values of any tensor an operator reads or makes (1 GiB of float32, the network
/// input's bound too): shape arithmetic stays far from overflow, and every shape a plan
/// declares can be allocated.
pub const MAX_TENSOR_VALUES: usize = 1 << 28;
/// Largest kernel, stride, dilation or padding (what the DSL accepts).
pub const MAX_WINDOW: usize = 1 << 16;
/// Most channels, groups or features (what the DSL accepts).
pub const MAX_CHANNELS: usize = 1 << 20;

/// Output length of a sliding window; `None` when the window does not fit (or has no
/// extent or step).
pub fn window_out(
    len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation
        .checked_mul(kernel.checked_sub(1)?)?
        .checked_add(1)?;
    let padded = len.checked_add(pad_begin)?.checked_add(pad_end)?;
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

/// The output shape of a pooling window over `x`, if it fits.
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

impl Op {
    /// The output shape of the operator on `inputs`, with its parameters checked (every
    /// size at least 1, groups dividing the channels, windows fitting the padded input;
    /// windows, channel counts and every tensor read or made within [`MAX_WINDOW`],
    /// [`MAX_CHANNELS`] and [`MAX_TENSOR_VALUES`]). A depthwise convolution's channel count
    /// must already be filled in.
    pub fn output_shape(&self, inputs: &[Shape]) -> Result<Shape, ShapeError> {
        let too_large = |what: &str, s: &Shape| {
            ShapeError::Parameter(format!(
                "{what} {s} has more than {MAX_TENSOR_VALUES} values"
            ))
        };
        let bounded = |s: &Shape| s.checked_numel().is_some_and(|n| n <= MAX_TENSOR_VALUES);
        if let Some(s) = inputs.iter().find(|s| !bounded(s)) {
            return Err(too_large("input", s));
        }
        self.check_limits()?;
        let out = self.infer_shape(inputs)?;
        if !bounded(&out) {
            return Err(too_large("output", &out));
        }
        Ok(out)
    }

    /// Windows and channel counts within [`MAX_WINDOW`] and [`MAX_CHANNELS`].
    fn check_limits(&self) -> Result<(), ShapeError> {
        let at_most = |limit: usize, what: &str, v: usize| {
            if v > limit {
                Err(ShapeError::Parameter(format!(
                    "{what} {v} is larger than {limit}"
                )))
            } else {
                Ok(())
            }
        };
        let window = |what: &str, hw: Hw| {
            at_most(MAX_WINDOW, what, hw.h)?;
            at_most(MAX_WINDOW, what, hw.w)
        };
        let padding = |p: &Pad2| {
            [p.top, p.left, p.bottom, p.right]
                .into_iter()
                .try_for_each(|v| at_most(MAX_WINDOW, "padding", v))
        };
        match self {
            Op::Conv2d(_) | Op::ConvTranspose(_) => {
                let Some(c) = self.conv_params() else {
                    return Ok(());
                };
                window("kernel", c.kernel)?;
                window("stride", c.stride)?;
                window("dilation", c.dilation)?;
                window("output_padding", c.output_padding)?;
                padding(&c.padding)?;
                at_most(MAX_CHANNELS, "out_channels", c.out_channels)?;
                at_most(MAX_CHANNELS, "groups", c.groups)
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                window("kernel", p.kernel)?;
                window("stride", p.stride)?;
                padding(&p.padding)
            }
            Op::Upsample(u) => {
                window("scale", u.scale)?;
                padding(&u.crop)
            }
            Op::Linear { out_features, .. } => at_most(MAX_CHANNELS, "out_features", *out_features),
            Op::Pad { padding: p, .. } => padding(p),
            _ => Ok(()),
        }
    }

    /// [`Self::output_shape`] of bounded inputs and parameters.
    fn infer_shape(&self, inputs: &[Shape]) -> Result<Shape, ShapeError> {
        let (min, max) = self.arity();
        let Some(&x) = inputs
            .first()
            .filter(|_| inputs.len() >= min && inputs.len() <= max)
        else {
            return Err(ShapeError::Arity {
                op: self.kind(),
                expected: if max == usize::MAX {
                    format!("at least {min}")
                } else {
                    format!("{min}")
                },
                found: inputs.len(),
            });
        };
        let positive = |what: &str, v: usize| {
            if v == 0 {
                Err(ShapeError::Parameter(format!("{what} must be at least 1")))
            } else {
                Ok(())
            }
        };
        match self {
            Op::Conv2d(c) => {
                self.check_conv_params(x)?;
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
                    (Some(h), Some(w)) => Ok(Shape::new(c.out_channels, h, w)),
                    _ => Err(ShapeError::ConvWindow {
                        kernel: c.kernel,
                        dilation: c.dilation,
                        padding: c.padding,
                        input: x,
                    }),
                }
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                positive("kernel", p.kernel.h.min(p.kernel.w))?;
                positive("stride", p.stride.h.min(p.stride.w))?;
                pool_out(x, p).ok_or(ShapeError::PoolWindow {
                    kernel: p.kernel,
                    padding: p.padding,
                    input: x,
                })
            }
            Op::GlobalAvgPool => Ok(Shape::new(x.c, 1, 1)),
            Op::Flatten => Ok(Shape::new(x.numel(), 1, 1)),
            Op::Linear { out_features, .. } => {
                positive("out_features", *out_features)?;
                if !x.is_flat() {
                    return Err(ShapeError::NotFlat(x));
                }
                Ok(Shape::new(*out_features, 1, 1))
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => {
                let verb = match self {
                    Op::Add => "adds",
                    Op::Sub => "subtracts",
                    Op::Mul => "multiplies",
                    _ => "divides",
                };
                inputs[1..].iter().try_fold(x, |a, &b| {
                    broadcast(a, b).ok_or(ShapeError::Broadcast { verb, a, b })
                })
            }
            Op::ConvTranspose(c) => {
                self.check_conv_params(x)?;
                let axis = |len, k, s, d, op, p0: usize, p1: usize| {
                    ConvTranspose2d::full_len(len, k, s, d, op)
                        .and_then(|n| n.checked_sub(p0)?.checked_sub(p1))
                        .filter(|&n| n > 0)
                };
                let h = axis(
                    x.h,
                    c.kernel.h,
                    c.stride.h,
                    c.dilation.h,
                    c.output_padding.h,
                    c.padding.top,
                    c.padding.bottom,
                );
                let w = axis(
                    x.w,
                    c.kernel.w,
                    c.stride.w,
                    c.dilation.w,
                    c.output_padding.w,
                    c.padding.left,
                    c.padding.right,
                );
                match (h, w) {
                    (Some(h), Some(w)) => Ok(Shape::new(c.out_channels, h, w)),
                    _ => Err(ShapeError::Parameter(format!(
                        "the padding {} leaves nothing of the transposed convolution's output on the {x} input",
                        c.padding
                    ))),
                }
            }
            Op::Upsample(u) => {
                positive("scale", u.scale.h.min(u.scale.w))?;
                let axis = |len: usize, s: usize, c0: usize, c1: usize| {
                    len.checked_mul(s)?
                        .checked_sub(c0)?
                        .checked_sub(c1)
                        .filter(|&n| n > 0)
                };
                match (
                    axis(x.h, u.scale.h, u.crop.top, u.crop.bottom),
                    axis(x.w, u.scale.w, u.crop.left, u.crop.right),
                ) {
                    (Some(h), Some(w)) => Ok(Shape::new(x.c, h, w)),
                    _ => Err(ShapeError::Parameter(format!(
                        "the crop {} leaves nothing of the upsampled {x} input",
                        u.crop
                    ))),
                }
            }
            Op::Concat => {
                if let Some(other) = inputs.iter().find(|s| (s.h, s.w) != (x.h, x.w)) {
                    return Err(ShapeError::ConcatSizes(x, *other));
                }
                let c = inputs.iter().try_fold(0usize, |a, s| a.checked_add(s.c));
                let c = c.ok_or_else(|| ShapeError::Parameter("too many channels".into()))?;
                Ok(Shape::new(c, x.h, x.w))
            }
            Op::Pad { padding, .. } => {
                let h = x.h.checked_add(padding.top + padding.bottom);
                let w = x.w.checked_add(padding.left + padding.right);
                match (h, w) {
                    (Some(h), Some(w)) => Ok(Shape::new(x.c, h, w)),
                    _ => Err(ShapeError::Parameter("padding too large".into())),
                }
            }
            Op::BatchNorm { .. }
            | Op::Relu
            | Op::Clip { .. }
            | Op::LeakyRelu { .. }
            | Op::PRelu
            | Op::Sigmoid
            | Op::Affine { .. }
            | Op::HardSigmoid { .. }
            | Op::HardSwish
            | Op::Silu
            | Op::Softmax
            | Op::Dropout
            | Op::Identity => Ok(x),
        }
    }

    /// A convolution's or transposed convolution's parameters, in one shape.
    fn conv_params(&self) -> Option<ConvParams> {
        match self {
            Op::Conv2d(c) => Some(ConvParams {
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                dilation: c.dilation,
                output_padding: Hw::square(0),
                padding: c.padding,
                groups: c.groups,
                bias: c.bias,
            }),
            Op::ConvTranspose(c) => Some(ConvParams {
                out_channels: c.out_channels,
                kernel: c.kernel,
                stride: c.stride,
                dilation: c.dilation,
                output_padding: c.output_padding,
                padding: c.padding,
                groups: c.groups,
                bias: c.bias,
            }),
            _ => None,
        }
    }

    /// Channel counts, groups, kernel, stride and dilation at least 1; the groups dividing
    /// both channel counts of input `x`.
    fn check_conv_params(&self, x: Shape) -> Result<(), ShapeError> {
        let Some(c) = self.conv_params() else {
            return Ok(());
        };
        for (what, v) in [
            ("out_channels", c.out_channels),
            ("groups", c.groups),
            ("kernel", c.kernel.h.min(c.kernel.w)),
            ("stride", c.stride.h.min(c.stride.w)),
            ("dilation", c.dilation.h.min(c.dilation.w)),
        ] {
            if v == 0 {
                return Err(ShapeError::Parameter(format!("{what} must be at least 1")));
            }
        }
        if !x.c.is_multiple_of(c.groups) || !c.out_channels.is_multiple_of(c.groups) {
            return Err(ShapeError::Groups {
                cin: x.c,
                cout: c.out_channels,
                groups: c.groups,
            });
        }
        Ok(())
    }
}

/// The shape two tensors broadcast to (numpy's rule on `[C, H, W]`: each axis equal, or 1 in
/// one of them), if they do.
pub fn broadcast(a: Shape, b: Shape) -> Option<Shape> {
    let axis = |x: usize, y: usize| match (x, y) {
        _ if x == y => Some(x),
        (1, y) => Some(y),
        (x, 1) => Some(x),
        _ => None,
    };
    Some(Shape::new(
        axis(a.c, b.c)?,
        axis(a.h, b.h)?,
        axis(a.w, b.w)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes and parameters a plan file declares are outside data: overflowing or huge
    /// ones are errors, not panics (found by the `plan_edit` fuzz target's kind of input).
    #[test]
    fn huge_shapes_and_parameters_are_errors() {
        let huge = Shape::new(1 << 32, 1 << 32, 1);
        assert!(Op::Flatten.output_shape(&[huge]).is_err());
        assert!(
            Op::Relu
                .output_shape(&[Shape::new(1 << 20, 1 << 20, 1)])
                .is_err()
        );
        let pad = Op::Pad {
            padding: Pad2 {
                top: usize::MAX,
                left: 0,
                bottom: 1,
                right: 0,
            },
            value: 0.0,
        };
        assert!(pad.output_shape(&[Shape::new(1, 1, 1)]).is_err());
        // A pool whose window fits only thanks to enormous padding.
        let pool = Op::MaxPool(Pool2d {
            kernel: Hw::square(1 << 40),
            stride: Hw::square(1),
            padding: Pad2::uniform(1 << 40),
            ceil_mode: false,
            count_include_pad: true,
        });
        assert!(pool.output_shape(&[Shape::new(1, 1, 1)]).is_err());
        let wide = Op::Linear {
            out_features: 1 << 30,
            bias: false,
        };
        assert!(wide.output_shape(&[Shape::new(4, 1, 1)]).is_err());
        // Within the bounds, as before.
        assert_eq!(
            Op::Flatten.output_shape(&[Shape::new(512, 7, 7)]),
            Ok(Shape::new(25088, 1, 1))
        );
        // Padding of MAX_WINDOW itself is accepted (on one side: on all four, 1×1 becomes
        // 131 073² values, past MAX_TENSOR_VALUES).
        let fine = Op::Pad {
            padding: Pad2 {
                top: MAX_WINDOW,
                left: 0,
                bottom: 0,
                right: 0,
            },
            value: 0.0,
        };
        assert!(fine.output_shape(&[Shape::new(1, 1, 1)]).is_ok());
    }
}
