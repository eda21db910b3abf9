//! Re-balancing a plan for the speeds measured of its nodes: what the runtime's re-planner
//! calls when a node drifts from what the plan assumed, is lost, or comes back.
//!
//! The plan's segments (its cut points and modes) stay; what changes is each segment's tiles
//! and who computes them. The nodes that may get tiles of a segment are the ones that hold
//! its program (the plan gave them tiles of it), so no weights need to move. For every
//! segment, the candidates are
//!
//! - its current tiles, each given (largest first) to the node that would finish it
//!   earliest at the measured speeds — the only candidate for FDSP segments, whose tile
//!   sizes the stitching depends on;
//! - for exact (halo) segments, one strip per available holder across the rows, and across
//!   the columns, sized so that the predicted times come out even (sizes start in proportion
//!   to speed, then follow each strip's predicted time, halo included);
//!
//! and the one with the shortest predicted time wins, the current tiles on a tie. Times come
//! from the planner's cost model ([`Tile::ms_on`]) with the measured speeds in place of
//! the cluster file's. Pure: the same inputs give the same result.

use crate::cluster::Cluster;
use crate::geometry::{Region, halo_regions, split};
use crate::net::{Layer, Source};
use crate::ops::Shape;
use crate::plan::{Compression, Mode, Segment, Tile};

/// What re-balancing knows of one segment beyond its geometry: its layers (operators,
/// inputs, shapes), their FLOPs over the whole map, and the shape of its input.
#[derive(Clone, Copy, Debug)]
pub struct SegmentLayers<'a> {
    pub layers: &'a [Layer],
    pub flops: &'a [u64],
    pub input: Shape,
}

/// A re-balanced head.
#[derive(Clone, Debug, PartialEq)]
pub struct Rebalanced {
    pub segments: Vec<Segment>,
    /// Predicted milliseconds of the head (its segments one after another) with the new
    /// tiles, and with the current ones as they are assigned now, both at the measured
    /// speeds (infinite when a current tile is on a node that is not available).
    pub predicted_ms: f64,
    pub current_ms: f64,
}

