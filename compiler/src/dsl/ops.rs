//! Lowering of one operator application (from a layer expression or a YAML map) to an
//! [`Op`], with every argument checked: unknown or repeated names, wrong types, values out
//! of range, missing required arguments — all reported, each at its argument.

use crate::diag::{Diagnostic, Diagnostics, Span, did_you_mean};
use crate::dsl::expr::{Arg, ArgValue, Call, Name};
use adcnn_core::ops::{Conv2d, ConvTranspose2d, Hw, Op, Pad2, Pool2d, Upsample};

/// Every operator kind the DSL knows, with its parameters (positional ones first) and
/// a one-line synopsis for help messages.
pub const KINDS: &[(&str, &str)] = &[
    ("conv", "conv(out, k=1, s=1, p=0, d=1, g=1, bias=true)"),
    ("dwconv", "dwconv(k=3, s=1, p=0, d=1, bias=true)"),
    ("bn", "bn(eps=1e-5)"),
    ("relu", "relu"),
    ("relu6", "relu6"),
    ("clip", "clip(min, max)"),
    ("leaky_relu", "leaky_relu(slope=0.01)"),
    ("prelu", "prelu"),
    ("sigmoid", "sigmoid"),
    ("maxpool", "maxpool(k, s=k, p=0, ceil=false)"),
    (
        "avgpool",
        "avgpool(k, s=k, p=0, ceil=false, count_pad=true)",
    ),
    ("global_avgpool", "global_avgpool"),
    ("add", "add(other, …)"),
    ("sub", "sub(other)"),
    ("mul", "mul(other)"),
    ("div", "div(other)"),
    ("affine", "affine(scale=1, shift=0)"),
    ("hardsigmoid", "hardsigmoid(alpha=1/6, beta=0.5)"),
    ("hardswish", "hardswish"),
    ("silu", "silu"),
    ("upsample", "upsample(scale)"),
    (
        "conv_transpose",
        "conv_transpose(out, k=1, s=1, p=0, op=0, d=1, g=1, bias=true)",
    ),
    ("concat", "concat(other, …)"),
    ("flatten", "flatten"),
    ("linear", "linear(out, bias=true)"),
    ("softmax", "softmax"),
    ("dropout", "dropout(p=0.5)"),
    ("pad", "pad(p, value=0)"),
];

/// Other spellings accepted for kinds (PyTorch and ONNX names).
const KIND_ALIASES: &[(&str, &str)] = &[
    ("conv2d", "conv"),
    ("batchnorm", "bn"),
    ("batch_norm", "bn"),
    ("leaky", "leaky_relu"),
    ("max_pool", "maxpool"),
    ("avg_pool", "avgpool"),
    ("gap", "global_avgpool"),
    ("fc", "linear"),
    ("identity_dropout", "dropout"),
    ("zeropad", "pad"),
    ("swish", "silu"),
    ("hard_swish", "hardswish"),
    ("hard_sigmoid", "hardsigmoid"),
    ("resize", "upsample"),
    ("deconv", "conv_transpose"),
    ("convtranspose", "conv_transpose"),
    ("conv_transpose2d", "conv_transpose"),
];

/// The canonical name of a kind, if it is one.
pub fn canonical_kind(kind: &str) -> Option<&'static str> {
    KINDS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| *k == kind)
        .or_else(|| {
            KIND_ALIASES
                .iter()
                .find(|(a, _)| *a == kind)
                .map(|(_, k)| *k)
        })
}

/// An operator with the extra inputs named in its arguments (`add(stem)`).
#[derive(Debug)]
pub struct Lowered {
    pub op: Op,
    pub extra_inputs: Vec<Name>,
}

