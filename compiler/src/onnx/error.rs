//! [`ImportError`]: why a model could not be imported, for every stage of the importer.

use std::path::PathBuf;

/// Why a model could not be imported. Node errors name the node (its ONNX name, or `#index`
/// when it has none) and its op type.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the model is {size} bytes; models larger than {limit} bytes are not supported")]
    TooLarge { size: u64, limit: u64 },
    #[error("not a valid ONNX model: {reason}")]
    Decode { reason: String },
    #[error("the model has no graph")]
    NoGraph,
    #[error("the model declares ONNX opset {version}; supported: opsets {min} to {max}")]
    Opset { version: i64, min: i64, max: i64 },
    #[error("the model declares no ONNX (ai.onnx) opset")]
    NoOpset,
    #[error("tensor `{tensor}`: {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("tensor `{tensor}` is {found}, expected {expected}")]
    TensorType {
        tensor: String,
        expected: &'static str,
        found: String,
    },
    #[error(
        "tensor `{tensor}` keeps its data in an external file, which is not supported; \
         export the model with its weights inside (onnx.save(..., save_as_external_data=False))"
    )]
    ExternalData { tensor: String },
    #[error(
        "node `{node}`: operator `{op_type}`{domain} is not supported; supported operators: {supported}"
    )]
    UnsupportedOp {
        op_type: String,
        node: String,
        domain: String,
        supported: String,
    },
    #[error(
        "node `{node}` ({op_type}): attribute `{attribute}` = {value} is not supported; supported: {supported}"
    )]
    UnsupportedAttribute {
        op_type: String,
        node: String,
        attribute: String,
        value: String,
        supported: String,
    },
    #[error("node `{node}` ({op_type}): {reason}")]
    Unsupported {
        op_type: String,
        node: String,
        reason: String,
    },
    #[error(
        "node `{node}` ({op_type}) reads `{value}`, which no node, initializer or graph input provides"
    )]
    MissingValue {
        op_type: String,
        node: String,
        value: String,
    },
    #[error("value `{value}` is produced by two nodes, `{first}` and `{second}`")]
    DuplicateValue {
        value: String,
        first: String,
        second: String,
    },
    #[error("the graph has a cycle through node(s) {}", nodes.join(", "))]
    Cycle { nodes: Vec<String> },
    #[error("graph input `{name}`: {reason}")]
    Input { name: String, reason: String },
    #[error("graph output: {reason}")]
    Output { reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the weights: {reason}")]
    Write { reason: String },
}
