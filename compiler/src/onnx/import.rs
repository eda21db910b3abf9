//! ONNX graph → layers: validation (inputs, outputs, topological order, cycles), per-node
//! lowering to [`Op`]s with their weights, shape tracking and layer naming.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::fold;
use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use super::tensor::{self, Const, Data};
use super::{ImportError, Imported, Tensor};
use adcnn_core::ops::{Conv2d, Hw, Op, Pad2, Pool2d, Shape};
use adcnn_core::ops::{pool_out, window_out};

/// Every operator type the importer maps (default ONNX domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Pad",
    "PRelu",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Unsqueeze",
];

/// Opsets whose operator semantics the importer knows.
pub const MIN_OPSET: i64 = 7;
pub const MAX_OPSET: i64 = 22;

pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// Whether the importer knows the operator (possibly only on constant inputs).
pub fn is_supported(domain: &str, op: &str) -> bool {
    is_default_domain(domain)
        && (SUPPORTED_OPS.contains(&op) || fold::CONSTANT_ONLY_OPS.contains(&op))
}

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    Input,
    Layer(usize),
}

/// A runtime tensor: its producer and ONNX dims (batch included, always 1).
#[derive(Clone, Debug)]
struct Val {
    src: Src,
    dims: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    Tensor(Val),
    Const(Rc<Const>),
}

/// One DSL layer.
#[derive(Clone, Debug)]
pub struct Layer {
    pub op: Op,
    pub inputs: Vec<Src>,
    /// `(suffix, dims, values)`: `{layer}.{suffix}` in the weights file.
    pub weights: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
    /// The name from the weight initializer (`features.0.weight` → `features.0`).
    preferred: Option<String>,
    /// The module path from the node name (`/layer1/layer1.0/conv1/Conv` → `layer1.0.conv1`).
    path: String,
    /// The node name's last segment (`Conv`, `Relu_1`), lower-cased.
    op_seg: String,
    op_type: String,
    from_matmul: bool,
    pub name: String,
}

/// What one node becomes.
enum Lowered {
    Layer(Box<Layer>, Vec<usize>),
    Alias(Value),
}

/// The node being lowered, for attributes, inputs and error messages.
struct Node<'a> {
    node: &'a NodeProto,
    name: String,
    opset: i64,
}

impl<'a> Node<'a> {
    fn op(&self) -> String {
        self.node.op_type().to_string()
    }

    fn unsupported(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            op_type: self.op(),
            node: self.name.clone(),
            reason: reason.into(),
        }
    }

    fn bad_attr(&self, a: &AttributeProto, supported: impl Into<String>) -> ImportError {
        ImportError::UnsupportedAttribute {
            op_type: self.op(),
            node: self.name.clone(),
            attribute: a.name().to_string(),
            value: describe_attr(a),
            supported: supported.into(),
        }
    }

    /// Rejects attributes not in `allowed`.
    fn check_attrs(&self, allowed: &[&str]) -> Result<(), ImportError> {
        for a in &self.node.attribute {
            if !allowed.contains(&a.name()) {
                let supported = if allowed.is_empty() {
                    "no attributes".to_string()
                } else {
                    format!("the attributes {}", allowed.join(", "))
                };
                return Err(self.bad_attr(a, supported));
            }
        }
        Ok(())
    }

    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i())
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f())
    }

    fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
    }

    /// The name of input `i`, if present and not empty (ONNX's "optional input omitted").
    fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

fn describe_attr(a: &AttributeProto) -> String {
    if !a.ints.is_empty() {
        format!("{:?}", a.ints)
    } else if !a.floats.is_empty() {
        format!("{:?}", a.floats)
    } else if a.s.is_some() {
        format!("{:?}", String::from_utf8_lossy(a.s()))
    } else if a.t.is_some() {
        "a tensor".into()
    } else if a.f.is_some() {
        format!("{}", a.f())
    } else if a.i.is_some() {
        format!("{}", a.i())
    } else {
        "(empty)".into()
    }
}

/// Node names for messages: the ONNX name, or `#index` when it has none.
fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("#{index} ({})", node.op_type())
    } else {
        node.name().to_string()
    }
}

struct Ctx<'a> {
    layers: Vec<Layer>,
    values: HashMap<&'a str, Value>,
    /// How many live nodes (and the graph output) read each value.
    uses: HashMap<&'a str, usize>,
}

impl<'a> Ctx<'a> {
    fn tensor(&self, n: &Node, i: usize) -> Result<Val, ImportError> {
        let name = n
            .input_name(i)
            .ok_or_else(|| n.unsupported(format!("input {i} is missing")))?;
        match self.values.get(name) {
            Some(Value::Tensor(v)) => Ok(v.clone()),
            Some(Value::Const(_)) => Err(n.unsupported(format!(
                "input {i} (`{name}`) is a constant; only the network's data flows there"
            ))),
            None => Err(missing(n, name)),
        }
    }

    fn constant(&self, n: &Node, i: usize) -> Result<Option<Rc<Const>>, ImportError> {
        let Some(name) = n.input_name(i) else {
            return Ok(None);
        };
        match self.values.get(name) {
            Some(Value::Const(c)) => Ok(Some(c.clone())),
            Some(Value::Tensor(_)) => Err(n.unsupported(format!(
                "input {i} (`{name}`) is computed by the graph; it must be a constant (initializer)"
            ))),
            None => Err(missing(n, name)),
        }
    }

    fn required_constant(&self, n: &Node, i: usize, what: &str) -> Result<Rc<Const>, ImportError> {
        self.constant(n, i)?
            .ok_or_else(|| n.unsupported(format!("the {what} (input {i}) is missing")))
    }
}

fn missing(n: &Node, value: &str) -> ImportError {
    ImportError::MissingValue {
        op_type: n.op(),
        node: n.name.clone(),
        value: value.to_string(),
    }
}

/// The ai.onnx opset the model imports.
fn opset(model: &ModelProto) -> Result<i64, ImportError> {
    let version = model
        .opset_import
        .iter()
        .find(|o| is_default_domain(o.domain()))
        .map(|o| o.version())
        .ok_or(ImportError::NoOpset)?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&version) {
        return Err(ImportError::Opset {
            version,
            min: MIN_OPSET,
            max: MAX_OPSET,
        });
    }
    Ok(version)
}

