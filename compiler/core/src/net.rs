//! A network's layers as the runtime sees them: resolved operators with their inputs and
//! output shapes, addressed by [`LayerId`], and how an image becomes the input tensor.

use serde::{Deserialize, Serialize};

use crate::ops::{Op, Shape};

/// A layer's place in the network's layer list, which is in topological order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LayerId(pub u32);

impl LayerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The layer after this one.
    pub fn next(self) -> LayerId {
        LayerId(self.0 + 1)
    }
}

/// Where a layer's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// The network input.
    Input,
    Layer(LayerId),
}

/// One layer: what it computes, from what, and the shape it produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Source>,
    pub shape: Shape,
}

/// The network's input: its shape, and how an image file becomes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub shape: Shape,
    pub image: Option<ImagePreprocess>,
}

/// How an image file becomes the input tensor: scale pixels to [0, 1], resize the shorter
/// side to `resize` (or straight to H×W when absent), centre-crop H×W, then normalise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImagePreprocess {
    pub resize: Option<usize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}
