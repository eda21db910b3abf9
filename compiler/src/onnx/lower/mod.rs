//! ONNX graph → layers: [`lower`] validates the graph ([`graph`]), keeps the nodes the output
//! depends on, lowers each in topological order to one layer with its weights, an alias or a
//! constant ([`dispatch`]), tracks ONNX shapes, names the layers ([`naming`]) and collects
//! their weights.

mod arith;
mod context;
mod dispatch;
mod graph;
mod naming;
mod ops;
mod reshape;

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use self::context::{Ctx, Lowered, Node, Val, Value, dsl_shape, prod};
use self::dispatch::lower_node;
use self::graph::{graph_input, node_label, opset, topo_order};
use self::naming::{module_path, name_layers, scope_name};
use crate::onnx::error::ImportError;
use crate::onnx::proto::{ModelProto, TensorProto};
use crate::onnx::tensor;
use crate::onnx::types::{Layer, Src, Tensor};
use adcnn_core::ops::Shape;

pub use graph::{SUPPORTED_OPS, is_default_domain, is_supported};

/// A lowered model: its layers, named and in ONNX order, their weights under PyTorch names,
/// and the rest of what [`Imported`](crate::onnx::Imported) records but the DSL entries.
#[derive(Debug)]
pub struct Network {
    pub input: Shape,
    pub layers: Vec<Layer>,
    pub weights: Vec<Tensor>,
    /// Learned parameters (batch-norm running statistics are buffers, as PyTorch counts).
    pub parameters: usize,
    /// `producer_name producer_version, opset N`, for the file header.
    pub provenance: String,
}

/// The layers `last` depends on (itself included), in their order, inputs renumbered.
fn ancestors(layers: Vec<Layer>, last: usize) -> Vec<Layer> {
    let mut keep = vec![false; last + 1];
    keep[last] = true;
    for i in (0..=last).rev() {
        if keep[i] {
            for s in &layers[i].inputs {
                if let Src::Layer(j) = *s {
                    keep[j] = true;
                }
            }
        }
    }
    let mut index = vec![usize::MAX; last + 1];
    let mut out = Vec::new();
    for (i, mut l) in layers.into_iter().enumerate().take(last + 1) {
        if keep[i] {
            for s in &mut l.inputs {
                if let Src::Layer(j) = s {
                    *j = index[*j];
                }
            }
            index[i] = out.len();
            out.push(l);
        }
    }
    out
}

/// Lowers a decoded model to its layers and weights.
pub fn lower(model: &ModelProto) -> Result<Network, ImportError> {
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
        names: Vec::new(),
        values: HashMap::new(),
        uses,
        fold_budget: std::cell::Cell::new(crate::onnx::fold::MAX_FOLDED_ELEMENTS),
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
                if prod(&dims) > tensor::MAX_TENSOR_ELEMENTS {
                    return Err(n.unsupported(format!("output dims {dims:?} are too large")));
                }
                let (path, op_seg) = module_path(&scope_name(node));
                layer.path = path;
                layer.op_seg = op_seg;
                layer.op_type = node.op_type().to_string();
                ctx.layers.push(*layer);
                ctx.names.push(Vec::new());
                Value::Tensor(Val {
                    src: Src::Layer(ctx.layers.len() - 1),
                    dims,
                })
            }
        };
        if let Value::Tensor(Val {
            src: Src::Layer(i), ..
        }) = &value
            && let Some(names) = ctx.names.get_mut(*i)
        {
            names.push(out);
        }
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
    // Keep only the output's ancestors: nodes after it may be dead (folded), and layers
    // fused into a later one (an activation's pieces) are read by nothing.
    let mut layers = ancestors(ctx.layers, last);
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
    Ok(Network {
        input,
        layers,
        weights,
        parameters,
        provenance,
    })
}