/// Nodes in topological order (ONNX requires it, but we sort rather than trust it), after
/// checking that every input has a producer.
fn topo_order(g: &GraphProto, known: &HashSet<&str>) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in g.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if known.contains(out.as_str()) {
                return Err(ImportError::DuplicateValue {
                    value: out.clone(),
                    first: "a graph input or initializer".into(),
                    second: node_label(node, i),
                });
            }
            if let Some(&j) = producer.get(out.as_str()) {
                return Err(ImportError::DuplicateValue {
                    value: out.clone(),
                    first: node_label(&g.node[j], j),
                    second: node_label(node, i),
                });
            }
            producer.insert(out, i);
        }
    }
    let mut indegree = vec![0usize; g.node.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, node) in g.node.iter().enumerate() {
        for inp in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(inp.as_str()) {
                indegree[i] += 1;
                consumers[p].push(i);
            } else if !known.contains(inp.as_str()) {
                return Err(ImportError::MissingValue {
                    op_type: node.op_type().to_string(),
                    node: node_label(node, i),
                    value: inp.clone(),
                });
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..g.node.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    if order.len() != g.node.len() {
        let mut nodes: Vec<String> = (0..g.node.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| node_label(&g.node[i], i))
            .collect();
        nodes.truncate(8);
        return Err(ImportError::Cycle { nodes });
    }
    Ok(order)
}

/// The graph's one data input: `[N, C, H, W]` or `[N, F]` float32, N dynamic or 1.
fn graph_input(g: &GraphProto, inits: &HashSet<&str>) -> Result<(String, Vec<usize>), ImportError> {
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !inits.contains(i.name()))
        .collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => {
            return Err(ImportError::Input {
                name: String::new(),
                reason: "the graph has no data input".into(),
            });
        }
        many => {
            return Err(ImportError::Input {
                name: many[1].name().to_string(),
                reason: format!(
                    "the graph has {} data inputs; networks take one",
                    many.len()
                ),
            });
        }
    };
    let name = input.name().to_string();
    let err = |reason: String| ImportError::Input {
        name: name.clone(),
        reason,
    };
    use super::proto::tensor_shape_proto::dimension::Value as Dim;
    use super::proto::type_proto::Value as Type;
    let Some(Type::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(err("not a tensor".into()));
    };
    if t.elem_type() != tensor::FLOAT {
        return Err(err(format!(
            "element type {}; float32 is supported",
            tensor::type_name(t.elem_type())
        )));
    }
    let Some(shape) = &t.shape else {
        return Err(err(
            "no shape; a static [N, C, H, W] shape is required".into()
        ));
    };
    let mut dims = Vec::new();
    for (i, d) in shape.dim.iter().enumerate() {
        let v = match &d.value {
            Some(Dim::DimValue(v)) if *v > 0 => *v as usize,
            _ if i == 0 => 1,
            Some(Dim::DimValue(v)) => return Err(err(format!("dimension {i} is {v}"))),
            _ => {
                return Err(err(format!(
                    "dimension {i} is dynamic; only the batch dimension may be (it is fixed to 1)"
                )));
            }
        };
        if v > 1 << 20 {
            return Err(err(format!("dimension {i} is {v}, too large")));
        }
        dims.push(v);
    }
    if prod(&dims) > crate::dsl::network::MAX_INPUT_ELEMENTS {
        return Err(err(format!(
            "dims {dims:?} exceed {} elements",
            crate::dsl::network::MAX_INPUT_ELEMENTS
        )));
    }
    if dims[..].first() != Some(&1) {
        return Err(err(format!("dims {dims:?}: the batch must be 1")));
    }
    if dims.len() != 4 && dims.len() != 2 {
        return Err(err(format!(
            "dims {dims:?}: inputs are [N, C, H, W] images or [N, F] vectors"
        )));
    }
    Ok((name, dims))
}

/// Number of elements, saturating (dims of hostile models may overflow).
fn prod(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// The DSL shape of ONNX dims: `[1, C, H, W]` → `[C, H, W]`, `[1, N]` → `[N, 1, 1]`.
fn dsl_shape(dims: &[usize]) -> Option<Shape> {
    match dims {
        [1, c, h, w] => Some(Shape::new(*c, *h, *w)),
        [1, n] => Some(Shape::new(*n, 1, 1)),
        _ => None,
    }
}

pub fn lower(model: &ModelProto, name: &str) -> Result<Imported, ImportError> {
    let graph = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let opset = opset(model)?;
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    let (input_name, input_dims) = graph_input(graph, &inits)?;
    let mut known = inits.clone();
    known.insert(&input_name);
    let order = topo_order(graph, &known)?;

    let output = match graph.output.as_slice() {
        [one] => one.name(),
        [] => {
            return Err(ImportError::Output {
                reason: "the graph has no output".into(),
            });
        }
        many => {
            return Err(ImportError::Output {
                reason: format!(
                    "the graph has {} outputs; networks have one (detection heads: concat them)",
                    many.len()
                ),
            });
        }
    };

    // Live nodes: those the output depends on.
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            producer.insert(out, i);
        }
    }
    let mut live = vec![false; graph.node.len()];
    let mut stack: Vec<&str> = vec![output];
    while let Some(v) = stack.pop() {
        if let Some(&p) = producer.get(v)
            && !live[p]
        {
            live[p] = true;
            stack.extend(graph.node[p].input.iter().map(String::as_str));
        }
    }
    let mut uses: HashMap<&str, usize> = HashMap::new();
    *uses.entry(output).or_default() += 1;
    for (i, node) in graph.node.iter().enumerate() {
        if live[i] {
            for inp in node.input.iter().filter(|s| !s.is_empty()) {
                *uses.entry(inp).or_default() += 1;
            }
        }
    }

    let mut ctx = Ctx {
        layers: Vec::new(),
        values: HashMap::new(),
        uses,
    };
    ctx.values.insert(
        &input_name,
        Value::Tensor(Val {
            src: Src::Input,
            dims: input_dims.clone(),
        }),
    );
    let init_by_name: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    // Initializers are decoded when a live node reads them.
    for i in order.into_iter().filter(|&i| live[i]) {
        let node = &graph.node[i];
        for inp in node.input.iter().filter(|s| !s.is_empty()) {
            if !ctx.values.contains_key(inp.as_str())
                && let Some(t) = init_by_name.get(inp.as_str())
            {
                ctx.values
                    .insert(inp, Value::Const(Rc::new(tensor::decode(t)?)));
            }
        }
        let n = Node {
            node,
            name: node_label(node, i),
            opset,
        };
        if !is_supported(node.domain(), node.op_type()) {
            return Err(ImportError::UnsupportedOp {
                op_type: node.op_type().to_string(),
                node: n.name.clone(),
                domain: if is_default_domain(node.domain()) {
                    String::new()
                } else {
                    format!(" (domain `{}`)", node.domain())
                },
                supported: SUPPORTED_OPS.join(", "),
            });
        }
        for (k, out) in node.output.iter().enumerate().skip(1) {
            if !out.is_empty() && ctx.uses.get(out.as_str()).is_some_and(|&u| u > 0) {
                return Err(n.unsupported(format!(
                    "output {k} (`{out}`) is used; only the first output is supported"
                )));
            }
        }
        let Some(out) = node.output.first().filter(|o| !o.is_empty()) else {
            return Err(n.unsupported("the node has no output"));
        };
        let value = match lower_node(&n, &mut ctx)? {
            Lowered::Alias(v) => v,
            Lowered::Layer(mut layer, dims) => {
                if prod(&dims) > super::MAX_TENSOR_ELEMENTS {
                    return Err(n.unsupported(format!("output dims {dims:?} are too large")));
                }
                let (path, op_seg) = module_path(&scope_name(node));
                layer.path = path;
                layer.op_seg = op_seg;
                layer.op_type = node.op_type().to_string();
                ctx.layers.push(*layer);
                Value::Tensor(Val {
                    src: Src::Layer(ctx.layers.len() - 1),
                    dims,
                })
            }
        };
        ctx.values.insert(out, value);
    }

    let out_val = match ctx.values.get(output) {
        Some(Value::Tensor(v)) => v.clone(),
        Some(Value::Const(_)) => {
            return Err(ImportError::Output {
                reason: format!("the output `{output}` is a constant"),
            });
        }
        None => {
            return Err(ImportError::Output {
                reason: format!("no node produces the output `{output}`"),
            });
        }
    };
    let Src::Layer(last) = out_val.src else {
        return Err(ImportError::Output {
            reason: "the output is the input: the network has no layers".into(),
        });
    };
    let mut layers = ctx.layers;
    // Layers are in ONNX order, so every layer's inputs come before it; `last` may not be
    // the final one when a node after it is dead (folded), so keep only its ancestors.
    layers.truncate(last + 1);
    name_layers(&mut layers);

    let mut weights = Vec::new();
    let mut parameters = 0;
    for l in &layers {
        for (suffix, dims, data) in &l.weights {
            if !suffix.starts_with("running") {
                parameters += data.len();
            }
            weights.push(Tensor {
                name: format!("{}.{suffix}", l.name),
                dims: dims.clone(),
                data: data.clone(),
            });
        }
    }
    let input = dsl_shape(&input_dims).ok_or_else(|| ImportError::Input {
        name: input_name.clone(),
        reason: format!("dims {input_dims:?}"),
    })?;
    let provenance = format!(
        "{} {}, opset {opset}",
        model.producer_name(),
        model.producer_version()
    );
    let (entries, layer_count) = super::emit::entries(&layers);
    Ok(Imported {
        name: name.to_string(),
        input,
        entries,
        layers: layer_count,
        weights,
        parameters,
        provenance,
    })
}

