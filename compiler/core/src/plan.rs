//! Plans: what the partition planner decides and the runtime carries out. A plan splits the
//! network into the spatially partitionable *head* — fused *segments*, each cut into a grid
//! of tiles assigned to nodes — and the *tail*, which runs on the coordinator.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
pub use crate::geometry::Region;
use crate::net::{LayerId, Source};

/// How a plan is searched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// One line on what the strategy does (for `--help`).
    pub fn help(self) -> &'static str {
        match self {
            Strategy::Auto => {
                "lowest predicted latency among exact plans (FDSP too with --allow-approx)"
            }
            Strategy::Halo => {
                "one fused segment over the whole convolutional part, exact halo tiles"
            }
            Strategy::Fdsp => {
                "ADCNN's Fully Decomposable Spatial Partition: independent tiles (approximate)"
            }
            Strategy::Layerwise => "one layer at a time, gathered after each (MoDNN)",
            Strategy::Single => "everything on one node",
            Strategy::HaloEven => {
                "DeepThings: fused early layers in equal tiles and equal shares; the rest on the coordinator"
            }
        }
    }

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

/// Wire compression of tile outputs (the runtime's wire coding implements it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    pub const ALL: [Compression; 3] = [Compression::None, Compression::Q8, Compression::Q4];

    /// Quantisation levels above the lowest: 255 for q8, 15 for q4, `None` for exact.
    pub fn levels(self) -> Option<u32> {
        match self {
            Compression::None => None,
            Compression::Q8 => Some(255),
            Compression::Q4 => Some(15),
        }
    }

    /// Bytes of codes for one channel of `pixels` values (q4 starts each channel on a byte).
    pub fn code_bytes(self, pixels: usize) -> usize {
        match self {
            Compression::None => 4 * pixels,
            Compression::Q8 => pixels,
            Compression::Q4 => pixels.div_ceil(2),
        }
    }

    /// Bytes on the wire for `values` values in `channels` channels of equal size (payload +
    /// per-channel scale and offset; q4 starts each channel on a byte).
    pub fn wire_bytes(self, values: usize, channels: usize) -> usize {
        match self {
            Compression::None => 4 * values,
            _ => {
                let per = values.checked_div(channels).unwrap_or(0);
                channels * self.code_bytes(per) + 8 * channels
            }
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

impl Tile {
    /// Predicted milliseconds of this tile on `node` of `cluster` computing at `gflops`
    /// GFLOP/s: its input's transfer, its FLOPs, its output's transfer (the planner's cost
    /// model).
    pub fn ms_on(&self, cluster: &Cluster, node: usize, gflops: f64) -> f64 {
        let compute = self.flops as f64 / (gflops * 1e6);
        cluster.transfer_ms(node, self.input_bytes)
            + compute
            + cluster.transfer_ms(node, self.output_bytes)
    }
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

/// A name that is not one of an enum's values; says which values there are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a {what}; use one of {}", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub found: String,
    pub expected: Vec<&'static str>,
}

impl FromStr for Strategy {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Strategy::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownName {
                what: "strategy",
                found: s.to_string(),
                expected: Strategy::ALL.iter().map(|v| v.name()).collect(),
            })
    }
}

impl FromStr for Compression {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Compression::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| UnknownName {
                what: "compression",
                found: s.to_string(),
                expected: Compression::ALL.iter().map(|v| v.name()).collect(),
            })
    }
}
