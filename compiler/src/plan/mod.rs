//! The partition planner: layer graph + cluster → plan.
//!
//! Architecture invariant: this module is pure. No I/O, threads, sockets, Cranelift or
//! command-line parsing; the same inputs give the same plan, so plans can be snapshot-tested.
//! The plan types themselves are `adcnn_core::plan`'s: the runtime reads them too.
//!
//! A plan splits the graph into the spatially partitionable *head* (convolutions, pools,
//! activations, batch norms, adds, concats, pads) and the *tail* (flatten, linear, global
//! pool and what follows), which runs on the coordinator. The head is cut into fused
//! *segments* at places where a single tensor is live; each segment's output is cut into a
//! grid of tiles, each tile assigned to a node. A segment runs as scatter → compute →
//! gather at the coordinator.

pub mod explain;
mod search;

pub use adcnn_core::plan::{Compression, Mode, Plan, Region, Segment, Strategy, Tile};
pub use search::{PlanError, plan, segment_for};

use crate::graph::{LayerGraph, LayerId};

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

/// Layers of the tail kinds never go into a segment.
fn is_tail_kind(graph: &LayerGraph, id: LayerId) -> bool {
    let l = graph.layer(id);
    l.stats.receptive.is_none() || matches!(l.op, adcnn_core::ops::Op::Softmax) && l.shape.is_flat()
}
