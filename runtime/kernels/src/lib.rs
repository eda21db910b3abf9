//! adcnn's node-side tile kernels: what a worker compiles from its share of a plan and runs.
//!
//! - [`kernel`] — [`CompiledKernels`]: a node's segments prepared once when the plan loads
//!   (weights packed or transformed, the kernel for each layer and tile shape chosen, the
//!   Cranelift functions generated), then run tile by tile;
//! - host micro-kernels: [`gemm`] (SGEMM, GEMV), [`winograd`] (F(4×4, 3×3)), [`depthwise`],
//!   [`direct`] (few-channel stems), [`block`] (inverted-residual blocks over row bands);
//! - [`jit`] — Cranelift code generation: epilogues, max pools, depthwise convolutions;
//! - [`act`] — the activations fused into epilogues;
//! - [`wire`] — tile outputs as they cross the wire (exact, or q8/q4 per channel);
//! - [`par`] — a layer's work split over the threads of the rayon pool the caller runs in.
//!
//! Everything is checked against `adcnn_core::program::Program::run_tile`, the plain tile
//! runner. See ARCHITECTURE.md for the split between generated and host code and the
//! measurements behind it.

pub mod act;
pub mod block;
pub mod depthwise;
pub mod direct;
pub mod gemm;
pub mod jit;
pub mod kernel;
pub mod par;
pub mod winograd;
pub mod wire;

pub use kernel::{
    BAND_BYTES, CompileError, CompileOptions, CompiledKernels, CompiledProgram, KernelKind,
    KernelStats, Profile,
};

/// Relative L2 distance `‖a − b‖ / ‖b‖` (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    adcnn_core::tensor::rel_l2(a, b)
}
