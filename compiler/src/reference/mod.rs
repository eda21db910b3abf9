//! The reference interpreter: a whole network, layer by layer, on the plain operators of
//! `adcnn_core::eval` — the oracle that every faster path is checked against — and a whole
//! plan, tile by tile, on the same operators.

use adcnn_core::plan::Plan;
use adcnn_core::weights::Weights;
use ndarray::Array3;

pub use adcnn_core::eval::{EvalError, eval_op};

use crate::graph::{Layer, LayerGraph, LayerId, Source};
use crate::lower::{Fold, lower};

/// Runs a whole network on one input and returns its output. Each intermediate tensor is
/// dropped as soon as its last consumer has run.
pub fn run(
    graph: &LayerGraph,
    weights: &Weights,
    input: &Array3<f32>,
) -> Result<Array3<f32>, EvalError> {
    let mut outputs = execute(graph, input, false, |layer, inputs| {
        eval_op(&layer.op, &layer.name, inputs, weights)
    })?;
    outputs.pop().flatten().ok_or_else(|| EvalError::Parameter {
        op: "network",
        reason: "the network has no layers".into(),
    })
}

/// Runs a whole network and keeps every layer's output, indexed by [`LayerId`].
pub fn run_all(
    graph: &LayerGraph,
    weights: &Weights,
    input: &Array3<f32>,
) -> Result<Vec<Array3<f32>>, EvalError> {
    let outputs = execute(graph, input, true, |layer, inputs| {
        eval_op(&layer.op, &layer.name, inputs, weights)
    })?;
    Ok(outputs.into_iter().flatten().collect())
}

/// Evaluates the layers in order with `eval`, which sees each layer and its inputs. Unless
/// `keep_all`, a tensor is dropped once its last consumer has run.
pub fn execute(
    graph: &LayerGraph,
    input: &Array3<f32>,
    keep_all: bool,
    mut eval: impl FnMut(&Layer, &[&Array3<f32>]) -> Result<Array3<f32>, EvalError>,
) -> Result<Vec<Option<Array3<f32>>>, EvalError> {
    adcnn_core::eval::check_input("network", graph.input.shape, input)?;
    let mut remaining: Vec<usize> = (0..graph.layers().len())
        .map(|i| graph.consumers(LayerId(i as u32)).len())
        .collect();
    let mut values: Vec<Option<Array3<f32>>> = Vec::with_capacity(graph.layers().len());
    for layer in graph.layers() {
        let out = {
            let inputs = gather(&layer.inputs, &values, input, &layer.name)?;
            eval(layer, &inputs)?
        };
        if !keep_all {
            for s in &layer.inputs {
                if let Source::Layer(id) = s {
                    remaining[id.index()] -= 1;
                    if remaining[id.index()] == 0 {
                        values[id.index()] = None;
                    }
                }
            }
        }
        values.push(Some(out));
    }
    Ok(values)
}

fn gather<'a>(
    sources: &[Source],
    values: &'a [Option<Array3<f32>>],
    input: &'a Array3<f32>,
    layer: &str,
) -> Result<Vec<&'a Array3<f32>>, EvalError> {
    sources
        .iter()
        .map(|s| match s {
            Source::Input => Ok(input),
            Source::Layer(id) => values
                .get(id.index())
                .and_then(Option::as_ref)
                .ok_or_else(|| EvalError::Parameter {
                    op: "network",
                    reason: format!("layer `{layer}` reads a value that was not computed"),
                }),
        })
        .collect()
}

/// Runs a whole plan sequentially on the plain operators: every segment's tiles with the
/// network's own layers (nothing folded), stitched, then the tail. Approximate (FDSP) plans
/// give their approximate result; `adcnnc build` measures its deviation with this.
pub fn run_plan(
    graph: &LayerGraph,
    weights: &Weights,
    plan: &Plan,
    input: &Array3<f32>,
) -> Result<Array3<f32>, EvalError> {
    let lowered = lower(graph, weights, plan, Fold::Nothing).map_err(|e| EvalError::Parameter {
        op: "plan",
        reason: e.to_string(),
    })?;
    adcnn_core::program::run_plan(
        plan,
        &lowered.segments,
        &lowered.tail,
        input,
        |prog, seg, tile, x| prog.run_tile(seg, tile, x),
    )
}