fn layer(op: Op, inputs: Vec<Src>) -> Box<Layer> {
    Box::new(Layer {
        op,
        inputs,
        weights: Vec::new(),
        preferred: None,
        path: String::new(),
        op_seg: String::new(),
        op_type: String::new(),
        from_matmul: false,
        name: String::new(),
    })
}

/// `features.0.weight` → `features.0`, when that is a valid layer name.
fn preferred_name(value_name: Option<&str>) -> Option<String> {
    let base = value_name?.strip_suffix(".weight")?;
    crate::dsl::read::is_valid_name(base)
        .then(|| base.to_string())
        .filter(|b| b != crate::dsl::network::INPUT)
}

fn rank(n: &Node, x: &Val, allowed: &[usize]) -> Result<(), ImportError> {
    if allowed.contains(&x.dims.len()) {
        Ok(())
    } else {
        let what = if allowed == [4] {
            "[N, C, H, W]"
        } else {
            "[N, C, H, W] or [N, F]"
        };
        Err(n.unsupported(format!(
            "input dims {:?}; supported: {what} with N = 1",
            x.dims
        )))
    }
}

/// Spatial `(kh, kw)`-style pair from an attribute, default `default`, all ≥ `min`.
fn pair(n: &Node, name: &str, default: usize, min: usize) -> Result<Hw, ImportError> {
    match n.ints(name) {
        None => Ok(Hw::square(default)),
        Some(&[h, w]) if h >= min as i64 && w >= min as i64 && h <= 1 << 16 && w <= 1 << 16 => {
            Ok(Hw {
                h: h as usize,
                w: w as usize,
            })
        }
        Some(_) => Err(n.bad_attr(
            n.attr(name).unwrap_or(&AttributeProto::default()),
            format!("two values (height, width), each ≥ {min}"),
        )),
    }
}

/// Explicit spatial padding from `auto_pad` and `pads`.
fn spatial_pads(n: &Node, hw: (usize, usize), k: Hw, s: Hw, d: Hw) -> Result<Pad2, ImportError> {
    let auto = n.string("auto_pad").unwrap_or_default();
    let explicit = || -> Result<Pad2, ImportError> {
        match n.ints("pads") {
            None => Ok(Pad2::default()),
            Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|v| (0..=1 << 16).contains(v)) => {
                Ok(Pad2 {
                    top: t as usize,
                    left: l as usize,
                    bottom: b as usize,
                    right: r as usize,
                })
            }
            Some(_) => Err(n.bad_attr(
                n.attr("pads").unwrap_or(&AttributeProto::default()),
                "four non-negative values [top, left, bottom, right]",
            )),
        }
    };
    match auto.as_str() {
        "" | "NOTSET" => explicit(),
        "VALID" => Ok(Pad2::default()),
        "SAME_UPPER" | "SAME_LOWER" => {
            let same = |len: usize, k: usize, s: usize, d: usize| {
                let out = len.div_ceil(s);
                let total = (out.saturating_sub(1) * s + (k - 1) * d + 1).saturating_sub(len);
                if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            };
            let (top, bottom) = same(hw.0, k.h, s.h, d.h);
            let (left, right) = same(hw.1, k.w, s.w, d.w);
            Ok(Pad2 {
                top,
                left,
                bottom,
                right,
            })
        }
        _ => Err(n.bad_attr(
            n.attr("auto_pad").unwrap_or(&AttributeProto::default()),
            "auto_pad NOTSET, VALID, SAME_UPPER or SAME_LOWER",
        )),
    }
}

fn scalar(n: &Node, c: &Const, what: &str) -> Result<f32, ImportError> {
    let v = c.floats()?;
    match v {
        [x] => Ok(*x),
        _ => Err(n.unsupported(format!(
            "the {what} `{}` has {} values; a scalar is expected",
            c.name,
            v.len()
        ))),
    }
}

