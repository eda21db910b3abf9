//! The host target: the ISA Cranelift compiles for, and the error of code generation.

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

#[derive(Debug, thiserror::Error)]
#[error("jit: {0}")]
pub struct JitError(pub String);

pub(super) fn err(e: impl std::fmt::Display) -> JitError {
    JitError(e.to_string())
}

/// The host ISA with `opt_level=speed`, detected by cranelift-native.
pub fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    flags.set("is_pic", "false").map_err(err)?;
    let isa = cranelift_native::builder().map_err(err)?;
    isa.finish(settings::Flags::new(flags)).map_err(err)
}
