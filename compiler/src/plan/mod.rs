//! The partition planner: layer graph + cluster → plan.
//!
//! Architecture invariant: this module is pure. No I/O, threads, sockets or Cranelift; the
//! same inputs give the same plan, so plans can be snapshot-tested.
//!
//! A plan splits the graph into the spatially partitionable *head* (convolutions, pools,
//! activations, batch norms, adds, concats, pads) and the *tail* (flatten, linear, global
//! pool and what follows), which runs on the coordinator. The head is cut into fused
//! *segments* at places where a single tensor is live; each segment's output is cut into a
//! grid of tiles, each tile assigned to a node. A segment runs as scatter → compute →
//! gather at the coordinator.

pub mod explain;
pub mod format;
pub mod geometry;
mod search;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::graph::{LayerGraph, LayerId, Source};
pub use geometry::Region;
pub use search::{PlanError, plan, segment_for};

/// How a plan is searched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Strategy {
    /// Lowest predicted latency among exact plans (FDSP too with --allow-approx).
    Auto,
    /// One fused segment over the whole convolutional part, exact halo tiles.
    Halo,
    /// ADCNN's Fully Decomposable Spatial Partition: independent tiles (approximate).
    Fdsp,
    /// One layer at a time, gathered after each (MoDNN).
    Layerwise,
    /// Everything on one node.
    Single,
    /// DeepThings: fused early layers (to cumulative stride 16) in equal tiles and equal
    /// shares; the rest on the coordinator.
    HaloEven,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Auto,
        Strategy::Halo,
        Strategy::Fdsp,
        Strategy::Layerwise,
        Strategy::Single,
        Strategy::HaloEven,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Halo => "halo",
            Strategy::Fdsp => "fdsp",
            Strategy::Layerwise => "layerwise",
            Strategy::Single => "single",
            Strategy::HaloEven => "halo-even",
        }
    }
}

/// How one segment's tiles relate to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Exact: each tile computes its own halo (overlapping, recomputed).
    Halo,
    /// Approximate: each tile is an independent zero-padded image.
    Fdsp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Halo => "halo",
            Mode::Fdsp => "fdsp",
        }
    }
}

/// Wire compression of tile outputs (the format: [`crate::wire`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Compression {
    /// Exact float32.
    None,
    /// 8-bit uniform quantisation with a per-tile, per-channel scale and offset.
    Q8,
    /// 4-bit, likewise.
    Q4,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Q8 => "q8",
            Compression::Q4 => "q4",
        }
    }

    /// Bytes on the wire for `values` values in `channels` channels of equal size (payload +
    /// per-channel scale and offset; q4 starts each channel on a byte).
    pub fn wire_bytes(self, values: usize, channels: usize) -> usize {
        match self {
            Compression::None => 4 * values,
            _ => {
                let per = values.checked_div(channels).unwrap_or(0);
                channels * crate::wire::channel_code_bytes(self, per) + 8 * channels
            }
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub strategy: Strategy,
    /// Force this grid (rows, columns) on every partitioned segment.
    pub grid: Option<(usize, usize)>,
    pub compression: Compression,
    /// Let `auto` choose FDSP segments.
    pub allow_approx: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            strategy: Strategy::Auto,
            grid: None,
            compression: Compression::None,
            allow_approx: false,
        }
    }
}

/// One tile of a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tile {
    /// Position in the grid.
    pub row: usize,
    pub col: usize,
    /// Index into the cluster's nodes.
    pub node: usize,
    /// The part of the segment's output this tile produces.
    pub output: Region,
    /// The part of the segment's input it needs (with halo in halo mode).
    pub input: Region,
    /// For every layer of the segment, in order: the region of its output the tile computes
    /// (halo mode), or the size of the tile's independent image at that layer (FDSP mode).
    pub regions: Vec<Region>,
    pub flops: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Predicted time of this tile on its node (transfers + compute), in milliseconds.
    pub predicted_ms: f64,
}

/// A fused run of layers executed tile-parallel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Its layers: `first..end` in topological order.
    pub first: LayerId,
    pub end: LayerId,
    /// Where its input comes from (the network input or an earlier layer).
    pub input: Source,
    pub mode: Mode,
    pub grid: (usize, usize),
    pub tiles: Vec<Tile>,
    /// FLOPs of the segment computed once, and as the tiles compute them.
    pub flops: u64,
    pub tile_flops: u64,
    /// FDSP only: the fraction of output pixels whose receptive field crosses a tile border,
    /// i.e. that may differ from the exact result.
    pub affected_fraction: f64,
    pub predicted_ms: f64,
}

impl Segment {
    pub fn output(&self) -> LayerId {
        LayerId(self.end.0 - 1)
    }

    pub fn layers(&self) -> impl Iterator<Item = LayerId> {
        (self.first.0..self.end.0).map(LayerId)
    }

    /// Extra FLOPs the tiles compute beyond the segment's own, as a fraction.
    pub fn redundancy(&self) -> f64 {
        if self.flops == 0 {
            0.0
        } else {
            self.tile_flops as f64 / self.flops as f64 - 1.0
        }
    }
}

/// A complete plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub network: String,
    pub cluster: Cluster,
    pub strategy: Strategy,
    pub compression: Compression,
    pub segments: Vec<Segment>,
    /// Layers from here on run on the coordinator, after the last segment.
    pub tail_start: LayerId,
    pub tail_flops: u64,
    pub tail_ms: f64,
    /// Predicted busy time per node (compute and its own transfers), milliseconds.
    pub node_busy_ms: Vec<f64>,
    pub predicted_ms: f64,
    /// Total FLOPs over the sum of worker speeds plus the input's transfer over all links in
    /// parallel: no plan on this cluster can beat it.
    pub ideal_ms: f64,
    /// Approximate plans: the relative L2 distance of the plan's output from the exact
    /// network's, measured by `adcnnc build` on a seeded random input.
    pub deviation: Option<f64>,
}

impl Plan {
    /// True when every segment is exact.
    pub fn is_exact(&self) -> bool {
        self.segments.iter().all(|s| s.mode == Mode::Halo)
    }
}

/// Layers of the tail kinds never go into a segment.
fn is_tail_kind(graph: &LayerGraph, id: LayerId) -> bool {
    let l = graph.layer(id);
    l.stats.receptive.is_none() || matches!(l.op, crate::ops::Op::Softmax) && l.shape.is_flat()
}
