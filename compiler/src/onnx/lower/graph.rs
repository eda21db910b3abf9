//! Graph checks before lowering: the supported operators and opsets, the nodes' topological
//! order (duplicate and missing values, cycles) and the graph's one data input.

use std::collections::{HashMap, HashSet};

use super::context::prod;
use crate::onnx::error::ImportError;
use crate::onnx::fold;
use crate::onnx::proto::{GraphProto, ModelProto, NodeProto};
use crate::onnx::tensor;

/// Every operator type the importer maps (default ONNX domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "ConvTranspose",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "PRelu",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Softmax",
    "Squeeze",
    "Sub",
    "Unsqueeze",
    "Upsample",
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

/// Node names for messages: the ONNX name, or `#index` when it has none.
pub(super) fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("#{index} ({})", node.op_type())
    } else {
        node.name().to_string()
    }
}

/// The ai.onnx opset the model imports.
pub(super) fn opset(model: &ModelProto) -> Result<i64, ImportError> {
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
pub(super) fn topo_order(g: &GraphProto, known: &HashSet<&str>) -> Result<Vec<usize>, ImportError> {
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
pub(super) fn graph_input(
    g: &GraphProto,
    inits: &HashSet<&str>,
) -> Result<(String, Vec<usize>), ImportError> {
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
    use crate::onnx::proto::tensor_shape_proto::dimension::Value as Dim;
    use crate::onnx::proto::type_proto::Value as Type;
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
