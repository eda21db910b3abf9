//! Compiled tile kernels: a node's segments prepared once when the plan loads — weights
//! packed for the host GEMM or Winograd-transformed (batch norms were folded into them when
//! the plan was built), what follows each convolution fused — plus the generated functions
//! for every tile shape the node runs. [`CompiledKernels::run_tile`] takes the same inputs as
//! `adcnn_core::program::Program::run_tile`, the oracle it is tested against.
//!
//! What runs where (chosen per layer and tile shape in one place, `choice.rs`):
//! convolutions on Winograd F(4×4, 3×3) for 3×3 stride-1 layers (`winograd.rs`: bias and
//! activation in its output transform, a following 2×2 max pool taken there too), on the
//! direct kernel for stride-1/2 stems with 1–4 input channels (`direct.rs`), on the host
//! depthwise 3×3 kernel (`depthwise.rs`) or generated depthwise kernels, else on the host
//! GEMM over an implicit im2col (the input itself for 1×1 stride-1), followed by a generated
//! epilogue (bias, residual add, activation; quantising for the wire when the segment's
//! output comes out of it); max pools on generated loop nests; inverted-residual blocks over
//! bands of output rows (`block.rs`) when a tile's regions line up; fully connected layers
//! on the host GEMV. Every other layer kind runs on the plain operator.
//!
//! The parts: `compiled` (the types: options, statistics, the kernels), `choice` (the one
//! place a layer's kernel on a tile is chosen), `prepare` (weights packed or transformed,
//! what is fused into each convolution, inverted-residual blocks, shared between the nodes
//! of a process), `geometry` (each layer's operator and input on a tile; specs of the
//! generated functions), `compile` (the driver), `run` (a tile, layer by layer), `conv` (one
//! convolution on its kernel), `wired` (outputs quantised by the epilogue), `tail` (a program run whole: the
//! coordinator's tail) and `buffers` (intermediate tensors recycled per thread).

mod buffers;
mod choice;
mod compile;
mod compiled;
mod conv;
mod geometry;
mod prepare;
mod run;
mod tail;
mod wired;

pub use choice::KernelKind;
pub use compiled::{
    BAND_BYTES, CompileError, CompileOptions, CompiledKernels, KernelStats, Profile,
};
pub use tail::CompiledProgram;
