//! Compiled tile kernels: a plan's segments prepared once when it loads (weights packed for
//! the host GEMM, batch norm folded into conv weights and bias, activations fused), plus the
//! JIT functions for every tile shape a node runs. [`CompiledKernels::run_tile`] takes the
//! same inputs as [`crate::reference::tile::run_tile`], the oracle it is tested against.
//!
//! Generated/host split: convolutions (dense and grouped) are im2col (or the input itself for
//! 1×1 stride-1 convolutions) + the host GEMM, or Winograd F(4×4, 3×3) for 3×3 stride-1
//! layers (`winograd.rs`, which applies bias and activation in its output transform and can
//! take a following 2×2 max pool there too), + a JIT epilogue (bias, folded batch norm,
//! residual add, activation), or for stride-1/2 stems with 1–4 input channels the direct
//! kernel (`direct.rs`, bias and activation fused); depthwise convolutions are JIT loop
//! nests with the epilogue fused — 3×3 stride-1/2 ones the host AVX2+FMA kernel
//! (`depthwise.rs`, epilogue fused too) where the CPU has it — and a direct host loop +
//! epilogue only for a tile shape that was not compiled; max pools are JIT loop nests
//! (padding: the input is copied into a −∞ border first); the
//! tail's fully connected layers run on the host GEMV. Inverted-residual blocks (1×1
//! expansion or none → 3×3 depthwise on the host kernel → 1×1 projection) run over bands of
//! output rows (`block.rs`) when a tile's regions line up. Every other layer kind runs on
//! the reference interpreter (`eval_op`).

//!
//! The parts: [`compiled`] (the types: options, statistics, the kernels), [`choice`] (the
//! one place a layer's kernel on a tile is chosen), [`prepare`]
//! (weights packed or transformed, what is fused into each convolution, inverted-residual
//! blocks), [`geometry`] (each layer's operator and input on a tile; specs of the generated
//! functions), [`compile`] (the driver), [`run`] (a tile, layer by layer), [`conv`] (one
//! convolution on the path chosen for it), [`tail`] (the coordinator's layers), [`wired`]
//! (outputs quantised by the epilogue) and [`buffers`] (intermediate tensors recycled per
//! thread).

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