/// Folds a node whose inputs are all constants, if it is one of the foldable kinds.
fn try_fold(n: &Node, ctx: &Ctx) -> Result<Option<Lowered>, ImportError> {
    let op = n.node.op_type();
    let constant_only = fold::CONSTANT_ONLY_OPS.contains(&op);
    if !constant_only && !fold::FOLDABLE_OPS.contains(&op) {
        return Ok(None);
    }
    let mut inputs: Vec<Option<&Const>> = Vec::new();
    let mut all_const = !n.node.input.is_empty();
    for name in &n.node.input {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        match ctx.values.get(name.as_str()) {
            Some(Value::Const(c)) => inputs.push(Some(c)),
            Some(Value::Tensor(_)) => all_const = false,
            None => return Err(missing(n, name)),
        }
    }
    if !all_const {
        return if constant_only {
            Err(n.unsupported(
                "supported only on constant inputs (shape arithmetic left by the exporter)",
            ))
        } else {
            Ok(None)
        };
    }
    let Some(x) = inputs.first().copied().flatten() else {
        return Err(n.unsupported("input 0 is missing"));
    };
    let with_dims = |dims: Vec<usize>| Const {
        name: x.name.clone(),
        dims,
        data: x.data.clone(),
    };
    let folded: Result<Const, String> = match op {
        "Concat" => {
            let xs: Vec<&Const> = inputs.iter().flatten().copied().collect();
            fold::concat(&xs, n.int("axis", 0))?
        }
        "Reshape" => {
            let shape = inputs
                .get(1)
                .copied()
                .flatten()
                .ok_or_else(|| n.unsupported("shape missing"))?;
            Ok(with_dims(reshape_target(
                n,
                &x.dims,
                shape.ints()?,
                n.int("allowzero", 0) != 0,
            )?))
        }
        "Squeeze" | "Unsqueeze" => {
            let axes: Option<Vec<i64>> = match inputs.get(1).copied().flatten() {
                Some(a) => Some(a.ints()?.to_vec()),
                None => n.ints("axes").map(<[i64]>::to_vec),
            };
            Ok(with_dims(if op == "Squeeze" {
                squeeze(n, &x.dims, axes.as_deref())?
            } else {
                unsqueeze(n, &x.dims, axes.as_deref().unwrap_or(&[]))?
            }))
        }
        "Flatten" => {
            let r = x.dims.len() as i64;
            let axis = n.int("axis", 1);
            let axis = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&axis) {
                return Err(n.unsupported(format!("axis {axis} out of range for rank {r}")));
            }
            let (a, b) = x.dims.split_at(axis as usize);
            Ok(with_dims(vec![prod(a), prod(b)]))
        }
        _ => fold::fold(
            op,
            &inputs,
            &|name| n.attr(name).map(|a| a.i()),
            &|name| n.ints(name).map(<[i64]>::to_vec),
            &|name| n.attr(name).and_then(|a| a.t.as_ref()).map(tensor::decode),
            n.opset,
        )?,
    };
    let mut c =
        folded.map_err(|reason| n.unsupported(format!("cannot fold constants: {reason}")))?;
    c.name = n.node.output.first().cloned().unwrap_or_default();
    Ok(Some(Lowered::Alias(Value::Const(Rc::new(c)))))
}

