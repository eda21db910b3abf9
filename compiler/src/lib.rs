//! adcnn's compiler: the YAML DSL, the layer graph, the reference interpreter and (later) the
//! partition planner. See ARCHITECTURE.md for the map.

pub mod build;
pub mod check;
pub mod cluster;
pub mod codegen;
pub mod diag;
pub mod dsl;
pub mod graph;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod plan;
pub mod reference;
pub mod stdout;
pub mod weights;
pub mod wire;
