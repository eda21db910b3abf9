//! The runtime over the network: the gRPC protocol between the coordinator and its workers
//! (`runtime/proto/adcnn.proto`, compiled at build time with protox), the worker daemon, the
//! coordinator's gRPC transport, the cluster token, certificates, and tensors on the wire.

pub mod admit;
pub mod auth;
pub mod client;
pub mod cluster_file;
pub mod codec;
pub mod emulate;
pub mod server;
pub mod tls;

/// The generated protocol types and service.
#[allow(missing_debug_implementations, reason = "generated code")]
#[allow(clippy::all, reason = "generated code")]
pub mod proto {
    tonic::include_proto!("adcnn.v1");
}

/// Bumped whenever the protocol's messages or their meaning change; both ends must agree.
/// 2: tile inputs may be q8/q4 (quantised hand-offs) or 8-bit pixels; `Close`.
pub const PROTOCOL_VERSION: u32 = 3;