fn lower_node(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    if let Some(folded) = try_fold(n, ctx)? {
        return Ok(folded);
    }
    let op = n.node.op_type();
    match op {
        "Identity" => {
            n.check_attrs(&[])?;
            let name = n.input_name(0).ok_or_else(|| n.unsupported("no input"))?;
            ctx.values
                .get(name)
                .cloned()
                .map(Lowered::Alias)
                .ok_or_else(|| missing(n, name))
        }
        "Constant" => lower_constant(n),
        "Relu" | "Sigmoid" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let op = if op == "Relu" { Op::Relu } else { Op::Sigmoid };
            Ok(Lowered::Layer(layer(op, vec![x.src]), x.dims))
        }
        "LeakyRelu" => {
            n.check_attrs(&["alpha"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let slope = n.float("alpha", 0.01);
            if !slope.is_finite() {
                return Err(n.bad_attr(
                    n.attr("alpha").unwrap_or(&AttributeProto::default()),
                    "a finite slope",
                ));
            }
            Ok(Lowered::Layer(
                layer(Op::LeakyRelu { slope }, vec![x.src]),
                x.dims,
            ))
        }
        "Clip" => lower_clip(n, ctx),
        "PRelu" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let c = x.dims[1];
            let slope = ctx.required_constant(n, 1, "slope")?;
            let v = slope.floats()?;
            let per_channel = v.len() == c
                && slope.dims.iter().filter(|&&d| d != 1).count() <= 1
                && (slope.dims.len() < x.dims.len() - 1
                    || slope.dims.len() == x.dims.len() && slope.dims[1] == c
                    || slope.dims.len() == x.dims.len() - 1 && slope.dims[0] == c);
            let data = if v.len() == 1 {
                vec![v[0]; c]
            } else if per_channel {
                v.to_vec()
            } else {
                return Err(n.unsupported(format!(
                    "slope dims {:?} on input {:?}; supported: one slope, or one per channel ([C] or [C, 1, 1])",
                    slope.dims, x.dims
                )));
            };
            let mut l = layer(Op::PRelu, vec![x.src]);
            l.weights.push(("weight", vec![c], data));
            l.preferred = preferred_name(n.input_name(1));
            Ok(Lowered::Layer(l, x.dims))
        }
        "Conv" => lower_conv(n, ctx),
        "MaxPool" | "AveragePool" => lower_pool(n, ctx),
        "GlobalAveragePool" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[4])?;
            let dims = vec![1, x.dims[1], 1, 1];
            Ok(Lowered::Layer(layer(Op::GlobalAvgPool, vec![x.src]), dims))
        }
        "BatchNormalization" => lower_bn(n, ctx),
        "ReduceMean" => {
            // The dynamo exporter writes adaptive_avg_pool2d(1) as a mean over H and W.
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[4])?;
            let axes: Option<Vec<i64>> = if n.opset >= 18 {
                n.check_attrs(&["keepdims", "noop_with_empty_axes"])?;
                ctx.constant(n, 1)?
                    .map(|c| c.ints().map(<[i64]>::to_vec))
                    .transpose()?
            } else {
                n.check_attrs(&["axes", "keepdims"])?;
                n.ints("axes").map(<[i64]>::to_vec)
            };
            let mut axes: Vec<i64> = axes
                .unwrap_or_default()
                .iter()
                .map(|&a| if a < 0 { a + 4 } else { a })
                .collect();
            axes.sort_unstable();
            if axes != [2, 3] {
                return Err(n.unsupported(format!(
                    "a mean over axes {axes:?}; supported: over height and width (2, 3)"
                )));
            }
            let dims = if n.int("keepdims", 1) != 0 {
                vec![1, x.dims[1], 1, 1]
            } else {
                vec![1, x.dims[1]]
            };
            Ok(Lowered::Layer(layer(Op::GlobalAvgPool, vec![x.src]), dims))
        }
        "Add" => lower_add(n, ctx),
        "Concat" => {
            n.check_attrs(&["axis"])?;
            let xs = (0..n.node.input.len())
                .map(|i| ctx.tensor(n, i))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(first) = xs.first() else {
                return Err(n.unsupported("no inputs"));
            };
            rank(n, first, &[2, 4])?;
            let r = first.dims.len() as i64;
            let axis = n.int("axis", 1);
            let axis = if axis < 0 { axis + r } else { axis };
            if axis != 1 {
                return Err(n.bad_attr(
                    n.attr("axis").unwrap_or(&AttributeProto::default()),
                    "concatenation on the channel axis (1)",
                ));
            }
            let mut dims = first.dims.clone();
            for x in &xs[1..] {
                if x.dims.len() != first.dims.len() || x.dims[2..] != first.dims[2..] {
                    return Err(n.unsupported(format!(
                        "inputs of dims {:?} and {:?} differ outside the channel axis",
                        first.dims, x.dims
                    )));
                }
                dims[1] += x.dims[1];
            }
            if xs.len() == 1 {
                return Ok(Lowered::Alias(Value::Tensor(first.clone())));
            }
            Ok(Lowered::Layer(
                layer(Op::Concat, xs.iter().map(|x| x.src).collect()),
                dims,
            ))
        }
        "Flatten" => {
            n.check_attrs(&["axis"])?;
            let x = ctx.tensor(n, 0)?;
            let r = x.dims.len() as i64;
            let axis = n.int("axis", 1);
            let axis = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&axis) {
                return Err(n.unsupported(format!("axis {axis} out of range for rank {r}")));
            }
            let (a, b) = x.dims.split_at(axis as usize);
            reshape_to(n, x.clone(), vec![prod(a), prod(b)])
        }
        "Reshape" => {
            n.check_attrs(&["allowzero"])?;
            let x = ctx.tensor(n, 0)?;
            let shape = ctx.required_constant(n, 1, "shape")?;
            let target = reshape_target(n, &x.dims, shape.ints()?, n.int("allowzero", 0) != 0)?;
            reshape_to(n, x, target)
        }
        "Squeeze" | "Unsqueeze" => {
            let x = ctx.tensor(n, 0)?;
            let axes: Option<Vec<i64>> = if n.opset >= 13 {
                n.check_attrs(&[])?;
                ctx.constant(n, 1)?
                    .map(|c| c.ints().map(<[i64]>::to_vec))
                    .transpose()?
            } else {
                n.check_attrs(&["axes"])?;
                n.ints("axes").map(<[i64]>::to_vec)
            };
            let target = if op == "Squeeze" {
                squeeze(n, &x.dims, axes.as_deref())?
            } else {
                unsqueeze(n, &x.dims, axes.as_deref().unwrap_or(&[]))?
            };
            reshape_to(n, x, target)
        }
        "Gemm" | "MatMul" => lower_linear(n, ctx),
        "Softmax" => {
            n.check_attrs(&["axis"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let r = x.dims.len() as i64;
            let axis = n.int("axis", if n.opset >= 13 { -1 } else { 1 });
            let axis = if axis < 0 { axis + r } else { axis };
            // Before opset 13, softmax runs over all axes from `axis` on (flattened).
            let ok = axis == 1 && (n.opset >= 13 || prod(&x.dims[2..]) == 1);
            if !ok {
                return Err(n.bad_attr(
                    n.attr("axis").unwrap_or(&AttributeProto::default()),
                    format!(
                        "softmax over the channel axis (1) of dims {:?}{}",
                        x.dims,
                        if n.opset < 13 {
                            ", which before opset 13 needs H = W = 1"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok(Lowered::Layer(layer(Op::Softmax, vec![x.src]), x.dims))
        }
        "Pad" => lower_pad(n, ctx),
        "Dropout" => {
            n.check_attrs(&["ratio", "seed", "is_test"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            if let Some(t) = ctx.constant(n, 2)? {
                let training = match &t.data {
                    Data::F32(v) => v.iter().any(|&x| x != 0.0),
                    Data::I64(v) => v.iter().any(|&x| x != 0),
                };
                if training {
                    return Err(n.unsupported("training_mode is true; inference needs false"));
                }
            } else if n.input_name(2).is_some() {
                return Err(n.unsupported("training_mode must be a constant"));
            }
            Ok(Lowered::Layer(layer(Op::Dropout, vec![x.src]), x.dims))
        }
        _ => Err(ImportError::UnsupportedOp {
            op_type: op.to_string(),
            node: n.name.clone(),
            domain: String::new(),
            supported: SUPPORTED_OPS.join(", "),
        }),
    }
}

fn lower_constant(n: &Node) -> Result<Lowered, ImportError> {
    let [a] = n.node.attribute.as_slice() else {
        return Err(n.unsupported("a Constant has exactly one value attribute"));
    };
    let name = n.node.output.first().cloned().unwrap_or_default();
    let c = match a.name() {
        "value" => {
            let t =
                a.t.as_ref()
                    .ok_or_else(|| n.unsupported("`value` holds no tensor"))?;
            let mut c = tensor::decode(t)?;
            c.name = name;
            c
        }
        "value_float" => Const {
            name,
            dims: vec![],
            data: Data::F32(vec![a.f()]),
        },
        "value_floats" => Const {
            name,
            dims: vec![a.floats.len()],
            data: Data::F32(a.floats.clone()),
        },
        "value_int" => Const {
            name,
            dims: vec![],
            data: Data::I64(vec![a.i()]),
        },
        "value_ints" => Const {
            name,
            dims: vec![a.ints.len()],
            data: Data::I64(a.ints.clone()),
        },
        _ => {
            return Err(n.bad_attr(
                a,
                "value (float32 or int64 tensor), value_float(s), value_int(s)",
            ));
        }
    };
    Ok(Lowered::Alias(Value::Const(Rc::new(c))))
}

fn lower_clip(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[2, 4])?;
    let (min, max) = if n.opset >= 11 {
        n.check_attrs(&[])?;
        let min = ctx
            .constant(n, 1)?
            .map(|c| scalar(n, &c, "minimum"))
            .transpose()?;
        let max = ctx
            .constant(n, 2)?
            .map(|c| scalar(n, &c, "maximum"))
            .transpose()?;
        (min, max)
    } else {
        n.check_attrs(&["min", "max"])?;
        (n.attr("min").map(|a| a.f()), n.attr("max").map(|a| a.f()))
    };
    if min.is_some_and(f32::is_nan) || max.is_some_and(f32::is_nan) {
        return Err(n.unsupported("a NaN bound"));
    }
    let op = match (min, max) {
        (Some(0.0), None) => Op::Relu,
        (None, None) => {
            return Ok(Lowered::Alias(Value::Tensor(x)));
        }
        // An absent bound is ±f32::MAX: the same for every finite input.
        (lo, hi) => {
            let min = lo.unwrap_or(f32::MIN).max(f32::MIN);
            let max = hi.unwrap_or(f32::MAX).min(f32::MAX);
            if min > max {
                return Err(n.unsupported(format!("minimum {min} is above the maximum {max}")));
            }
            Op::Clip { min, max }
        }
    };
    Ok(Lowered::Layer(layer(op, vec![x.src]), x.dims))
}

fn lower_conv(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ])?;
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let w = ctx.required_constant(n, 1, "weight")?;
    let wv = w.floats()?;
    let &[m, cg, kh, kw] = w.dims.as_slice() else {
        return Err(n.unsupported(format!(
            "weight dims {:?}; only 2-D convolutions ([M, C/group, kH, kW]) are supported",
            w.dims
        )));
    };
    let group = n.int("group", 1);
    let c = x.dims[1];
    if !(1..=c as i64).contains(&group) {
        return Err(n.bad_attr(
            n.attr("group").unwrap_or(&AttributeProto::default()),
            format!("a group count from 1 to the {c} input channels"),
        ));
    }
    if group < 1
        || m == 0
        || kh == 0
        || kw == 0
        || cg * group as usize != c
        || m % group as usize != 0
    {
        return Err(n.unsupported(format!(
            "weight dims {:?} with group {group} do not fit an input of {c} channels",
            w.dims
        )));
    }
    let kernel = Hw { h: kh, w: kw };
    if let Some(ks) = n.ints("kernel_shape")
        && ks != [kh as i64, kw as i64]
    {
        return Err(n.unsupported(format!(
            "kernel_shape {ks:?} differs from the weight's {kh}×{kw}"
        )));
    }
    let stride = pair(n, "strides", 1, 1)?;
    let dilation = pair(n, "dilations", 1, 1)?;
    let padding = spatial_pads(n, (x.dims[2], x.dims[3]), kernel, stride, dilation)?;
    let oh = window_out(
        x.dims[2],
        kh,
        stride.h,
        dilation.h,
        padding.top,
        padding.bottom,
        false,
    );
    let ow = window_out(
        x.dims[3],
        kw,
        stride.w,
        dilation.w,
        padding.left,
        padding.right,
        false,
    );
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(n.unsupported(format!(
            "the kernel does not fit the padded {}×{} input",
            x.dims[2], x.dims[3]
        )));
    };
    let bias = ctx.constant(n, 2)?;
    let mut l = layer(
        Op::Conv2d(Conv2d {
            out_channels: m,
            kernel,
            stride,
            padding,
            dilation,
            groups: group as usize,
            bias: bias.is_some(),
        }),
        vec![x.src],
    );
    l.weights.push(("weight", w.dims.clone(), wv.to_vec()));
    if let Some(b) = bias {
        let bv = b.floats()?;
        if bv.len() != m {
            return Err(n.unsupported(format!(
                "bias `{}` has {} values for {m} output channels",
                b.name,
                bv.len()
            )));
        }
        l.weights.push(("bias", vec![m], bv.to_vec()));
    }
    l.preferred = preferred_name(n.input_name(1));
    Ok(Lowered::Layer(l, vec![1, m, oh, ow]))
}

fn lower_pool(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let max = n.node.op_type() == "MaxPool";
    let mut allowed = vec![
        "auto_pad",
        "ceil_mode",
        "dilations",
        "kernel_shape",
        "pads",
        "strides",
    ];
    allowed.push(if max {
        "storage_order"
    } else {
        "count_include_pad"
    });
    n.check_attrs(&allowed)?;
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let kernel = match n.ints("kernel_shape") {
        Some(_) => pair(n, "kernel_shape", 1, 1)?,
        None => return Err(n.unsupported("kernel_shape is missing")),
    };
    if let Some(a) = n.attr("dilations")
        && a.ints.iter().any(|&d| d != 1)
    {
        return Err(n.bad_attr(a, "dilations of 1"));
    }
    if let Some(a) = n.attr("storage_order")
        && a.i() != 0
    {
        return Err(n.bad_attr(a, "storage_order 0 (row major)"));
    }
    let stride = pair(n, "strides", 1, 1)?;
    let padding = spatial_pads(n, (x.dims[2], x.dims[3]), kernel, stride, Hw::square(1))?;
    if padding.top.max(padding.bottom) > kernel.h / 2
        || padding.left.max(padding.right) > kernel.w / 2
    {
        return Err(n.unsupported(format!(
            "padding {padding} is more than half the {kernel} window (PyTorch's and the DSL's limit)"
        )));
    }
    let ceil_mode = match n.int("ceil_mode", 0) {
        0 => false,
        1 => true,
        _ => {
            return Err(n.bad_attr(
                n.attr("ceil_mode").unwrap_or(&AttributeProto::default()),
                "ceil_mode 0 or 1",
            ));
        }
    };
    let pool = Pool2d {
        kernel,
        stride,
        padding,
        ceil_mode,
        count_include_pad: n.int("count_include_pad", 0) != 0,
    };
    let Some(s) = dsl_shape(&x.dims).and_then(|s| pool_out(s, &pool)) else {
        return Err(n.unsupported(format!(
            "the {kernel} window does not fit the padded {}×{} input",
            x.dims[2], x.dims[3]
        )));
    };
    let op = if max {
        Op::MaxPool(pool)
    } else {
        Op::AvgPool(pool)
    };
    Ok(Lowered::Layer(
        layer(op, vec![x.src]),
        vec![1, s.c, s.h, s.w],
    ))
}

fn lower_bn(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&["epsilon", "momentum", "spatial", "training_mode", "is_test"])?;
    if let Some(a) = n.attr("training_mode")
        && a.i() != 0
    {
        return Err(n.bad_attr(a, "training_mode 0 (inference)"));
    }
    if let Some(a) = n.attr("spatial")
        && a.i() != 1
    {
        return Err(n.bad_attr(a, "spatial 1"));
    }
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[2, 4])?;
    let c = x.dims[1];
    let eps = n.float("epsilon", 1e-5);
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(n.bad_attr(
            n.attr("epsilon").unwrap_or(&AttributeProto::default()),
            "a positive epsilon",
        ));
    }
    let mut l = layer(Op::BatchNorm { eps }, vec![x.src]);
    for (i, suffix) in [
        (1, "weight"),
        (2, "bias"),
        (3, "running_mean"),
        (4, "running_var"),
    ] {
        let t = ctx.required_constant(n, i, suffix)?;
        let v = t.floats()?;
        if v.len() != c {
            return Err(n.unsupported(format!(
                "`{}` has {} values for {c} channels",
                t.name,
                v.len()
            )));
        }
        l.weights.push((suffix, vec![c], v.to_vec()));
    }
    l.preferred = preferred_name(n.input_name(1));
    Ok(Lowered::Layer(l, x.dims))
}

