//! adcnn's runtime: runs plans built by `adcnnc build`.
//!
//! - [`worker`] — [`worker::Worker`]: one node's share of a plan (its segments' programs and
//!   the kernels compiled for them) answering tile jobs;
//! - [`coordinator`] — [`coordinator::Coordinator`]: scatters tile inputs, stitches outputs,
//!   runs the tail, several frames in flight, over any [`transport::Transport`];
//! - [`transport`] — the trait and the messages (tile jobs, results, node losses);
//! - [`local`] — the in-process transport and [`local::LocalCluster`], a whole plan in this
//!   process;
//! - [`replan`] — drift of the nodes' measured speeds from what the running tile layout
//!   assumed: when to re-plan (the coordinator re-balances with `adcnn_core::rebalance`);
//! - [`trace`] — Chrome trace-event JSON of a run.
//!
//! Architecture invariant: the runtime reads plans through `adcnn_core::format` and never
//! links the compiler (no DSL parser, no search over cut points, no reference interpreter over
//! graphs); re-planning re-balances tiles within the plan's segments, with core's shared
//! halo tracing and cost model.

pub mod coordinator;
pub mod local;
pub mod net;
pub mod replan;
pub mod telemetry;
pub mod trace;
pub mod transport;
pub mod worker;
