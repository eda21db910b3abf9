//! Cranelift code generation: one [`JitSession`] owns the `JITModule` while a plan's kernels
//! are compiled (declare → define → finalize); the result, [`JitCode`], holds only finished
//! code and function pointers, which worker threads share read-only.
//!
//! What is generated (everything specialised on its constant shapes and parameters):
//! - conv/linear **epilogues**: per output channel, bias (batch norm already folded into the
//!   weights and bias when the plan was built), optional residual add, and relu / clip / leaky relu,
//!   in f32x4 with a scalar remainder — run on the GEMM's output while it is in cache;
//! - **max pooling** (padding is a −∞ border the caller copies in): the whole loop nest with
//!   constant trip counts;
//! - **depthwise convolutions** (one input and one output channel per group): per channel,
//!   the plane is copied into a zeroed scratch buffer with its padding, deinterleaved into
//!   `stride` column phases so every tap reads contiguous columns, then each output row is
//!   f32x4 FMAs over 4-column groups (the 3×3 window unrolled, taps at constant offsets),
//!   with bias (batch norm folded), residual add and activation fused before the one store.
//!
//! The inner products of dense convolutions run in the host micro-kernel (`gemm.rs`):
//! Cranelift 0.135 has no 256-bit vectors on x86-64, and its f32x4 FMA kernels reach about
//! a third of it. Depthwise 3×3 convolutions with stride 1 or 2 — every depthwise layer of
//! MobileNetV2 — run on a host AVX2+FMA kernel (`depthwise.rs`) where the CPU has it:
//! measured per layer (`runtime/kernels/examples/depthwise_bench.rs`), the generated kernel takes
//! 0.80–1.05 ns per output at stride 1 and the host kernel, with 8-lane vectors and two
//! output rows per pass, 0.48–0.95; at stride 2, bound by the deinterleaving copy of four
//! inputs per output, both take 1.2–1.7. The generated kernel stays for every other shape
//! (kernel sizes, dilations, strides) and for CPUs without AVX2.
//!
//! The parts, by job: `spec` — what each function is specialised on ([`EpilogueSpec`],
//! [`MaxPoolSpec`], [`DepthwiseSpec`]); `isa` — the host ISA and [`JitError`]; `clif` —
//! the CLIF builders, one module per kind over shared helpers, with the `*_clif` snapshot
//! printers; `session` — [`JitSession`], [`Handle`] and [`JitCode`], which calls the
//! finished code.

mod clif;
mod isa;
mod session;
mod spec;

pub use crate::act::Act;
pub use clif::depthwise::depthwise_clif;
pub use clif::epilogue::epilogue_clif;
pub use clif::max_pool::max_pool_clif;
pub use isa::{JitError, host_isa};
pub use session::{
    DepthwiseFn, EpilogueFn, Handle, JitCode, JitSession, MaxPoolFn, QuantEpilogueFn,
};
pub use spec::{DepthwiseSpec, EpilogueSpec, MaxPoolSpec};