fn lower_add(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[])?;
    if n.node.input.len() != 2 {
        return Err(n.unsupported("Add takes two inputs"));
    }
    let get = |i: usize| {
        let name = n
            .input_name(i)
            .ok_or_else(|| n.unsupported("an input is missing"))?;
        ctx.values
            .get(name)
            .cloned()
            .map(|v| (name, v))
            .ok_or_else(|| missing(n, name))
    };
    let (an, a) = get(0)?;
    let (bn, b) = get(1)?;
    match (a, b) {
        (Value::Tensor(a), Value::Tensor(b)) => {
            if a.dims != b.dims {
                return Err(n.unsupported(format!(
                    "broadcasting dims {:?} and {:?}; both inputs must have the same dims",
                    a.dims, b.dims
                )));
            }
            rank(n, &a, &[2, 4])?;
            Ok(Lowered::Layer(layer(Op::Add, vec![a.src, b.src]), a.dims))
        }
        (Value::Tensor(x), Value::Const(c)) | (Value::Const(c), Value::Tensor(x)) => {
            let xname = if matches!(ctx.values.get(an), Some(Value::Tensor(_))) {
                an
            } else {
                bn
            };
            // The bias of a bias-free MatMul: `x @ W + b` is one linear layer.
            if let Src::Layer(i) = x.src
                && ctx.uses.get(xname) == Some(&1)
                && let Some(l) = ctx.layers.get_mut(i)
                && l.from_matmul
                && let Op::Linear { out_features, bias } = &mut l.op
                && !*bias
            {
                let v = c.floats()?;
                let out = *out_features;
                let ok = c.dims.iter().filter(|&&d| d != 1).count() <= 1 && c.dims.len() <= 2;
                let data = if v.len() == out && ok {
                    v.to_vec()
                } else if v.len() == 1 {
                    vec![v[0]; out]
                } else {
                    return Err(n.unsupported(format!(
                        "bias `{}` of dims {:?} does not fit {out} features",
                        c.name, c.dims
                    )));
                };
                *bias = true;
                l.weights.push(("bias", vec![out], data));
                return Ok(Lowered::Alias(Value::Tensor(x)));
            }
            Err(n.unsupported(format!(
                "adding the constant `{}`; constants are supported only as the bias of a MatMul",
                c.name
            )))
        }
        (Value::Const(_), Value::Const(_)) => {
            Err(n.unsupported("adding two constants (fold constants before export)"))
        }
    }
}

