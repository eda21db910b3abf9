//! One tile of a plan's segment on the reference interpreter: the oracle for tile kernels,
//! and what the runtime runs until compiled kernels take its place.

use ndarray::{Array3, s};

use crate::graph::{Layer, LayerGraph, Source};
use crate::plan::geometry::{input_region, tile_op};
use crate::plan::{Mode, Region, Segment, Tile};
use crate::reference::{self, EvalError};
use crate::weights::Weights;

/// The values of an empty region of a `channels`-deep feature map (no elements; its rows or
/// columns say where it lies).
pub fn empty(channels: usize, region: &Region) -> Array3<f32> {
    Array3::zeros((channels, region.rows(), region.cols()))
}

/// The part `want` of a tensor that holds region `have` of its feature map.
pub fn crop(t: &Array3<f32>, have: &Region, want: &Region) -> Array3<f32> {
    let (r0, c0) = (want.r0 - have.r0, want.c0 - have.c0);
    let (rows, cols) = (want.rows(), want.cols());
    let view = || t.slice(s![.., r0..r0 + rows, c0..c0 + cols]);
    // Row by row from a contiguous tensor (ndarray's element-wise copy of a strided view
    // cost ~3 % of ResNet-50 on compiled kernels).
    let (c, h, w) = t.dim();
    match t.as_slice() {
        Some(src) if r0 + rows <= h && c0 + cols <= w => {
            let mut out = Vec::with_capacity(c * rows * cols);
            for ch in 0..c {
                for r in 0..rows {
                    let start = (ch * h + r0 + r) * w + c0;
                    out.extend_from_slice(&src[start..start + cols]);
                }
            }
            Array3::from_shape_vec((c, rows, cols), out).unwrap_or_else(|_| view().to_owned())
        }
        _ => view().to_owned(),
    }
}

/// Computes `tile` of `seg` from `input`, the tile's input region of the segment's input.
/// Returns the tile's output region of the segment's output.
pub fn run_tile(
    graph: &LayerGraph,
    weights: &Weights,
    seg: &Segment,
    tile: &Tile,
    input: &Array3<f32>,
) -> Result<Array3<f32>, EvalError> {
    let first = seg.first.index();
    let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(seg.end.index() - first);
    for (i, id) in seg.layers().enumerate() {
        let layer = graph.layer(id);
        let region = tile.regions[i];
        if region.is_empty() {
            // Nothing to compute, but a consumer whose windows lie wholly in its padding
            // still reads this (zero-sized) region.
            values.push(Some(empty(layer.shape.c, &region)));
            continue;
        }
        let shape_of = |s: &Source| match s {
            Source::Input => graph.input.shape,
            Source::Layer(l) => graph.layer(*l).shape,
        };
        let out = match seg.mode {
            Mode::Halo => {
                let mut crops = Vec::with_capacity(layer.inputs.len());
                for src in &layer.inputs {
                    let need = input_region(&layer.op, &region, shape_of(src));
                    let crop_of = match src {
                        Source::Layer(l) if l.index() >= first => {
                            let j = l.index() - first;
                            values[j].as_ref().map(|t| crop(t, &tile.regions[j], &need))
                        }
                        _ => Some(crop(input, &tile.input, &need)),
                    };
                    crops.push(crop_of.ok_or_else(|| missing(&layer.name))?);
                }
                let op = tile_op(&layer.op, &region, shape_of(&layer.inputs[0])).map_err(|e| {
                    EvalError::Parameter {
                        op: "tile",
                        reason: e.0,
                    }
                })?;
                let refs: Vec<&Array3<f32>> = crops.iter().collect();
                reference::eval_op(&op, &layer.name, &refs, weights)?
            }
            Mode::Fdsp => {
                let mut refs: Vec<&Array3<f32>> = Vec::with_capacity(layer.inputs.len());
                for src in &layer.inputs {
                    let t = match src {
                        Source::Layer(l) if l.index() >= first => {
                            values[l.index() - first].as_ref()
                        }
                        _ => Some(input),
                    };
                    refs.push(t.ok_or_else(|| missing(&layer.name))?);
                }
                reference::eval_op(&layer.op, &layer.name, &refs, weights)?
            }
        };
        values.push(Some(out));
    }
    values
        .pop()
        .flatten()
        .ok_or_else(|| missing("the segment's output"))
}

