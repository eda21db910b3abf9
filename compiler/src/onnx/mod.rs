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
mod error;
mod fold;
mod lower;
pub mod proto;
mod tensor;
mod types;

use std::path::{Path, PathBuf};

use prost::Message;

pub use error::ImportError;
pub use fold::CONSTANT_ONLY_OPS;
pub use lower::SUPPORTED_OPS;
pub use tensor::MAX_TENSOR_ELEMENTS;
pub use types::{Entry, Imported, Tensor};

/// Largest model file accepted (protobuf's own limit).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

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
    let net = lower::lower(&model)?;
    let (entries, layers) = emit::entries(&net.layers);
    Ok(Imported {
        name: name.to_string(),
        input: net.input,
        entries,
        layers,
        weights: net.weights,
        parameters: net.parameters,
        provenance: net.provenance,
    })
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
                supported: lower::is_supported(domain, op),
                constant_only: lower::is_default_domain(domain) && CONSTANT_ONLY_OPS.contains(&op),
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
        adcnn_core::npy::write_atomically(&weights_path, &imported.safetensors()?)
            .map_err(io(&weights_path))?;
        Some(weights_path)
    };
    adcnn_core::npy::write_atomically(yaml, imported.yaml(&weights_file).as_bytes())
        .map_err(io(yaml))?;
    Ok(Written {
        imported,
        yaml: yaml.to_path_buf(),
        weights,
    })
}