/// Lowers one call. Problems go to `diags`; `None` when the call cannot be lowered.
pub fn lower(call: &Call, diags: &mut Diagnostics) -> Option<Lowered> {
    let Some(kind) = canonical_kind(&call.kind.text) else {
        let names = KINDS
            .iter()
            .map(|(k, _)| *k)
            .chain(KIND_ALIASES.iter().map(|(a, _)| *a));
        let help = match did_you_mean(&call.kind.text, names) {
            Some(s) => format!("did you mean `{}`?", canonical_kind(s).unwrap_or(s)),
            None => format!(
                "known kinds: {}",
                KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            ),
        };
        diags.push(
            Diagnostic::error(format!("unknown layer kind `{}`", call.kind.text))
                .at(&call.kind.span, "not a layer kind")
                .help(help),
        );
        return None;
    };
    let before = diags.len();
    let mut a = Args::new(call, kind, diags);
    let mut extra_inputs = Vec::new();
    let op = match kind {
        "conv" => {
            let out = a.count(0, &["out", "out_channels"], None);
            conv(&mut a, out, 1)
        }
        "dwconv" => conv(&mut a, Some(0), 3),
        "bn" => Op::BatchNorm {
            eps: a.float(0, &["eps"], Some(1e-5), Range::Positive),
        },
        "relu" => Op::Relu,
        "relu6" => Op::Clip { min: 0.0, max: 6.0 },
        "clip" => {
            let min = a.float(0, &["min"], None, Range::Any);
            let max = a.float(1, &["max"], None, Range::Any);
            if min > max {
                a.error_at_call(format!("clip minimum {min} is above its maximum {max}"));
            }
            Op::Clip { min, max }
        }
        "leaky_relu" => Op::LeakyRelu {
            slope: a.float(0, &["slope", "negative_slope"], Some(0.01), Range::Any),
        },
        "prelu" => Op::PRelu,
        "sigmoid" => Op::Sigmoid,
        "maxpool" | "avgpool" => {
            let kernel = a.hw(0, &["k", "kernel"], None);
            let stride = a.hw(1, &["s", "stride"], Some(kernel));
            let padding = a.pad(2, &["p", "padding"]);
            let ceil_mode = a.boolean(&["ceil", "ceil_mode"], false);
            let count_include_pad = if kind == "avgpool" {
                a.boolean(&["count_pad", "count_include_pad"], true)
            } else {
                true
            };
            if padding.top.max(padding.bottom) > kernel.h / 2
                || padding.left.max(padding.right) > kernel.w / 2
            {
                a.error_at_call(format!(
                    "padding {padding} is more than half the pooling window {kernel}, \
                     so some windows would see only padding"
                ));
            }
            let pool = Pool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
                count_include_pad,
            };
            if kind == "maxpool" {
                Op::MaxPool(pool)
            } else {
                Op::AvgPool(pool)
            }
        }
        "global_avgpool" => Op::GlobalAvgPool,
        "add" | "concat" | "sub" | "mul" | "div" => {
            extra_inputs = a.references();
            match kind {
                "add" => Op::Add,
                "sub" => Op::Sub,
                "mul" => Op::Mul,
                "div" => Op::Div,
                _ => Op::Concat,
            }
        }
        "affine" => Op::Affine {
            scale: a.float(0, &["scale"], Some(1.0), Range::Any),
            shift: a.float(1, &["shift"], Some(0.0), Range::Any),
        },
        "hardsigmoid" => Op::HardSigmoid {
            alpha: a.float(0, &["alpha"], Some(1.0 / 6.0), Range::Any),
            beta: a.float(1, &["beta"], Some(0.5), Range::Any),
        },
        "hardswish" => Op::HardSwish,
        "silu" => Op::Silu,
        "upsample" => Op::Upsample(Upsample {
            scale: a.hw(0, &["scale", "scale_factor"], None),
            crop: Pad2::default(),
        }),
        "conv_transpose" => {
            let out = a.count(0, &["out", "out_channels"], None);
            let kernel = a.hw(1, &["k", "kernel"], Some(Hw::square(1)));
            let stride = a.hw(usize::MAX, &["s", "stride"], Some(Hw::square(1)));
            let padding = a.pad(usize::MAX, &["p", "padding"]);
            let output_padding = a.hw_at_least(
                usize::MAX,
                &["op", "output_padding"],
                Some(Hw::square(0)),
                0,
            );
            let dilation = a.hw(usize::MAX, &["d", "dilation"], Some(Hw::square(1)));
            let groups = a.count(usize::MAX, &["g", "groups"], Some(1)).unwrap_or(1);
            let bias = a.boolean(&["bias"], true);
            if output_padding.h >= stride.h.max(dilation.h)
                || output_padding.w >= stride.w.max(dilation.w)
            {
                a.error_at_call(format!(
                    "output padding {output_padding} must be smaller than the stride {stride} or \
                     the dilation {dilation} (PyTorch's rule)"
                ));
            }
            Op::ConvTranspose(ConvTranspose2d {
                out_channels: out.unwrap_or(1),
                kernel,
                stride,
                padding,
                output_padding,
                dilation,
                groups,
                bias,
            })
        }
        "flatten" => Op::Flatten,
        "linear" => Op::Linear {
            out_features: a.count(0, &["out", "out_features"], None).unwrap_or(1),
            bias: a.boolean(&["bias"], true),
        },
        "softmax" => Op::Softmax,
        "dropout" => {
            a.float(0, &["p"], Some(0.5), Range::Probability);
            Op::Dropout
        }
        "pad" => {
            let padding = a.pad(0, &["p", "padding"]);
            Op::Pad {
                padding,
                value: a.float(1, &["value"], Some(0.0), Range::Any),
            }
        }
        _ => Op::Relu,
    };
    a.finish();
    (diags.len() == before).then_some(Lowered { op, extra_inputs })
}

