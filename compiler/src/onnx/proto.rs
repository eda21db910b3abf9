//! ONNX protobuf types, generated at build time by `build.rs` (protox + prost-build) from
//! `compiler/proto/onnx.proto` (ONNX 1.23, Apache-2.0).

#![allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    missing_docs
)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
