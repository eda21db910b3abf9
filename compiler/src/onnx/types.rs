//! The data lowering produces and emitting reads: layers and where their inputs come from,
//! weight tensors, DSL entries and the imported model. Depends on no other module of `onnx/`.

use adcnn_core::ops::{Op, Shape};

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

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Src {
    Input,
    Layer(usize),
}

/// One DSL layer.
#[derive(Clone, Debug)]
pub struct Layer {
    pub op: Op,
    pub inputs: Vec<Src>,
    /// `(suffix, dims, values)`: `{layer}.{suffix}` in the weights file.
    pub weights: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
    /// The name from the weight initializer (`features.0.weight` → `features.0`).
    pub(super) preferred: Option<String>,
    /// The module path from the node name (`/layer1/layer1.0/conv1/Conv` → `layer1.0.conv1`).
    pub(super) path: String,
    /// The node name's last segment (`Conv`, `Relu_1`), lower-cased.
    pub(super) op_seg: String,
    pub(super) op_type: String,
    pub(super) from_matmul: bool,
    pub name: String,
}
