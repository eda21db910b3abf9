//! The `network:` section: input, weights and layers, lowered to a [`NetworkSpec`] whose
//! layers still name their inputs (names are resolved by the layer graph).

use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::dsl::expr::{self, Arg, ArgValue, Call, Chain, Name, Origin};
use crate::dsl::ops;
use crate::dsl::read::{self, Fields};
use crate::dsl::yaml::{Node, Value};
pub use adcnn_core::net::ImagePreprocess;
use adcnn_core::ops::{Op, Shape};

/// The network's name for its input tensor, usable in layer references.
pub const INPUT: &str = "input";

/// Largest input tensor accepted (elements), so that shape arithmetic stays far from overflow.
pub use adcnn_core::input::MAX_INPUT_ELEMENTS;

/// Most layers in one network.
pub const MAX_LAYERS: usize = 100_000;

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    pub name: String,
    pub input: InputSpec,
    pub weights: Option<WeightsSpec>,
    pub layers: Vec<LayerSpec>,
    /// Entry names of multi-layer chains and the layer each stands for (its last).
    pub entries: Vec<(String, String)>,
    /// The `network:` key, for messages about the whole network.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub shape: Shape,
    pub image: Option<ImagePreprocess>,
    pub span: Span,
}

impl InputSpec {
    /// The input as a plan carries it (without its place in the file).
    pub fn to_net(&self) -> adcnn_core::net::Input {
        adcnn_core::net::Input {
            shape: self.shape,
            image: self.image.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum WeightsSource {
    /// Deterministic pseudo-random weights (for benchmarks and tests).
    Random { seed: u64 },
    /// A `.safetensors` file, path resolved against the YAML file's folder.
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct WeightsSpec {
    pub source: WeightsSource,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub name: String,
    pub op: Op,
    /// Input references in order; the first is the chain's current value.
    pub inputs: Vec<Name>,
    /// The operator in the source, for messages about this layer.
    pub span: Span,
}

pub fn lower(
    node: &Node,
    key_span: &Span,
    source: &str,
    dir: &Path,
    default_name: &str,
    diags: &mut Diagnostics,
) -> Option<NetworkSpec> {
    let mut f = Fields::new(node, "`network`", diags)?;
    let name = match f.get("name") {
        Some(n) => read::string(n, "`name`", diags)
            .unwrap_or(default_name)
            .to_string(),
        None => default_name.to_string(),
    };
    let input = f
        .require("input", diags)
        .and_then(|n| lower_input(n, diags));
    let weights = f
        .get("weights")
        .and_then(|n| lower_weights(n, source, dir, diags));
    let layers_node = f.require("layers", diags);
    f.finish(diags);

    let mut layers = Vec::new();
    let mut entries = Vec::new();
    if let Some(items) = layers_node.and_then(|n| read::list(n, "`layers`", diags)) {
        if items.is_empty()
            && let Some(n) = layers_node
        {
            diags.push(Diagnostic::error("the network has no layers").at(&n.span, "empty list"));
        }
        let mut prev = Name {
            text: INPUT.to_string(),
            span: key_span.clone(),
        };
        for item in items {
            if layers.len() > MAX_LAYERS {
                diags.push(
                    Diagnostic::error(format!("more than {MAX_LAYERS} layers"))
                        .at(&item.span, "here"),
                );
                break;
            }
            if let Some(last) = lower_entry(item, &prev, source, &mut layers, &mut entries, diags) {
                prev = last;
            }
        }
    }
    Some(NetworkSpec {
        name,
        input: input?,
        weights,
        layers,
        entries,
        span: key_span.clone(),
    })
}

fn lower_input(node: &Node, diags: &mut Diagnostics) -> Option<InputSpec> {
    let mut f = Fields::new(node, "`input`", diags)?;
    let shape_node = f.require("shape", diags);
    let image = f.get("image");
    f.finish(diags);
    let shape_node = shape_node?;
    let dims = read::list(shape_node, "`shape`", diags)?;
    if dims.len() != 3 {
        diags.push(
            Diagnostic::error(format!(
                "the input shape must be [C, H, W], found {} values",
                dims.len()
            ))
            .at(&shape_node.span, "expected [C, H, W]")
            .help("the batch dimension is always 1 and is not written"),
        );
        return None;
    }
    let d: Vec<usize> = dims
        .iter()
        .filter_map(|n| read::integer(n, "an input dimension", 1, 1 << 16, diags))
        .map(|v| v as usize)
        .collect();
    if d.len() != 3 {
        return None;
    }
    let shape = Shape::new(d[0], d[1], d[2]);
    if shape.numel() > MAX_INPUT_ELEMENTS {
        diags.push(
            Diagnostic::error(format!(
                "input {shape} has more than {MAX_INPUT_ELEMENTS} elements"
            ))
            .at(&shape_node.span, "too large"),
        );
        return None;
    }
    let image = match image {
        Some(n) => Some(lower_image(n, shape, diags)?),
        None => None,
    };
    Some(InputSpec {
        shape,
        image,
        span: shape_node.span.clone(),
    })
}

fn lower_image(node: &Node, shape: Shape, diags: &mut Diagnostics) -> Option<ImagePreprocess> {
    let mut f = Fields::new(node, "`image`", diags)?;
    let resize = f.get("resize");
    let mean = f.get("mean");
    let std = f.get("std");
    f.finish(diags);
    if shape.c != 1 && shape.c != 3 {
        diags.push(
            Diagnostic::error(format!(
                "image inputs have 1 or 3 channels; this input has {}",
                shape.c
            ))
            .at(&node.span, "image preprocessing declared here"),
        );
        return None;
    }
    let resize = match resize {
        Some(n) => {
            let r = read::integer(n, "`resize`", 1, 1 << 16, diags)? as usize;
            if r < shape.h.min(shape.w) {
                diags.push(
                    Diagnostic::error(format!(
                        "`resize` {r} is smaller than the {}×{} crop",
                        shape.h, shape.w
                    ))
                    .at(
                        &n.span,
                        "the shorter side is resized to this, then centre-cropped",
                    ),
                );
            }
            Some(r)
        }
        None => None,
    };
    let c = shape.c;
    let mean = match mean {
        Some(n) => read::numbers(n, "`mean`", c, |_| true, "a number", diags)?,
        None => vec![0.0; c],
    };
    let std = match std {
        Some(n) => read::numbers(n, "`std`", c, |v| v > 0.0, "a positive number", diags)?,
        None => vec![1.0; c],
    };
    Some(ImagePreprocess {
        resize,
        mean: mean.into_iter().map(|v| v as f32).collect(),
        std: std.into_iter().map(|v| v as f32).collect(),
    })
}

fn lower_weights(
    node: &Node,
    source: &str,
    dir: &Path,
    diags: &mut Diagnostics,
) -> Option<WeightsSpec> {
    let text = read::string(node, "`weights`", diags)?;
    let source = if text.starts_with("random") {
        let chain = expr::parse(text, &origin(node, text, source))
            .map_err(|d| diags.push(d))
            .ok()?;
        let call = &chain.ops[0];
        if chain.ops.len() != 1 || !chain.sources.is_empty() || call.kind.text != "random" {
            diags.push(
                Diagnostic::error("`weights` must be `random(seed=N)` or a .safetensors path")
                    .at(&node.span, "here"),
            );
            return None;
        }
        let seed = match call.args.as_slice() {
            [] => 0,
            [
                Arg {
                    keyword,
                    value: ArgValue::Int(s),
                    ..
                },
            ] if keyword.as_ref().is_none_or(|k| k.text == "seed") && *s >= 0 => *s as u64,
            _ => {
                diags.push(
                    Diagnostic::error("`random` takes one argument, a seed ≥ 0")
                        .at(&call.span, "expected `random(seed=N)`"),
                );
                return None;
            }
        };
        WeightsSource::Random { seed }
    } else {
        if !text.ends_with(".safetensors") {
            diags.push(
                Diagnostic::error(format!("`weights` must be `random(seed=N)` or a .safetensors file, found `{text}`"))
                    .at(&node.span, "not a .safetensors path")
                    .help("weights come from a .safetensors file whose tensor names match the layer names"),
            );
            return None;
        }
        WeightsSource::File(dir.join(text))
    };
    Some(WeightsSpec {
        source,
        span: node.span.clone(),
    })
}

/// Where a string scalar's text lies in its file, character by character: plain and quoted
/// scalars may fold line breaks and indentation into one space, which the map follows.
pub fn origin(node: &Node, text: &str, source: &str) -> Origin {
    let whole = node.span.range.clone();
    let raw = source.get(whole.clone()).unwrap_or("");
    let skip_quote = usize::from(raw.starts_with(['"', '\'']));
    Origin {
        file: node.span.file,
        whole: whole.clone(),
        map: align(text, raw, whole.start + skip_quote, skip_quote),
    }
}

/// Maps every byte of `text` to an offset in `raw` (shifted by `base`), treating any run of
/// white space in `raw` as matching one space in `text`. `None` if they differ otherwise.
fn align(text: &str, raw: &str, base: usize, skip: usize) -> Option<Vec<usize>> {
    let raw = raw.as_bytes();
    let mut map = Vec::with_capacity(text.len() + 1);
    let mut j = skip;
    for &c in text.as_bytes() {
        if j < raw.len() && raw[j] == c {
            map.push(base - skip + j);
            j += 1;
        } else if c == b' ' && j < raw.len() && raw[j].is_ascii_whitespace() {
            map.push(base - skip + j);
            while j < raw.len() && raw[j].is_ascii_whitespace() {
                j += 1;
            }
        } else {
            return None;
        }
    }
    map.push(base - skip + j);
    Some(map)
}

/// Lowers one `- NAME: …` entry, appending its layers. Returns the name of its last layer.
fn lower_entry(
    item: &Node,
    prev: &Name,
    source: &str,
    layers: &mut Vec<LayerSpec>,
    entries: &mut Vec<(String, String)>,
    diags: &mut Diagnostics,
) -> Option<Name> {
    let pairs = match &item.value {
        Value::Map(p) if p.len() == 1 => p,
        Value::Map(p) => {
            diags.push(
                Diagnostic::error(format!("a layer entry has one name, this one has {}", p.len()))
                    .at(&item.span, "several keys in one entry")
                    .help("write each layer as `- NAME: EXPRESSION`; options of a map-form layer go one level deeper"),
            );
            return None;
        }
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "a layer entry must be `NAME: EXPRESSION`, found {}",
                    other.describe()
                ))
                .at(&item.span, "expected `- NAME: EXPRESSION`")
                .help("e.g. `- conv1: conv(64, k=3, p=1) | relu`"),
            );
            return None;
        }
    };
    let (key, value) = &pairs[0];
    let entry = read::string(key, "a layer name", diags)?;
    if !read::is_valid_name(entry) || entry == INPUT {
        diags.push(
            Diagnostic::error(format!("`{entry}` is not a valid layer name"))
                .at(&key.span, "invalid name")
                .help("names start with a letter or `_` and use letters, digits, `_` and `.`; `input` is reserved"),
        );
        return None;
    }
    let chain = match &value.value {
        Value::Str(text) => expr::parse(text, &origin(value, text, source))
            .map_err(|d| diags.push(d))
            .ok()?,
        Value::Map(_) => map_form(value, diags)?,
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "layer `{entry}` must be a layer expression or a map, found {}",
                    other.describe()
                ))
                .at(&value.span, "expected e.g. `conv(64, k=3) | relu`"),
            );
            return None;
        }
    };

    let single = chain.ops.len() == 1;
    let mut current = if chain.sources.is_empty() {
        vec![Name {
            text: prev.text.clone(),
            span: chain.ops[0].span.clone(),
        }]
    } else {
        chain.sources.clone()
    };
    let mut last = None;
    for (i, call) in chain.ops.iter().enumerate() {
        let name = match (&call.alias, single) {
            (Some(a), _) => format!("{entry}.{}", a.text),
            (None, true) => entry.to_string(),
            (None, false) => format!("{entry}.{i}"),
        };
        let lowered = ops::lower(call, diags);
        let Some(lowered) = lowered else {
            // Keep going so later operators of the chain are checked too.
            current = vec![Name {
                text: name,
                span: call.span.clone(),
            }];
            continue;
        };
        let mut inputs = current;
        inputs.extend(lowered.extra_inputs);
        layers.push(LayerSpec {
            name: name.clone(),
            op: lowered.op,
            inputs,
            span: call.span.clone(),
        });
        current = vec![Name {
            text: name.clone(),
            span: call.span.clone(),
        }];
        last = Some(Name {
            text: name,
            span: key.span.clone(),
        });
    }
    let last = last?;
    if !single || chain.ops[0].alias.is_some() {
        entries.push((entry.to_string(), last.text.clone()));
    }
    Some(last)
}

