//! Native code for tile kernels: the host SGEMM (`gemm`), Cranelift code generation (`jit`)
//! and the compiled kernels of a plan (`kernel`). See ARCHITECTURE.md for the split between
//! generated and host code and the measurements behind it.

pub mod block;
pub mod depthwise;
pub mod direct;
pub mod gemm;
pub mod jit;
pub mod kernel;
pub mod winograd;

pub use kernel::{BAND_BYTES, CompileError, CompileOptions, CompiledKernels, KernelStats, Profile};

/// Relative L2 distance `‖a − b‖ / ‖b‖` (0 when both are zero).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