fn lower_linear(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let gemm = n.node.op_type() == "Gemm";
    if gemm {
        n.check_attrs(&["alpha", "beta", "transA", "transB"])?;
        if let Some(a) = n.attr("transA")
            && a.i() != 0
        {
            return Err(n.bad_attr(a, "transA 0"));
        }
    } else {
        n.check_attrs(&[])?;
    }
    let x = ctx.tensor(n, 0)?;
    if x.dims.len() != 2 {
        return Err(n.unsupported(format!(
            "input dims {:?}; supported: [1, F] (flatten first)",
            x.dims
        )));
    }
    let k = x.dims[1];
    let b = ctx.required_constant(n, 1, "weight")?;
    let bv = b.floats()?;
    let trans_b = gemm && n.int("transB", 0) != 0;
    let &[r, c] = b.dims.as_slice() else {
        return Err(n.unsupported(format!("weight dims {:?}; a matrix is expected", b.dims)));
    };
    let (out, inner) = if trans_b { (r, c) } else { (c, r) };
    if inner != k || out == 0 {
        return Err(n.unsupported(format!(
            "weight dims {:?}{} do not fit {k} input features",
            b.dims,
            if trans_b { " (transposed)" } else { "" }
        )));
    }
    // PyTorch's linear weight is [out, in].
    let mut w: Vec<f32> = if trans_b {
        bv.to_vec()
    } else {
        let mut t = vec![0.0; bv.len()];
        for i in 0..inner {
            for o in 0..out {
                t[o * inner + i] = bv[i * out + o];
            }
        }
        t
    };
    let alpha = if gemm { n.float("alpha", 1.0) } else { 1.0 };
    let beta = if gemm { n.float("beta", 1.0) } else { 1.0 };
    if alpha != 1.0 {
        w.iter_mut().for_each(|v| *v *= alpha);
    }
    let bias = if gemm { ctx.constant(n, 2)? } else { None };
    let mut l = layer(
        Op::Linear {
            out_features: out,
            bias: bias.is_some(),
        },
        vec![x.src],
    );
    l.weights.push(("weight", vec![out, k], w));
    if let Some(c) = bias {
        let cv = c.floats()?;
        let mut data = if cv.len() == out && c.dims.iter().filter(|&&d| d != 1).count() <= 1 {
            cv.to_vec()
        } else if cv.len() == 1 {
            vec![cv[0]; out]
        } else {
            return Err(n.unsupported(format!(
                "C `{}` of dims {:?}; supported: [{out}], [1, {out}] or a scalar",
                c.name, c.dims
            )));
        };
        if beta != 1.0 {
            data.iter_mut().for_each(|v| *v *= beta);
        }
        l.weights.push(("bias", vec![out], data));
    }
    l.preferred = preferred_name(n.input_name(1));
    l.from_matmul = !gemm;
    Ok(Lowered::Layer(l, vec![1, out]))
}

