//! Importing ONNX models (as PyTorch exports them) into the DSL: `adcnnc import model.onnx`.
//!
//! [`import`] decodes the protobuf (bounded: files ≤ 2 GiB, every tensor's declared size
//! checked against its data before allocating), walks the graph in topological order and maps
//! every node to one DSL operator, or elides it (Identity, no-op reshapes), or folds it
//! (constants; a MatMul's bias `Add`). Nothing is approximated: an operator or attribute the
//! DSL cannot express exactly is an [`ImportError`] naming the node, the op type and what is
//! supported. [`Imported::yaml`] renders the DSL text, [`Imported::safetensors`] the weights
//! under PyTorch names (`{layer}.weight`, …; batch norm stays batch norm).

mod emit;
mod fold;
mod import;
pub mod proto;
mod tensor;

use std::path::{Path, PathBuf};

use prost::Message;

use adcnn_core::ops::Shape;

pub use fold::CONSTANT_ONLY_OPS;
pub use import::SUPPORTED_OPS;

/// Largest model file accepted (protobuf's own limit).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Largest tensor accepted, in elements.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 31;

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

/// One named float32 tensor for the weights file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// A DSL entry: `- name: expression`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    pub expression: String,
}

/// An imported model: the DSL entries and the weights.
#[derive(Clone, Debug)]
pub struct Imported {
    pub name: String,
    pub input: Shape,
    pub entries: Vec<Entry>,
    /// Number of layers (an entry may hold several).
    pub layers: usize,
    pub weights: Vec<Tensor>,
    /// Learned parameters (batch-norm running statistics are buffers, as PyTorch counts).
    pub parameters: usize,
    /// `producer_name producer_version, opset N`, for the file header.
    pub provenance: String,
}

impl Imported {
    /// The DSL file, naming `weights_file` (relative to the YAML file) when there are weights.
    pub fn yaml(&self, weights_file: &str) -> String {
        emit::yaml(self, weights_file)
    }

    /// The weights as a safetensors file (F32, PyTorch tensor names).
    pub fn safetensors(&self) -> Result<Vec<u8>, ImportError> {
        tensor::safetensors(&self.weights)
    }
}

/// How an operator type appears in a model and whether the importer supports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSupport {
    pub op_type: String,
    pub domain: String,
    /// Nodes of this type.
    pub count: usize,
    pub supported: bool,
    /// Supported only when all its inputs are constants (folded at import).
    pub constant_only: bool,
}

/// Decodes an ONNX model, bounded in size.
pub fn decode(bytes: &[u8]) -> Result<proto::ModelProto, ImportError> {
    if bytes.len() as u64 > MAX_MODEL_BYTES {
        return Err(ImportError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_MODEL_BYTES,
        });
    }
    proto::ModelProto::decode(bytes).map_err(|e| ImportError::Decode {
        reason: e.to_string(),
    })
}

/// Imports a model; `name` becomes the network's name.
pub fn import(bytes: &[u8], name: &str) -> Result<Imported, ImportError> {
    let model = decode(bytes)?;
    import::lower(&model, name)
}

/// The operator types of a model in order of first appearance, with counts and support.
pub fn inventory(bytes: &[u8]) -> Result<Vec<OpSupport>, ImportError> {
    let model = decode(bytes)?;
    let graph = model.graph.as_ref().ok_or(ImportError::NoGraph)?;
    let mut out: Vec<OpSupport> = Vec::new();
    for node in &graph.node {
        let (op, domain) = (node.op_type(), node.domain());
        match out
            .iter_mut()
            .find(|o| o.op_type == op && o.domain == domain)
        {
            Some(o) => o.count += 1,
            None => out.push(OpSupport {
                op_type: op.to_string(),
                domain: domain.to_string(),
                count: 1,
                supported: import::is_supported(domain, op),
                constant_only: import::is_default_domain(domain) && CONSTANT_ONLY_OPS.contains(&op),
            }),
        }
    }
    Ok(out)
}

/// What [`import_file`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub imported: Imported,
    pub yaml: PathBuf,
    pub weights: Option<PathBuf>,
}

impl Written {
    /// One line for the command line: layers, parameters, files.
    pub fn summary(&self) -> String {
        let files = match &self.weights {
            Some(w) => format!("{} and {}", self.yaml.display(), w.display()),
            None => format!("{}", self.yaml.display()),
        };
        format!(
            "{}: {} layers in {} entries, {} parameters → {files}",
            self.imported.name,
            self.imported.layers,
            self.imported.entries.len(),
            crate::graph::human_count(self.imported.parameters as u64),
        )
    }
}

/// Reads `model`, imports it and writes `yaml` and, when the model has weights, the
/// safetensors file beside it (`yaml` with the extension `.safetensors`).
pub fn import_file(model: &Path, yaml: &Path) -> Result<Written, ImportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    let size = std::fs::metadata(model).map_err(io(model))?.len();
    if size > MAX_MODEL_BYTES {
        return Err(ImportError::TooLarge {
            size,
            limit: MAX_MODEL_BYTES,
        });
    }
    let bytes = std::fs::read(model).map_err(io(model))?;
    let name = yaml
        .file_stem()
        .or_else(|| model.file_stem())
        .map_or_else(|| "net".to_string(), |s| s.to_string_lossy().into_owned());
    let imported = import(&bytes, &name)?;
    let weights_path = yaml.with_extension("safetensors");
    let weights_file = weights_path.file_name().map_or_else(
        || "net.safetensors".into(),
        |s| s.to_string_lossy().into_owned(),
    );
    let weights = if imported.weights.is_empty() {
        None
    } else {
        std::fs::write(&weights_path, imported.safetensors()?).map_err(io(&weights_path))?;
        Some(weights_path)
    };
    std::fs::write(yaml, imported.yaml(&weights_file)).map_err(io(yaml))?;
    Ok(Written {
        imported,
        yaml: yaml.to_path_buf(),
        weights,
    })
}