/// A layer written as a YAML map: `{ op: conv, out: 64, k: 3, from: [a, b] }`.
fn map_form(node: &Node, diags: &mut Diagnostics) -> Option<Chain> {
    let Value::Map(pairs) = &node.value else {
        return None;
    };
    let mut kind = None;
    let mut sources = Vec::new();
    let mut args = Vec::new();
    for (k, v) in pairs {
        let Some(key) = read::string(k, "an argument name", diags) else {
            continue;
        };
        match key {
            "op" => {
                kind = read::string(v, "`op`", diags).map(|s| Name {
                    text: s.to_string(),
                    span: v.span.clone(),
                })
            }
            "from" => {
                let items: Vec<&Node> = match &v.value {
                    Value::List(items) => items.iter().collect(),
                    _ => vec![v],
                };
                for it in items {
                    if let Some(s) = read::string(it, "`from`", diags) {
                        sources.push(Name {
                            text: s.to_string(),
                            span: it.span.clone(),
                        });
                    }
                }
            }
            _ => match arg_value(v, diags) {
                Some(value) => args.push(Arg {
                    keyword: Some(Name {
                        text: key.to_string(),
                        span: k.span.clone(),
                    }),
                    value,
                    span: v.span.clone(),
                }),
                None => continue,
            },
        }
    }
    let Some(kind) = kind else {
        diags.push(
            Diagnostic::error("a map-form layer needs `op:`")
                .at(&node.span, "no `op` here")
                .help("e.g. `{ op: conv, out: 64, k: 3 }`"),
        );
        return None;
    };
    Some(Chain {
        sources,
        ops: vec![Call {
            kind,
            args,
            alias: None,
            span: node.span.clone(),
        }],
    })
}

fn arg_value(node: &Node, diags: &mut Diagnostics) -> Option<ArgValue> {
    Some(match &node.value {
        Value::Int(i) => ArgValue::Int(*i),
        Value::Float(f) => ArgValue::Float(*f),
        Value::Bool(b) => ArgValue::Bool(*b),
        Value::Str(s) => ArgValue::Name(s.clone()),
        Value::List(items) => ArgValue::List(
            items
                .iter()
                .map(|i| arg_value(i, diags).map(|v| (v, i.span.clone())))
                .collect::<Option<_>>()?,
        ),
        other => {
            diags.push(
                Diagnostic::error(format!("a layer argument cannot be {}", other.describe()))
                    .at(&node.span, "expected a number, boolean, name or list"),
            );
            return None;
        }
    })
}