fn lower_pad(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let (pads, value, axes): (Vec<i64>, f32, Option<Vec<i64>>) = if n.opset >= 11 {
        n.check_attrs(&["mode"])?;
        let pads = ctx.required_constant(n, 1, "pads")?.ints()?.to_vec();
        let value = ctx
            .constant(n, 2)?
            .map(|c| scalar(n, &c, "constant value"))
            .transpose()?
            .unwrap_or(0.0);
        let axes = ctx
            .constant(n, 3)?
            .map(|c| c.ints().map(<[i64]>::to_vec))
            .transpose()?;
        (pads, value, axes)
    } else {
        n.check_attrs(&["mode", "pads", "value"])?;
        let pads = n
            .ints("pads")
            .ok_or_else(|| n.unsupported("pads is missing"))?
            .to_vec();
        (pads, n.float("value", 0.0), None)
    };
    if let Some(mode) = n.string("mode")
        && mode != "constant"
    {
        return Err(n.bad_attr(
            n.attr("mode").unwrap_or(&AttributeProto::default()),
            "mode constant",
        ));
    }
    if !value.is_finite() {
        return Err(n.unsupported(format!(
            "padding value {value}; a finite value is supported"
        )));
    }
    let axes: Vec<usize> = match axes {
        None => (0..4).collect(),
        Some(a) => a
            .iter()
            .map(|&v| if v < 0 { v + 4 } else { v })
            .map(|v| usize::try_from(v).ok().filter(|&v| v < 4))
            .collect::<Option<_>>()
            .ok_or_else(|| n.unsupported(format!("axes {a:?} out of range")))?,
    };
    if pads.len() != 2 * axes.len() {
        return Err(n.unsupported(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mut begin = [0i64; 4];
    let mut end = [0i64; 4];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i];
        end[a] = pads[i + axes.len()];
    }
    if begin[..2] != [0, 0] || end[..2] != [0, 0] {
        return Err(n.unsupported(format!(
            "pads {pads:?} pad the batch or channel axis; only height and width may be padded"
        )));
    }
    if begin
        .iter()
        .chain(&end)
        .any(|&p| !(0..=1 << 16).contains(&p))
    {
        return Err(n.unsupported(format!(
            "pads {pads:?}; negative pads (cropping) are not supported"
        )));
    }
    let padding = Pad2 {
        top: begin[2] as usize,
        left: begin[3] as usize,
        bottom: end[2] as usize,
        right: end[3] as usize,
    };
    let dims = vec![
        1,
        x.dims[1],
        x.dims[2] + padding.top + padding.bottom,
        x.dims[3] + padding.left + padding.right,
    ];
    if padding.is_zero() {
        return Ok(Lowered::Alias(Value::Tensor(x)));
    }
    Ok(Lowered::Layer(
        layer(Op::Pad { padding, value }, vec![x.src]),
        dims,
    ))
}

/// Reshape's target dims: `0` copies (unless `allowzero`), one `-1` is inferred.
fn reshape_target(
    n: &Node,
    dims: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, ImportError> {
    let total = prod(dims);
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => {
                out.push(*dims.get(i).ok_or_else(|| {
                    n.unsupported(format!("shape {shape:?} copies a missing axis"))
                })?)
            }
            s if s > 0 => out.push(s as usize),
            _ => return Err(n.unsupported(format!("shape {shape:?}"))),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(0);
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(n.unsupported(format!("shape {shape:?} does not fit dims {dims:?}")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(n.unsupported(format!("shape {shape:?} does not fit dims {dims:?}")));
    }
    Ok(out)
}

fn squeeze(n: &Node, dims: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, ImportError> {
    let r = dims.len() as i64;
    let drop: Vec<usize> = match axes {
        None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
        Some(a) => a
            .iter()
            .map(|&v| if v < 0 { v + r } else { v })
            .map(|v| {
                usize::try_from(v)
                    .ok()
                    .filter(|&v| v < dims.len() && dims[v] == 1)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| n.unsupported(format!("axes {a:?} of dims {dims:?}")))?,
    };
    Ok(dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

fn unsqueeze(n: &Node, dims: &[usize], axes: &[i64]) -> Result<Vec<usize>, ImportError> {
    let r = (dims.len() + axes.len()) as i64;
    let mut at: Vec<usize> = axes
        .iter()
        .map(|&v| if v < 0 { v + r } else { v })
        .map(|v| usize::try_from(v).ok().filter(|&v| (v as i64) < r))
        .collect::<Option<_>>()
        .ok_or_else(|| n.unsupported(format!("axes {axes:?} of dims {dims:?}")))?;
    at.sort_unstable();
    at.dedup();
    if at.len() != axes.len() {
        return Err(n.unsupported(format!("repeated axes {axes:?}")));
    }
    let mut out = Vec::with_capacity(r as usize);
    let mut src = dims.iter();
    for i in 0..r as usize {
        if at.contains(&i) {
            out.push(1);
        } else if let Some(&d) = src.next() {
            out.push(d);
        }
    }
    Ok(out)
}

/// Flatten, Reshape, Squeeze and Unsqueeze: a `flatten` layer, or nothing when the DSL shape
/// does not change; anything else is an error.
fn reshape_to(n: &Node, x: Val, target: Vec<usize>) -> Result<Lowered, ImportError> {
    let numel = prod(&x.dims);
    if target == x.dims {
        return Ok(Lowered::Alias(Value::Tensor(x)));
    }
    if target == [1, numel] && x.dims.len() == 4 {
        return Ok(Lowered::Layer(layer(Op::Flatten, vec![x.src]), target));
    }
    if x.dims.len() == 2 && target == [1, numel, 1, 1] {
        return Ok(Lowered::Alias(Value::Tensor(Val {
            src: x.src,
            dims: target,
        })));
    }
    Err(n.unsupported(format!(
        "reshaping {:?} to {target:?}; supported: flattening [1, C, H, W] to [1, C·H·W], \
         [1, N] to [1, N, 1, 1], and no-op reshapes",
        x.dims
    )))
}

/// The node's scope as a TorchScript-style name: the dynamo exporter names nodes
/// `node_relu_1` but records `pkg.torch.onnx.name_scopes` =
/// `['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`, which becomes
/// `/layer1/layer1.0/layer1.0.relu/relu_1`.
fn scope_name(node: &NodeProto) -> String {
    let scopes = node
        .metadata_props
        .iter()
        .find(|p| p.key() == "pkg.torch.onnx.name_scopes")
        .map(|p| p.value());
    match scopes {
        Some(list) if list.starts_with('[') && list.ends_with(']') => list[1..list.len() - 1]
            .split(',')
            .map(|s| s.trim().trim_matches(['\'', '"']))
            .filter(|s| !s.is_empty())
            .fold(String::new(), |acc, s| format!("{acc}/{s}")),
        _ => node.name().to_string(),
    }
}

/// `/layer1/layer1.0/conv1/Conv` → (`layer1.0.conv1`, `conv`). Torch names each scope by
/// its qualified name from the last non-numeric atom on (`features.1`, `conv`, `conv.0.2`),
/// so a scope's last atom is its attribute name in the parent scope.
fn module_path(node_name: &str) -> (String, String) {
    let segs: Vec<&str> = node_name.split('/').filter(|s| !s.is_empty()).collect();
    let Some((last, scopes)) = segs.split_last() else {
        return (String::new(), String::new());
    };
    let mut path = String::new();
    for s in scopes {
        if path.is_empty() {
            path = s.to_string();
        } else {
            let atom = s.rsplit('.').next().unwrap_or(s);
            path = format!("{path}.{atom}");
        }
    }
    (sanitize(&path), sanitize(&last.to_lowercase()))
}

/// Keeps `[A-Za-z0-9_.]`, maps anything else to `_`, drops empty dot-segments.
fn sanitize(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    mapped
        .split('.')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// Gives every layer a unique valid name: the weight's PyTorch name, else the node's module
/// path (plus the op for nodes directly inside a container module), else the op type.
fn name_layers(layers: &mut [Layer]) {
    let mut prefixes: HashSet<String> = HashSet::new();
    for l in layers.iter() {
        for name in [Some(&l.path), l.preferred.as_ref()].into_iter().flatten() {
            let mut p = name.as_str();
            while let Some((head, _)) = p.rsplit_once('.') {
                prefixes.insert(head.to_string());
                p = head;
            }
        }
    }
    let names: Vec<String> = layers
        .iter()
        .map(|l| {
            if let Some(p) = &l.preferred {
                return p.clone();
            }
            // A module with sub-modules: name its own nodes `module.op`. A module called
            // several times (one ReLU reused) gets `_1`, `_2`, … when names are made unique.
            let container = prefixes.contains(&l.path);
            // The op part of a node name (`GlobalAveragePool_1`) in DSL words (`global_avgpool_1`).
            let op_type = l.op_type.to_lowercase();
            let op = match l.op_seg.strip_prefix(&op_type) {
                Some(rest) => format!("{}{rest}", l.op.kind()),
                None if l.op_seg.is_empty() => l.op.kind().to_string(),
                None => l.op_seg.clone(),
            };
            let name = if l.path.is_empty() {
                op
            } else if container {
                format!("{}.{op}", l.path)
            } else {
                l.path.clone()
            };
            let name = sanitize(&name);
            if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                name
            } else {
                format!("{}_{name}", l.op_type.to_lowercase())
            }
        })
        .collect();
    let mut taken: HashSet<String> = HashSet::new();
    taken.insert(crate::dsl::network::INPUT.to_string());
    for (l, base) in layers.iter_mut().zip(names) {
        let mut name = base.clone();
        let mut k = 1;
        while taken.contains(&name) || !crate::dsl::read::is_valid_name(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        taken.insert(name.clone());
        l.name = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_torch_scopes() {
        assert_eq!(
            module_path("/layer1/layer1.0/conv1/Conv"),
            ("layer1.0.conv1".into(), "conv".into())
        );
        assert_eq!(
            module_path("/features/features.0/Conv"),
            ("features.0".into(), "conv".into())
        );
        assert_eq!(
            module_path("/features/features.1/conv/conv.0/conv.0.2/Clip"),
            ("features.1.conv.0.2".into(), "clip".into())
        );
        assert_eq!(module_path("/Flatten"), (String::new(), "flatten".into()));
        assert_eq!(module_path(""), (String::new(), String::new()));
        assert_eq!(sanitize("a/b c..d"), "a_b_c.d");
    }
}
