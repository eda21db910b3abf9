//! How the coordinator reaches its workers: the [`Transport`] trait and the messages that
//! cross it. The coordinator is written once against this trait; the in-process transport
//! ([`crate::local`]) moves messages over channels between threads, the gRPC transport over
//! the network, and both behave the same — a test of the coordinator runs on either.

use std::sync::Arc;

use adcnn_core::plan::Segment;
use adcnn_kernels::wire::{QuantError, Quantised, WireTile};
use ndarray::Array3;

/// One tile for a node to compute: frame `frame`'s input region of segment `segment`'s
/// tile `tile` in layout `layout` (the tile geometry both ends hold: layout 0 is the plan's,
/// later ones came with [`Transport::retile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TileJob {
    pub frame: u64,
    pub layout: u32,
    pub segment: u32,
    pub tile: u32,
    pub input: TileInput,
}

/// A tile's input as it travels.
#[derive(Clone, Debug, PartialEq)]
pub enum TileInput {
    /// The values.
    Values(Array3<f32>),
    /// A region of the network's input image as 8-bit pixels, which the node normalises as
    /// the plan's input section says (a quarter of the bytes, the same bits).
    Pixels(Array3<u8>),
    /// A later segment's input quantised as the plan's q8/q4 compression says.
    Quantised(Quantised),
}

impl TileInput {
    /// `[C, H, W]`.
    pub fn dim(&self) -> (usize, usize, usize) {
        match self {
            TileInput::Values(a) => a.dim(),
            TileInput::Pixels(p) => p.dim(),
            TileInput::Quantised(q) => q.dim,
        }
    }

    /// Bytes of its data.
    pub fn bytes(&self) -> usize {
        match self {
            TileInput::Values(a) => 4 * a.len(),
            TileInput::Pixels(p) => p.len(),
            TileInput::Quantised(q) => q.codes.len() + 8 * q.ranges.len(),
        }
    }
}

/// A computed tile, as it comes back.
#[derive(Clone, Debug, PartialEq)]
pub struct TileDone {
    pub frame: u64,
    pub segment: u32,
    pub tile: u32,
    /// The node that computed it (index into the plan's cluster).
    pub node: usize,
    /// The tile's output as it crossed the wire, or why the node could not compute it.
    pub output: Result<WireTile, String>,
    /// What the wire's quantisation cost (zero without compression).
    pub quant_error: QuantError,
    /// When the node started and finished it, in the coordinator's clock (µs since the
    /// transport started).
    pub start_us: f64,
    pub end_us: f64,
    /// When the job left the coordinator and its result came back (the same clock).
    pub sent_us: f64,
    pub received_us: f64,
    /// Of that round trip, the time on the wire (both transfers, without the node's
    /// queueing and compute; 0 in process).
    pub wire_us: f64,
    /// Bytes of the job's input and of the result as they crossed the wire.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What a transport reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Done(TileDone),
    /// A node is gone (its thread stopped, its connection dropped); jobs sent to it are
    /// lost.
    Lost {
        node: usize,
        reason: String,
    },
    /// A lost node is back: set up again, it can take jobs.
    Rejoined {
        node: usize,
    },
    /// A node has prepared layout `layout` (sent with [`Transport::retile`]): its kernels
    /// took `Ok(compile ms)`, or it could not (why).
    Retiled {
        node: usize,
        layout: u32,
        result: Result<f64, String>,
    },
    /// A round trip to a node measured (a ping and its answer), in µs.
    Rtt {
        node: usize,
        rtt_us: f64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("node `{node}` is not reachable: {reason}")]
    Unreachable { node: String, reason: String },
    #[error("node {0} is not a worker of this plan")]
    NotAWorker(usize),
    #[error("the transport is closed")]
    Closed,
}

/// Sends work to nodes and receives what they return.
pub trait Transport {
    /// Sends `job` to `node`. An error means the job cannot reach it.
    fn send(&mut self, node: usize, job: TileJob) -> Result<(), TransportError>;

    /// Sends `node` layout `layout` — new tiles for every segment — to prepare (check
    /// against its programs, compile kernels for the tiles it is given) while it goes on
    /// computing; it answers with [`Event::Retiled`]. Nothing changes on the node until
    /// jobs name the layout. Once it is ready the node keeps, besides it, the plan's layout
    /// and those in `keep` (see [`crate::worker::Worker::retile`]).
    fn retile(
        &mut self,
        node: usize,
        layout: u32,
        segments: Arc<Vec<Segment>>,
        keep: &[u32],
    ) -> Result<(), TransportError>;

    /// The next result or loss, waiting until there is one.
    fn recv(&mut self) -> Result<Event, TransportError>;

    /// The same, waiting at most `timeout` (`None` when nothing came).
    fn recv_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Option<Event>, TransportError>;

    /// Microseconds since the transport started: the clock of [`TileDone`]'s times.
    fn now_us(&self) -> f64;
}
