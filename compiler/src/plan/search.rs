//! Building segments and searching segmentations × grids × modes for the lowest predicted
//! latency, under the cost model: a tile costs its input transfer, its FLOPs at the node's
//! speed and its (compressed) output transfer; a segment lasts as long as its busiest node;
//! segments run one after another; the tail runs on the coordinator.

use std::collections::HashMap;

use crate::graph::{LayerGraph, LayerId, Source};
use crate::plan::{Mode, Options, Plan, Segment, Strategy, Tile, is_tail_kind};
use adcnn_core::cluster::Cluster;
use adcnn_core::geometry::{Region, halo_regions, independent_out, split};
use adcnn_core::ops::{Op, Shape};

/// Why no plan could be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("the cluster has no worker")]
    NoWorker,
    #[error(
        "grid {rows}×{cols} does not fit the {h}×{w} output of the segment ending at `{layer}`"
    )]
    GridTooLarge {
        rows: usize,
        cols: usize,
        h: usize,
        w: usize,
        layer: String,
    },
    #[error("layer `{layer}` cannot be cut into tiles: {why}")]
    NotTileable { layer: String, why: String },
    #[error("FDSP cannot cut the segment ending at `{layer}` into a {rows}×{cols} grid: {why}")]
    FdspImpossible {
        rows: usize,
        cols: usize,
        layer: String,
        why: String,
    },
}

/// Makes a plan for `graph` on `cluster`.
pub fn plan(graph: &LayerGraph, cluster: &Cluster, opts: &Options) -> Result<Plan, PlanError> {
    if cluster.workers().count() == 0 {
        return Err(PlanError::NoWorker);
    }
    let ctx = Ctx::new(graph, cluster, opts);
    let cuts = ctx.candidate_cuts();
    let head_end = *cuts.last().unwrap_or(&0);
    let mut tail_start = head_end;
    let segments: Vec<Segment> = if head_end == 0 {
        Vec::new()
    } else {
        match opts.strategy {
            Strategy::Single => vec![ctx.best_segment(0, head_end, &[Mode::Halo], Some((1, 1)))?],
            Strategy::Halo => vec![ctx.best_segment(0, head_end, &[Mode::Halo], opts.grid)?],
            Strategy::Layerwise => cuts
                .windows(2)
                .map(|w| ctx.best_segment(w[0], w[1], &[Mode::Halo], opts.grid))
                .collect::<Result<_, _>>()?,
            Strategy::HaloEven => {
                // DeepThings fuses the early layers, up to the deepest place whose cumulative
                // stride is at most 16, and leaves the rest to the gateway.
                let end = cuts
                    .iter()
                    .copied()
                    .filter(|&p| p > 0 && ctx.out_stride(p) <= 16)
                    .max()
                    .unwrap_or(head_end);
                tail_start = end;
                let n = ctx.workers.len();
                let (rows, cols) = opts.grid.unwrap_or_else(|| near_square(n));
                vec![ctx.even_shares(0, end, (rows, cols))?]
            }
            Strategy::Auto | Strategy::Fdsp => {
                let modes: &[Mode] = if opts.strategy == Strategy::Fdsp || opts.allow_approx {
                    &[Mode::Halo, Mode::Fdsp]
                } else {
                    &[Mode::Halo]
                };
                ctx.search(&cuts, modes)?
            }
        }
    };
    Ok(ctx.finish(segments, LayerId(tail_start as u32)))
}

/// The most square grid with `n` tiles, rows ≤ columns.
fn near_square(n: usize) -> (usize, usize) {
    let mut best = (1, n);
    for r in 1..=n {
        if n.is_multiple_of(r) && r <= n / r {
            best = (r, n / r);
        }
    }
    best
}

struct Ctx<'a> {
    graph: &'a LayerGraph,
    cluster: &'a Cluster,
    opts: &'a Options,
    /// Indices of worker nodes.
    workers: Vec<usize>,
}