fn conv(a: &mut Args, out: Option<usize>, default_kernel: usize) -> Op {
    let depthwise = out == Some(0);
    let kernel = a.hw(
        if depthwise { 0 } else { 1 },
        &["k", "kernel"],
        Some(Hw::square(default_kernel)),
    );
    let stride = a.hw(usize::MAX, &["s", "stride"], Some(Hw::square(1)));
    let padding = a.pad(usize::MAX, &["p", "padding"]);
    let dilation = a.hw(usize::MAX, &["d", "dilation"], Some(Hw::square(1)));
    let groups = if depthwise {
        0
    } else {
        a.count(usize::MAX, &["g", "groups"], Some(1)).unwrap_or(1)
    };
    let bias = a.boolean(&["bias"], true);
    // Depthwise convolutions record `out_channels = groups = 0`; the layer graph fills in
    // the input's channel count once it is known.
    Op::Conv2d(Conv2d {
        out_channels: out.unwrap_or(1),
        kernel,
        stride,
        padding,
        dilation,
        groups,
        bias,
    })
}

#[derive(Clone, Copy)]
enum Range {
    Any,
    Positive,
    Probability,
}

/// The arguments of one call, consumed parameter by parameter.
struct Args<'a> {
    call: &'a Call,
    kind: &'static str,
    positional: Vec<&'a Arg>,
    keyword: Vec<(&'a Name, &'a Arg, bool)>,
    /// Names of the parameters asked for so far (for "did you mean").
    known: Vec<&'static str>,
    positional_used: usize,
    diags: &'a mut Diagnostics,
}

impl<'a> Args<'a> {
    fn new(call: &'a Call, kind: &'static str, diags: &'a mut Diagnostics) -> Self {
        let mut positional = Vec::new();
        let mut keyword: Vec<(&Name, &Arg, bool)> = Vec::new();
        for arg in &call.args {
            match &arg.keyword {
                Some(k) => {
                    if let Some((first, _, _)) = keyword.iter().find(|(n, _, _)| n.text == k.text) {
                        diags.push(
                            Diagnostic::error(format!("argument `{}` is given twice", k.text))
                                .at(&k.span, "repeated here")
                                .note(&first.span, "first given here"),
                        );
                    } else {
                        keyword.push((k, arg, false));
                    }
                }
                None if !keyword.is_empty()
                    && !matches!(kind, "add" | "concat" | "sub" | "mul" | "div") =>
                {
                    diags.push(
                        Diagnostic::error("positional argument after a named one")
                            .at(&arg.span, "move this before the named arguments"),
                    );
                }
                None => positional.push(arg),
            }
        }
        Args {
            call,
            kind,
            positional,
            keyword,
            known: Vec::new(),
            positional_used: 0,
            diags,
        }
    }

    fn synopsis(&self) -> String {
        let s = KINDS
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map_or("", |(_, s)| *s);
        format!("usage: {s}")
    }