fn missing(what: &str) -> EvalError {
    EvalError::Parameter {
        op: "tile",
        reason: format!("{what}: an input region was not computed"),
    }
}

/// Runs a whole plan sequentially on the reference interpreter: every segment's tiles,
/// stitched, then the tail. The threaded runtime must agree with it.
pub fn run_plan(
    graph: &LayerGraph,
    weights: &Weights,
    plan: &crate::plan::Plan,
    input: &Array3<f32>,
) -> Result<Array3<f32>, EvalError> {
    let head = run_segments(graph, plan, input, |seg, tile, x| {
        run_tile(graph, weights, seg, tile, x)
    })?;
    run_tail(graph, weights, plan.tail_start.index(), head, input)
}

/// Runs a plan's segments one after another on the calling thread, each tile with
/// `tile_kernel(segment, tile, tile input)`, stitching each segment's output; returns the
/// last segment's output (the input when there are no segments).
pub fn run_segments(
    graph: &LayerGraph,
    plan: &crate::plan::Plan,
    input: &Array3<f32>,
    mut tile_kernel: impl FnMut(&Segment, &Tile, &Array3<f32>) -> Result<Array3<f32>, EvalError>,
) -> Result<Array3<f32>, EvalError> {
    let mut current = input.clone();
    for seg in &plan.segments {
        let out_shape = graph.layer(seg.output()).shape;
        let mut out = Array3::<f32>::zeros((out_shape.c, out_shape.h, out_shape.w));
        let full = Region {
            r0: 0,
            r1: current.dim().1,
            c0: 0,
            c1: current.dim().2,
        };
        for tile in &seg.tiles {
            let t = if tile.input == full {
                tile_kernel(seg, tile, &current)?
            } else {
                tile_kernel(seg, tile, &crop(&current, &full, &tile.input))?
            };
            out.slice_mut(s![
                ..,
                tile.output.r0..tile.output.r1,
                tile.output.c0..tile.output.c1
            ])
            .assign(&t);
        }
        current = out;
    }
    Ok(current)
}

/// Runs layers `start..` (the tail, on the coordinator): `live` is the output of layer
/// `start - 1`, the one tensor live at a cut; `input` the network input.
pub fn run_tail(
    graph: &LayerGraph,
    weights: &Weights,
    start: usize,
    live: Array3<f32>,
    input: &Array3<f32>,
) -> Result<Array3<f32>, EvalError> {
    run_tail_with(graph, start, live, input, |layer, inputs| {
        reference::eval_op(&layer.op, &layer.name, inputs, weights)
    })
}

/// [`run_tail`] with each layer evaluated by `eval` (compiled kernels take the layers they
/// have faster code for and hand the rest to [`reference::eval_op`]).
pub fn run_tail_with(
    graph: &LayerGraph,
    start: usize,
    live: Array3<f32>,
    input: &Array3<f32>,
    mut eval: impl FnMut(&Layer, &[&Array3<f32>]) -> Result<Array3<f32>, EvalError>,
) -> Result<Array3<f32>, EvalError> {
    if start >= graph.layers().len() {
        return Ok(live);
    }
    let mut values: Vec<Option<Array3<f32>>> = vec![None; graph.layers().len()];
    if let Some(l) = start.checked_sub(1) {
        values[l] = Some(live);
    }
    for (i, layer) in graph.layers().iter().enumerate().skip(start) {
        let mut inputs = Vec::with_capacity(layer.inputs.len());
        for src in &layer.inputs {
            let v = match src {
                Source::Input => Some(input),
                Source::Layer(id) => values[id.index()].as_ref(),
            };
            inputs.push(v.ok_or_else(|| missing(&layer.name))?);
        }
        values[i] = Some(eval(layer, &inputs)?);
    }
    values
        .pop()
        .flatten()
        .ok_or_else(|| missing("the tail's output"))
}
