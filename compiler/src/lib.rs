//! adcnn's compiler: from a network description to `plan.bin`.
//!
//! The front end reads the YAML DSL ([`dsl`], with [`diag`] for its diagnostics) or imports
//! ONNX ([`onnx`]); [`graph`] builds the validated layer graph with shapes and figures;
//! [`weights`] binds its weights (a safetensors file, or seeded and batch-norm-calibrated);
//! [`reference`](mod@reference) is the interpreter every faster path is checked against; [`plan`] is the
//! pure partition planner; [`lower`] turns a plan into self-contained programs (batch norms
//! folded) and [`build`] writes them with `adcnn_core::format`. See ARCHITECTURE.md.

pub mod build;
pub mod check;
pub mod diag;
pub mod dsl;
pub mod graph;
pub mod lower;
pub mod onnx;
pub mod plan;
pub mod reference;
pub mod weights;