    fn error_at_call(&mut self, message: String) {
        let help = self.synopsis();
        self.diags.push(
            Diagnostic::error(message)
                .at(&self.call.span, "in this layer")
                .help(help),
        );
    }

    /// The argument for a parameter: by keyword (any of `names`) or at `position`.
    fn take(&mut self, position: usize, names: &[&'static str]) -> Option<&'a Arg> {
        self.known.extend_from_slice(names);
        for entry in self.keyword.iter_mut() {
            if names.contains(&entry.0.text.as_str()) {
                entry.2 = true;
                let arg = entry.1;
                if position < self.positional.len() {
                    let dup = self.positional[position];
                    self.diags.push(
                        Diagnostic::error(format!(
                            "`{}` is given both by position and by name",
                            names[0]
                        ))
                        .at(&arg.span, "by name here")
                        .note(&dup.span, "by position here"),
                    );
                }
                return Some(arg);
            }
        }
        let arg = self.positional.get(position).copied();
        if arg.is_some() {
            self.positional_used = self.positional_used.max(position + 1);
        }
        arg
    }

    fn type_error(&mut self, arg: &Arg, name: &str, expected: &str) {
        self.diags.push(
            Diagnostic::error(format!(
                "`{name}` of `{}` must be {expected}, found {}",
                self.kind,
                arg.value.describe()
            ))
            .at(&arg.span, format!("expected {expected}"))
            .help(self.synopsis()),
        );
    }

    fn missing(&mut self, name: &str) {
        let help = self.synopsis();
        self.diags.push(
            Diagnostic::error(format!("`{}` needs the argument `{name}`", self.kind))
                .at(&self.call.span, format!("`{name}` missing"))
                .help(help),
        );
    }

    /// A positive integer (channel counts, groups).
    fn count(
        &mut self,
        position: usize,
        names: &[&'static str],
        default: Option<usize>,
    ) -> Option<usize> {
        match self.take(position, names) {
            None => {
                if default.is_none() {
                    self.missing(names[0]);
                }
                default
            }
            Some(arg) => match arg.value {
                ArgValue::Int(i) if (1..=1 << 20).contains(&i) => Some(i as usize),
                ArgValue::Int(_) => {
                    self.diags.push(
                        Diagnostic::error(format!("`{}` must be between 1 and 1048576", names[0]))
                            .at(&arg.span, "out of range"),
                    );
                    None
                }
                _ => {
                    self.type_error(arg, names[0], "a positive integer");
                    None
                }
            },
        }
    }

    fn float(
        &mut self,
        position: usize,
        names: &[&'static str],
        default: Option<f32>,
        range: Range,
    ) -> f32 {
        let Some(arg) = self.take(position, names) else {
            if default.is_none() {
                self.missing(names[0]);
            }
            return default.unwrap_or(0.0);
        };
        let v = match arg.value {
            ArgValue::Int(i) => i as f64,
            ArgValue::Float(f) => f,
            _ => {
                self.type_error(arg, names[0], "a number");
                return default.unwrap_or(0.0);
            }
        };
        let ok = v.is_finite()
            && match range {
                Range::Any => true,
                Range::Positive => v > 0.0,
                Range::Probability => (0.0..1.0).contains(&v),
            };
        if !ok {
            let want = match range {
                Range::Any => "a finite number",
                Range::Positive => "a positive number",
                Range::Probability => "a number in [0, 1)",
            };
            self.diags.push(
                Diagnostic::error(format!("`{}` must be {want}", names[0]))
                    .at(&arg.span, "out of range"),
            );
        }
        v as f32
    }

    fn boolean(&mut self, names: &[&'static str], default: bool) -> bool {
        match self.take(usize::MAX, names) {
            None => default,
            Some(arg) => match arg.value {
                ArgValue::Bool(b) => b,
                _ => {
                    self.type_error(arg, names[0], "`true` or `false`");
                    default
                }
            },
        }
    }

    fn int_of(&mut self, v: &ArgValue, span: &Span, name: &str, min: i64) -> usize {
        match *v {
            ArgValue::Int(i) if i >= min && i <= 1 << 16 => i as usize,
            ArgValue::Int(i) => {
                self.diags.push(
                    Diagnostic::error(format!("`{name}` of `{}` cannot be {i}", self.kind))
                        .at(span, format!("must be between {min} and 65536")),
                );
                min.max(1) as usize
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(format!(
                        "`{name}` of `{}` must be an integer, found {}",
                        self.kind,
                        v.describe()
                    ))
                    .at(span, "expected an integer"),
                );
                min.max(1) as usize
            }
        }
    }

    /// One integer ≥ 1, or `[h, w]`.
    fn hw(&mut self, position: usize, names: &[&'static str], default: Option<Hw>) -> Hw {
        self.hw_at_least(position, names, default, 1)
    }

    /// [`Self::hw`] with values from `min` on.
    fn hw_at_least(
        &mut self,
        position: usize,
        names: &[&'static str],
        default: Option<Hw>,
        min: i64,
    ) -> Hw {
        let Some(arg) = self.take(position, names) else {
            if default.is_none() {
                self.missing(names[0]);
            }
            return default.unwrap_or(Hw::square(1));
        };
        match &arg.value {
            ArgValue::List(items) if items.len() == 2 => {
                let h = self.int_of(&items[0].0, &items[0].1, names[0], min);
                let w = self.int_of(&items[1].0, &items[1].1, names[0], min);
                Hw { h, w }
            }
            ArgValue::List(_) => {
                self.type_error(arg, names[0], "an integer or a list `[h, w]`");
                Hw::square(1)
            }
            v => Hw::square(self.int_of(v, &arg.span, names[0], min)),
        }
    }

    /// Padding: `p`, `[h, w]` or `[top, left, bottom, right]`; 0 when absent.
    fn pad(&mut self, position: usize, names: &[&'static str]) -> Pad2 {
        let Some(arg) = self.take(position, names) else {
            return Pad2::default();
        };
        match &arg.value {
            ArgValue::List(items) if items.len() == 2 || items.len() == 4 => {
                let v: Vec<usize> = items
                    .iter()
                    .map(|(x, s)| self.int_of(x, s, names[0], 0))
                    .collect();
                if v.len() == 2 {
                    Pad2 {
                        top: v[0],
                        left: v[1],
                        bottom: v[0],
                        right: v[1],
                    }
                } else {
                    Pad2 {
                        top: v[0],
                        left: v[1],
                        bottom: v[2],
                        right: v[3],
                    }
                }
            }
            ArgValue::List(_) => {
                self.type_error(
                    arg,
                    names[0],
                    "an integer, `[h, w]` or `[top, left, bottom, right]`",
                );
                Pad2::default()
            }
            v => Pad2::uniform(self.int_of(v, &arg.span, names[0], 0)),
        }
    }

    /// All positional arguments as layer references (for `add` and `concat`).
    fn references(&mut self) -> Vec<Name> {
        let mut out = Vec::new();
        for arg in std::mem::take(&mut self.positional) {
            match &arg.value {
                ArgValue::Name(n) => out.push(Name {
                    text: n.clone(),
                    span: arg.span.clone(),
                }),
                _ => self.type_error(arg, "inputs", "a layer name"),
            }
        }
        out
    }

    /// Reports arguments that no parameter asked for.
    fn finish(self) {
        for arg in self.positional.iter().skip(self.positional_used) {
            self.diags.push(
                Diagnostic::error(format!("too many arguments for `{}`", self.kind))
                    .at(&arg.span, "unexpected argument")
                    .help(format!(
                        "usage: {}",
                        KINDS
                            .iter()
                            .find(|(k, _)| *k == self.kind)
                            .map_or("", |(_, s)| *s)
                    )),
            );
        }
        for (name, _, used) in &self.keyword {
            if *used {
                continue;
            }
            let help = match did_you_mean(&name.text, self.known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "usage: {}",
                    KINDS
                        .iter()
                        .find(|(k, _)| *k == self.kind)
                        .map_or("", |(_, s)| *s)
                ),
            };
            self.diags.push(
                Diagnostic::error(format!("`{}` has no argument `{}`", self.kind, name.text))
                    .at(&name.span, "unknown argument")
                    .help(help),
            );
        }
    }
}
