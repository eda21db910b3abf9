//! Tile outputs quantised for the wire by a generated epilogue.

use crate::jit::{EpilogueSpec, Handle, JitCode};
use crate::wire::{QuantError, Quantised};

/// A tile output quantised by its last epilogue, and the error that made.
pub(super) type Wired = (Quantised, QuantError);

/// Runs the quantising epilogue `h` (compiled from `spec`) on `y`, a `dim` tensor: the
/// codes, each channel's `[lo, step]` from the kernel's stats, and the summed error.
pub(super) fn quantised(
    code: &JitCode,
    h: Handle,
    spec: &EpilogueSpec,
    dim: (usize, usize, usize),
    y: &mut [f32],
    bias: &[f32],
    residual: Option<&[f32]>,
) -> Wired {
    let mut q = Quantised::zeroed(spec.wire, dim);
    let mut stats = vec![[0.0; 4]; dim.0];
    code.run_quantising(h, spec, y, bias, residual, &mut q.codes, &mut stats);
    let mut e = QuantError::default();
    for (r, s) in q.ranges.iter_mut().zip(&stats) {
        *r = [s[0], s[1]];
        e.add(QuantError {
            err: f64::from(s[2]),
            sq: f64::from(s[3]),
        });
    }
    (q, e)
}