impl<'a> Ctx<'a> {
    fn new(graph: &'a LayerGraph, cluster: &'a Cluster, opts: &'a Options) -> Self {
        let workers = cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.worker)
            .map(|(i, _)| i)
            .collect();
        Ctx {
            graph,
            cluster,
            opts,
            workers,
        }
    }

    fn shape_of(&self, s: Source) -> Shape {
        match s {
            Source::Input => self.graph.input.shape,
            Source::Layer(id) => self.graph.layer(id).shape,
        }
    }

    /// Cumulative stride (rows) of the value live at cut `p`.
    fn out_stride(&self, p: usize) -> usize {
        if p == 0 {
            return 1;
        }
        self.graph.layers()[p - 1]
            .stats
            .receptive
            .map_or(usize::MAX, |r| r.stride.h.max(r.stride.w))
    }

    /// Places `p` (0 = before the first layer) where exactly one tensor is live, within the
    /// head, and right before a window operator (so activations stay with their producer),
    /// plus the end of the head. Sorted, starting with 0.
    fn candidate_cuts(&self) -> Vec<usize> {
        let layers = self.graph.layers();
        let head_len = (0..layers.len())
            .find(|&i| is_tail_kind(self.graph, LayerId(i as u32)))
            .unwrap_or(layers.len());
        // Last position that reads each value (the input is value `layers.len()`).
        let mut last_use = vec![0usize; layers.len() + 1];
        for (i, l) in layers.iter().enumerate() {
            for s in &l.inputs {
                let v = match s {
                    Source::Input => layers.len(),
                    Source::Layer(id) => id.index(),
                };
                last_use[v] = last_use[v].max(i);
            }
        }
        // The network's output is read after the last layer.
        if let Some(last) = layers.len().checked_sub(1) {
            last_use[last] = layers.len();
        }
        let mut single_live = vec![false; head_len + 1];
        single_live[0] = true;
        for (p, flag) in single_live.iter_mut().enumerate().skip(1) {
            let input_live = last_use[layers.len()] >= p;
            let live = (0..p).filter(|&v| last_use[v] >= p).count() + usize::from(input_live);
            let out_is_live = last_use[p - 1] >= p;
            *flag = live == 1 && out_is_live;
        }
        let head_end = (0..=head_len).rev().find(|&p| single_live[p]).unwrap_or(0);
        let mut cuts: Vec<usize> = (0..head_end)
            .filter(|&p| {
                single_live[p]
                    && matches!(
                        layers[p].op,
                        Op::Conv2d(_) | Op::MaxPool(_) | Op::AvgPool(_)
                    )
            })
            .collect();
        if cuts.first() != Some(&0) {
            cuts.insert(0, 0);
        }
        if head_end > 0 {
            cuts.push(head_end);
        }
        cuts
    }

    fn input_of(&self, a: usize) -> Source {
        if a == 0 {
            Source::Input
        } else {
            Source::Layer(LayerId(a as u32 - 1))
        }
    }

    /// Grid candidates for an `h × w` output: even grids up to 4×4, and strips whose sizes
    /// follow the workers' speeds.
    fn grids(&self, h: usize, w: usize, forced: Option<(usize, usize)>) -> Vec<Grid> {
        let even = |n: usize| vec![1.0; n];
        let mut out = Vec::new();
        if let Some((r, c)) = forced {
            if let (Some(rows), Some(cols)) = (split(h, &even(r)), split(w, &even(c))) {
                out.push((rows, cols));
            }
            return out;
        }
        for r in 1..=4 {
            for c in 1..=4 {
                if let (Some(rows), Some(cols)) = (split(h, &even(r)), split(w, &even(c))) {
                    out.push((rows, cols));
                }
            }
        }
        let speeds: Vec<f64> = self
            .workers
            .iter()
            .map(|&n| self.cluster.nodes[n].speed())
            .collect();
        if speeds.len() > 1 && speeds.iter().any(|s| *s != speeds[0]) {
            if let Some(rows) = split(h, &speeds) {
                out.push((rows, vec![(0, w)]));
            }
            if let Some(cols) = split(w, &speeds) {
                out.push((vec![(0, h)], cols));
            }
        }
        out
    }

    /// The cheapest segment over `a..b` among grids and `modes`.
    fn best_segment(
        &self,
        a: usize,
        b: usize,
        modes: &[Mode],
        forced: Option<(usize, usize)>,
    ) -> Result<Segment, PlanError> {
        let out = self.graph.layers()[b - 1].shape;
        let grids = self.grids(out.h, out.w, forced);
        if grids.is_empty() {
            let (rows, cols) = forced.unwrap_or((1, 1));
            return Err(PlanError::GridTooLarge {
                rows,
                cols,
                h: out.h,
                w: out.w,
                layer: self.graph.layers()[b - 1].name.clone(),
            });
        }
        let mut best: Option<Segment> = None;
        let mut last_err = None;
        for mode in modes {
            for (rows, cols) in &grids {
                match self.segment(a, b, *mode, rows, cols, Assign::Fastest) {
                    Ok(s) => {
                        if best
                            .as_ref()
                            .is_none_or(|x| s.predicted_ms < x.predicted_ms - 1e-9)
                        {
                            best = Some(s);
                        }
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        match (best, last_err) {
            (Some(s), _) => Ok(s),
            (None, Some(e)) => Err(e),
            (None, None) => Err(PlanError::NoWorker),
        }
    }

    fn even_shares(
        &self,
        a: usize,
        b: usize,
        (r, c): (usize, usize),
    ) -> Result<Segment, PlanError> {
        let out = self.graph.layers()[b - 1].shape;
        let (Some(rows), Some(cols)) = (split(out.h, &vec![1.0; r]), split(out.w, &vec![1.0; c]))
        else {
            return Err(PlanError::GridTooLarge {
                rows: r,
                cols: c,
                h: out.h,
                w: out.w,
                layer: self.graph.layers()[b - 1].name.clone(),
            });
        };
        self.segment(a, b, Mode::Halo, &rows, &cols, Assign::RoundRobin)
    }

    /// Dynamic programming over cut points: the cheapest sequence of segments covering the head.
    fn search(&self, cuts: &[usize], modes: &[Mode]) -> Result<Vec<Segment>, PlanError> {
        let n = cuts.len();
        let mut best: Vec<Option<(f64, usize)>> = vec![None; n];
        best[0] = Some((0.0, 0));
        let mut memo: HashMap<(usize, usize), Segment> = HashMap::new();
        for j in 1..n {
            for i in 0..j {
                let Some((base, _)) = best[i] else { continue };
                let seg = match self.best_segment(cuts[i], cuts[j], modes, self.opts.grid) {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                let total = base + seg.predicted_ms;
                if best[j].is_none_or(|(t, _)| total < t - 1e-9) {
                    best[j] = Some((total, i));
                }
                memo.insert((i, j), seg);
            }
        }
        if best[n - 1].is_none() {
            // Nothing fits (a forced grid too large everywhere): report the whole head's reason.
            return Err(self
                .best_segment(0, cuts[n - 1], modes, self.opts.grid)
                .err()
                .unwrap_or(PlanError::NoWorker));
        }
        let mut out = Vec::new();
        let mut j = n - 1;
        while j > 0 {
            let Some((_, i)) = best[j] else { break };
            if let Some(s) = memo.remove(&(i, j)) {
                out.push(s);
            }
            j = i;
        }
        out.reverse();
        Ok(out)
    }

    /// Builds one segment `a..b` with the given grid and mode, tiles assigned to nodes.
    fn segment(
        &self,
        a: usize,
        b: usize,
        mode: Mode,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        assign: Assign,
    ) -> Result<Segment, PlanError> {
        let layers = &self.graph.layers()[a..b];
        let input = self.input_of(a);
        let in_shape = self.shape_of(input);
        let out_layer = &layers[layers.len() - 1];
        let out_shape = out_layer.shape;
        let flops: u64 = layers.iter().map(|l| l.stats.flops).sum();
        let mut tiles = Vec::new();
        for (ri, &(r0, r1)) in rows.iter().enumerate() {
            for (ci, &(c0, c1)) in cols.iter().enumerate() {
                let out = Region { r0, r1, c0, c1 };
                let (regions, need) = match mode {
                    Mode::Halo => self.halo_regions(a, b, out)?,
                    Mode::Fdsp => self.fdsp_regions(a, b, out, in_shape, rows, cols, ri, ci)?,
                };
                let tile_flops: u64 = layers
                    .iter()
                    .zip(&regions)
                    .map(|(l, r)| {
                        let full = (l.shape.h * l.shape.w).max(1) as u128;
                        (l.stats.flops as u128 * r.area() as u128 / full) as u64
                    })
                    .sum();
                let input_bytes = (4 * need.area() * in_shape.c) as u64;
                let output_bytes = self
                    .opts
                    .compression
                    .wire_bytes(out.area() * out_shape.c, out_shape.c)
                    as u64;
                tiles.push(Tile {
                    row: ri,
                    col: ci,
                    node: 0,
                    output: out,
                    input: need,
                    regions,
                    flops: tile_flops,
                    input_bytes,
                    output_bytes,
                    predicted_ms: 0.0,
                });
            }
        }
        let busy = self.assign(&mut tiles, assign);
        let predicted_ms = busy.iter().copied().fold(0.0, f64::max);
        let tile_flops = tiles.iter().map(|t| t.flops).sum();
        let affected_fraction = if mode == Mode::Fdsp {
            self.affected(a, b, &tiles, out_shape)
        } else {
            0.0
        };
        Ok(Segment {
            first: LayerId(a as u32),
            end: LayerId(b as u32),
            input,
            mode,
            grid: (rows.len(), cols.len()),
            tiles,
            flops,
            tile_flops,
            affected_fraction,
            predicted_ms,
        })
    }

    /// Halo mode: the region of every layer's output a tile computes, and the input region it
    /// needs, by tracing the tile's output region back through the segment.
    fn halo_regions(
        &self,
        a: usize,
        b: usize,
        out: Region,
    ) -> Result<(Vec<Region>, Region), PlanError> {
        let layers = &self.graph.layers()[a..b];
        halo_regions(layers, a, |s| self.shape_of(*s), out).map_err(|(l, e)| {
            PlanError::NotTileable {
                layer: layers[l].name.clone(),
                why: e.0,
            }
        })
    }

    /// FDSP mode: the tile's input is the matching stride-aligned block of the segment input,
    /// processed as an image of its own; every layer's size must come out so that the tiles'
    /// outputs stitch to the full output.
    #[allow(clippy::too_many_arguments)]
    fn fdsp_regions(
        &self,
        a: usize,
        b: usize,
        out: Region,
        in_shape: Shape,
        rows: &[(usize, usize)],
        cols: &[(usize, usize)],
        ri: usize,
        ci: usize,
    ) -> Result<(Vec<Region>, Region), PlanError> {
        let layers = self.graph.layers();
        let out_layer = &layers[b - 1];
        let fail = |why: String| PlanError::FdspImpossible {
            rows: rows.len(),
            cols: cols.len(),
            layer: out_layer.name.clone(),
            why,
        };
        let (sh, sw) = (
            in_shape.h / out_layer.shape.h.max(1),
            in_shape.w / out_layer.shape.w.max(1),
        );
        if sh == 0 || sw == 0 {
            return Err(fail("the segment enlarges its input".into()));
        }
        // Input block: output cuts scaled by the stride; the last block takes the remainder.
        let scale = |o: usize, s: usize, last: bool, len: usize| if last { len } else { o * s };
        let need = Region {
            r0: out.r0 * sh,
            r1: scale(out.r1, sh, ri + 1 == rows.len(), in_shape.h),
            c0: out.c0 * sw,
            c1: scale(out.c1, sw, ci + 1 == cols.len(), in_shape.w),
        };
        let mut sizes: Vec<Option<(usize, usize)>> = vec![None; b - a];
        for l in a..b {
            let layer = &layers[l];
            let mut in_size = None;
            for s in &layer.inputs {
                let size = match s {
                    Source::Layer(id) if id.index() >= a => sizes[id.index() - a],
                    _ => Some((need.rows(), need.cols())),
                };
                match (in_size, size) {
                    (None, s) => in_size = s,
                    (Some(x), Some(y)) if x != y => {
                        return Err(fail(format!(
                            "the inputs of `{}` differ in size",
                            layer.name
                        )));
                    }
                    _ => {}
                }
            }
            let (r, c) = in_size.ok_or_else(|| fail("a layer has no input".into()))?;
            sizes[l - a] = independent_out(&layer.op, r, c);
            if sizes[l - a].is_none() {
                return Err(fail(format!(
                    "`{}` does not fit a {r}×{c} tile",
                    layer.name
                )));
            }
        }
        let last = sizes[b - a - 1].unwrap_or((0, 0));
        if last != (out.rows(), out.cols()) {
            return Err(fail(format!(
                "a {}×{} input block gives {}×{} outputs, not the {}×{} the grid needs",
                need.rows(),
                need.cols(),
                last.0,
                last.1,
                out.rows(),
                out.cols()
            )));
        }
        let regions = sizes
            .into_iter()
            .map(|s| {
                s.map_or(Region::EMPTY, |(r, c)| Region {
                    r0: 0,
                    r1: r,
                    c0: 0,
                    c1: c,
                })
            })
            .collect();
        Ok((regions, need))
    }

    /// FDSP: fraction of output pixels whose exact input window is not inside their tile's
    /// input block.
    fn affected(&self, a: usize, b: usize, tiles: &[Tile], out_shape: Shape) -> f64 {
        let mut unaffected = 0usize;
        for t in tiles {
            let ok_rows = (t.output.r0..t.output.r1)
                .filter(|&o| {
                    let r = self
                        .halo_regions(
                            a,
                            b,
                            Region {
                                r0: o,
                                r1: o + 1,
                                c0: t.output.c0,
                                c1: t.output.c0 + 1,
                            },
                        )
                        .map_or(Region::EMPTY, |x| x.1);
                    r.r0 >= t.input.r0 && r.r1 <= t.input.r1
                })
                .count();
            let ok_cols = (t.output.c0..t.output.c1)
                .filter(|&o| {
                    let r = self
                        .halo_regions(
                            a,
                            b,
                            Region {
                                r0: t.output.r0,
                                r1: t.output.r0 + 1,
                                c0: o,
                                c1: o + 1,
                            },
                        )
                        .map_or(Region::EMPTY, |x| x.1);
                    r.c0 >= t.input.c0 && r.c1 <= t.input.c1
                })
                .count();
            unaffected += ok_rows * ok_cols;
        }
        1.0 - unaffected as f64 / (out_shape.h * out_shape.w).max(1) as f64
    }

    fn tile_ms(&self, node: usize, t: &Tile) -> f64 {
        t.ms_on(self.cluster, node, self.cluster.nodes[node].speed())
    }

    /// Assigns tiles to workers; returns each node's busy time.
    fn assign(&self, tiles: &mut [Tile], how: Assign) -> Vec<f64> {
        let mut busy = vec![0.0; self.cluster.nodes.len()];
        match how {
            Assign::RoundRobin => {
                for (i, t) in tiles.iter_mut().enumerate() {
                    let n = self.workers[i % self.workers.len()];
                    t.node = n;
                    t.predicted_ms = self.tile_ms(n, t);
                    busy[n] += t.predicted_ms;
                }
            }
            Assign::Fastest => {
                // Longest tile first, each to the worker that would finish it earliest.
                let mut order: Vec<usize> = (0..tiles.len()).collect();
                order.sort_by(|&x, &y| tiles[y].flops.cmp(&tiles[x].flops).then(x.cmp(&y)));
                for i in order {
                    let (n, ms) = self
                        .workers
                        .iter()
                        .map(|&n| (n, self.tile_ms(n, &tiles[i])))
                        .min_by(|(n1, m1), (n2, m2)| {
                            (busy[*n1] + m1)
                                .total_cmp(&(busy[*n2] + m2))
                                .then(n1.cmp(n2))
                        })
                        .unwrap_or((self.workers[0], 0.0));
                    tiles[i].node = n;
                    tiles[i].predicted_ms = ms;
                    busy[n] += ms;
                }
            }
        }
        busy
    }

    fn finish(&self, segments: Vec<Segment>, tail_start: LayerId) -> Plan {
        let layers = self.graph.layers();
        let coord = &self.cluster.nodes[self.cluster.coordinator];
        let tail_flops: u64 = layers[tail_start.index()..]
            .iter()
            .map(|l| l.stats.flops)
            .sum();
        let tail_ms = tail_flops as f64 / (coord.gflops * 1e6);
        let mut node_busy_ms = vec![0.0; self.cluster.nodes.len()];
        for s in &segments {
            for t in &s.tiles {
                node_busy_ms[t.node] += t.predicted_ms;
            }
        }
        node_busy_ms[self.cluster.coordinator] += tail_ms;
        let predicted_ms = segments.iter().map(|s| s.predicted_ms).sum::<f64>() + tail_ms;
        let total_flops: u64 = layers.iter().map(|l| l.stats.flops).sum();
        // The input must reach the workers at least once, over all their links in parallel.
        let input_bits = 32.0 * self.graph.input.shape.numel() as f64;
        let remote: Vec<&adcnn_core::cluster::Node> = self
            .workers
            .iter()
            .filter(|&&n| n != self.cluster.coordinator)
            .map(|&n| &self.cluster.nodes[n])
            .collect();
        let links_bits_per_ms: f64 = remote.iter().filter_map(|n| n.mbps).map(|m| m * 1e3).sum();
        let transfer = if remote.len() < self.workers.len() || links_bits_per_ms == 0.0 {
            0.0 // the coordinator works too and holds the input
        } else {
            input_bits / links_bits_per_ms
                + remote
                    .iter()
                    .map(|n| n.latency_ms)
                    .fold(f64::INFINITY, f64::min)
        };
        let ideal_ms = total_flops as f64 / (self.cluster.total_gflops() * 1e6) + transfer;
        Plan {
            network: self.graph.name.clone(),
            cluster: self.cluster.clone(),
            strategy: self.opts.strategy,
            compression: self.opts.compression,
            segments,
            tail_start,
            tail_flops,
            tail_ms,
            node_busy_ms,
            predicted_ms,
            ideal_ms,
            deviation: None,
        }
    }
}

/// Row intervals and column intervals of a tile grid.
type Grid = (Vec<(usize, usize)>, Vec<(usize, usize)>);

#[derive(Clone, Copy)]
enum Assign {
    Fastest,
    RoundRobin,
}

/// One segment over layers `first..end` with an even `rows × cols` grid in `mode`, tiles
/// assigned for the lowest makespan: for tools and tests that examine a particular cut.
pub fn segment_for(
    graph: &LayerGraph,
    cluster: &Cluster,
    opts: &Options,
    first: usize,
    end: usize,
    (rows, cols): (usize, usize),
    mode: Mode,
) -> Result<Segment, PlanError> {
    let ctx = Ctx::new(graph, cluster, opts);
    ctx.best_segment(first, end, &[mode], Some((rows, cols)))
}
