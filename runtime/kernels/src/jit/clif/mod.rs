//! The CLIF builders: one module per generated function kind, each building its function
//! into a Cranelift `Function` and printing it for the snapshots, over shared helpers.

pub(super) mod depthwise;
pub(super) mod epilogue;
pub(super) mod helpers;
pub(super) mod max_pool;
