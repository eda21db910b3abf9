//! adcnn's runtime: loads inputs and executes networks. Today it runs a checked network on
//! the reference interpreter; the plan executor (coordinator and workers) builds on it.

pub mod exec;
pub mod input;
pub mod report;
pub mod trace;