impl Rebalanced {
    /// How much faster the new tiles are predicted to be: `current / new` (≥ 1 unless the
    /// current assignment was already the best).
    pub fn gain(&self) -> f64 {
        if self.predicted_ms > 0.0 {
            self.current_ms / self.predicted_ms
        } else {
            1.0
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RebalanceError {
    #[error("segment {segment}: no node that holds it is available")]
    NoHolder { segment: usize },
    #[error("{segments} segments in the plan, {layers} described")]
    Mismatch { segments: usize, layers: usize },
}

/// Re-balances `current` (the segments as they run now) for `speeds`: per node, the
/// GFLOP/s measured of it, or 0 when it is not available (lost). `holders[s]` are the
/// nodes that hold segment `s`'s program; `layers[s]` describes it.
pub fn rebalance(
    cluster: &Cluster,
    compression: Compression,
    current: &[Segment],
    holders: &[Vec<usize>],
    layers: &[SegmentLayers<'_>],
    speeds: &[f64],
) -> Result<Rebalanced, RebalanceError> {
    if layers.len() != current.len() || holders.len() != current.len() {
        return Err(RebalanceError::Mismatch {
            segments: current.len(),
            layers: layers.len(),
        });
    }
    let speed = |n: usize| speeds.get(n).copied().unwrap_or(0.0);
    let mut segments = Vec::with_capacity(current.len());
    let (mut predicted_ms, mut current_ms) = (0.0, 0.0);
    for (si, seg) in current.iter().enumerate() {
        let avail: Vec<usize> = holders[si]
            .iter()
            .copied()
            .filter(|&n| speed(n) > 0.0 && cluster.nodes.get(n).is_some_and(|x| x.worker))
            .collect();
        if avail.is_empty() {
            return Err(RebalanceError::NoHolder { segment: si });
        }
        current_ms += makespan(cluster, &seg.tiles, speeds);
        let mut best = seg.clone();
        best.predicted_ms = assign(cluster, &mut best.tiles, &avail, speeds);
        if seg.mode == Mode::Halo {
            for axis in [Axis::Rows, Axis::Cols] {
                if let Some(s) =
                    strips(cluster, compression, seg, &layers[si], &avail, speeds, axis)
                    && s.predicted_ms < best.predicted_ms - 1e-9
                {
                    best = s;
                }
            }
        }
        predicted_ms += best.predicted_ms;
        segments.push(best);
    }
    Ok(Rebalanced {
        segments,
        predicted_ms,
        current_ms,
    })
}

/// The slowest node's predicted time over `tiles` as assigned (infinite if a tile is on a
/// node with no speed).
fn makespan(cluster: &Cluster, tiles: &[Tile], speeds: &[f64]) -> f64 {
    let mut busy = vec![0.0; cluster.nodes.len()];
    for t in tiles {
        let s = speeds.get(t.node).copied().unwrap_or(0.0);
        if s <= 0.0 {
            return f64::INFINITY;
        }
        busy[t.node] += t.ms_on(cluster, t.node, s);
    }
    busy.into_iter().fold(0.0, f64::max)
}

/// Gives each tile, largest first, to the node of `avail` that would finish it earliest;
/// sets the tiles' predictions and returns the makespan.
fn assign(cluster: &Cluster, tiles: &mut [Tile], avail: &[usize], speeds: &[f64]) -> f64 {
    let mut busy = vec![0.0; cluster.nodes.len()];
    let mut order: Vec<usize> = (0..tiles.len()).collect();
    order.sort_by(|&x, &y| tiles[y].flops.cmp(&tiles[x].flops).then(x.cmp(&y)));
    for i in order {
        let ms = |n: usize| tiles[i].ms_on(cluster, n, speeds[n]);
        let (n, t) = avail
            .iter()
            .map(|&n| (n, ms(n)))
            .min_by(|(n1, m1), (n2, m2)| {
                (busy[*n1] + m1)
                    .total_cmp(&(busy[*n2] + m2))
                    .then(n1.cmp(n2))
            })
            .unwrap_or((avail[0], 0.0));
        tiles[i].node = n;
        tiles[i].predicted_ms = t;
        busy[n] += t;
    }
    busy.into_iter().fold(0.0, f64::max)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Axis {
    Rows,
    Cols,
}

/// One strip per node of `avail` along `axis`, sizes balanced by predicted time; `None`
/// when the output is too small for that many strips or a strip cannot be a tile.
fn strips(
    cluster: &Cluster,
    compression: Compression,
    seg: &Segment,
    desc: &SegmentLayers<'_>,
    avail: &[usize],
    speeds: &[f64],
    axis: Axis,
) -> Option<Segment> {
    let out_layer = desc.layers.last()?;
    let out = out_layer.shape;
    let len = match axis {
        Axis::Rows => out.h,
        Axis::Cols => out.w,
    };
    let mut weights: Vec<f64> = avail.iter().map(|&n| speeds[n]).collect();
    let mut best: Option<Segment> = None;
    // Proportional to speed first; then each strip's share scaled by how far its predicted
    // time is from the mean (the halo makes narrow strips dearer than their rows).
    for _ in 0..4 {
        let parts = split(len, &weights)?;
        let mut tiles = Vec::with_capacity(avail.len());
        for (i, (&node, &(a, b))) in avail.iter().zip(&parts).enumerate() {
            let region = match axis {
                Axis::Rows => Region {
                    r0: a,
                    r1: b,
                    c0: 0,
                    c1: out.w,
                },
                Axis::Cols => Region {
                    r0: 0,
                    r1: out.h,
                    c0: a,
                    c1: b,
                },
            };
            let mut t = halo_tile(compression, seg, desc, region, node)?;
            (t.row, t.col) = match axis {
                Axis::Rows => (i, 0),
                Axis::Cols => (0, i),
            };
            t.predicted_ms = t.ms_on(cluster, node, speeds[node]);
            tiles.push(t);
        }
        let ms: Vec<f64> = tiles.iter().map(|t| t.predicted_ms).collect();
        let makespan = ms.iter().copied().fold(0.0, f64::max);
        let candidate = Segment {
            grid: match axis {
                Axis::Rows => (tiles.len(), 1),
                Axis::Cols => (1, tiles.len()),
            },
            tile_flops: tiles.iter().map(|t| t.flops).sum(),
            tiles,
            affected_fraction: 0.0,
            predicted_ms: makespan,
            ..seg.clone()
        };
        if best
            .as_ref()
            .is_none_or(|b| candidate.predicted_ms < b.predicted_ms - 1e-9)
        {
            best = Some(candidate);
        }
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        for (w, t) in weights.iter_mut().zip(&ms) {
            if *t > 0.0 {
                *w *= mean / t;
            }
        }
    }
    best
}

/// The halo tile of `seg` that produces `out` on `node`: its regions traced back through
/// the segment, its FLOPs and its bytes each way.
fn halo_tile(
    compression: Compression,
    seg: &Segment,
    desc: &SegmentLayers<'_>,
    out: Region,
    node: usize,
) -> Option<Tile> {
    let first = seg.first.index();
    let n = desc.layers.len();
    let shape_of = |s: &Source| match s {
        Source::Layer(id) if id.index() >= first && id.index() - first < n => {
            desc.layers[id.index() - first].shape
        }
        _ => desc.input,
    };
    let (regions, need) = halo_regions(desc.layers, first, shape_of, out).ok()?;
    let flops = desc
        .layers
        .iter()
        .zip(desc.flops)
        .zip(&regions)
        .map(|((l, &f), r)| {
            let full = (l.shape.h * l.shape.w).max(1) as u128;
            (f as u128 * r.area() as u128 / full) as u64
        })
        .sum();
    let out_c = desc.layers.last()?.shape.c;
    Some(Tile {
        row: 0,
        col: 0,
        node,
        output: out,
        input: need,
        regions,
        flops,
        input_bytes: (4 * need.area() * desc.input.c) as u64,
        output_bytes: compression.wire_bytes(out.area() * out_c, out_c) as u64,
        predicted_ms: 0.0,
    })
}

/// Per node (of `nodes`): its share of the tile FLOPs of `segments`.
pub fn shares(segments: &[Segment], nodes: usize) -> Vec<f64> {
    let mut f = vec![0.0; nodes];
    for t in segments.iter().flat_map(|s| &s.tiles) {
        if let Some(x) = f.get_mut(t.node) {
            *x += t.flops as f64;
        }
    }
    let total: f64 = f.iter().sum();
    if total > 0.0 {
        f.iter_mut().for_each(|x| *x /= total);
    }
    f
}
