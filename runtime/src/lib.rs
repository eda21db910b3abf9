//! adcnn's runtime: runs plans built by `adcnnc build`.
//!
//! - [`worker`] — [`worker::Worker`]: one node's share of a plan (its segments' programs and
//!   the kernels compiled for them) answering tile jobs;
//! - [`coordinator`] — [`coordinator::Coordinator`]: scatters tile inputs, stitches outputs,
//!   runs the tail, several frames in flight, over any [`transport::Transport`];
//! - [`transport`] — the trait and the messages (tile jobs, results, node losses);
//! - [`local`] — the in-process transport and [`local::LocalCluster`], a whole plan in this
//!   process;
//! - [`trace`] — Chrome trace-event JSON of a run.
//!
//! Architecture invariant: the runtime reads plans through `adcnn_core::format` and never
//! links the compiler (no DSL parser, no planner, no reference interpreter over graphs).

pub mod coordinator;
pub mod local;
pub mod net;
pub mod telemetry;
pub mod trace;
pub mod transport;
pub mod worker;
