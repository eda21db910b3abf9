//! From a checked network and its plan to what `plan.bin` holds: one [`Program`] per segment
//! and one for the tail, and the [`PlanHeader`].
//!
//! With [`Fold::BatchNorms`], a batch norm that directly follows a convolution in the same
//! segment (or both in the tail, which the coordinator runs on compiled kernels too), and is
//! the convolution's only reader, is folded into it here, once, at build
//! time: `w' = w·γ/√(σ²+ε)` per output channel, `b' = (b − μ)·γ/√(σ²+ε) + β`, the
//! convolution gains a bias and the batch norm becomes [`Op::Identity`], so layers keep their
//! places and tiles their per-layer regions. The f32 operations are the ones the compiled
//! kernels performed when they folded at load, so outputs keep their bits.

use adcnn_core::format::{LayerInfo, NetworkInfo, PlanHeader};
use adcnn_core::net::{self, LayerId, Source};
use adcnn_core::ops::{Op, Shape, WeightRole};
use adcnn_core::plan::Plan;
use adcnn_core::program::{Program, ProgramError};
use adcnn_core::weights::Weights;
use ndarray::{ArrayD, IxDyn};

use crate::graph::LayerGraph;

/// Whether batch norms are folded into the convolutions before them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// What `adcnnc build` writes: folded.
    BatchNorms,
    /// Every layer as the network has it (the oracle's view in tests).
    Nothing,
}

/// A plan with its programs.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub header: PlanHeader,
    pub segments: Vec<Program>,
    pub tail: Program,
}

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("segment {segment} reads {what}, not the one tensor live at its cut")]
    NotACut { segment: usize, what: String },
}

/// What the plan section says of the network.
pub fn network_info(graph: &LayerGraph) -> NetworkInfo {
    NetworkInfo {
        name: graph.name.clone(),
        input: graph.input.to_net(),
        layers: graph
            .layers()
            .iter()
            .map(|l| LayerInfo {
                name: l.name.clone(),
                op: l.op.to_string(),
                shape: l.shape,
                flops: l.stats.flops,
                receptive: l
                    .stats
                    .receptive
                    .map(|r| [r.field.h, r.field.w, r.stride.h, r.stride.w]),
            })
            .collect(),
    }
}

/// Lowers `plan` of `graph` into its header and programs.
pub fn lower(
    graph: &LayerGraph,
    weights: &Weights,
    plan: &Plan,
    fold: Fold,
) -> Result<Lowered, LowerError> {
    let segments = plan
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let input = shape_of(graph, &s.input);
            let p = program(graph, weights, s.first, s.end, input, fold)?;
            check_cut(graph, &p, s.input)
                .map_err(|what| LowerError::NotACut { segment: i, what })?;
            Ok(p)
        })
        .collect::<Result<Vec<_>, LowerError>>()?;
    let tail_input = match plan.tail_start.index().checked_sub(1) {
        Some(l) => Source::Layer(LayerId(l as u32)),
        None => Source::Input,
    };
    let end = LayerId(graph.layers().len() as u32);
    let tail = program(
        graph,
        weights,
        plan.tail_start,
        end,
        shape_of(graph, &tail_input),
        fold,
    )?;
    check_cut(graph, &tail, tail_input).map_err(|what| LowerError::NotACut {
        segment: plan.segments.len(),
        what,
    })?;
    Ok(Lowered {
        header: PlanHeader {
            plan: plan.clone(),
            network: network_info(graph),
        },
        segments,
        tail,
    })
}

fn shape_of(graph: &LayerGraph, s: &Source) -> Shape {
    match s {
        Source::Input => graph.input.shape,
        Source::Layer(l) => graph.layer(*l).shape,
    }
}

/// Every source outside the program must be `input`, the tensor live at the cut.
fn check_cut(graph: &LayerGraph, p: &Program, input: Source) -> Result<(), String> {
    for l in p.layers() {
        for s in &l.inputs {
            if p.position(s).is_none() && *s != input {
                return Err(match s {
                    Source::Input => "the network input".into(),
                    Source::Layer(id) => format!("layer `{}`", graph.layer(*id).name),
                });
            }
        }
    }
    Ok(())
}

/// Layers `first..end` with their weights.
fn program(
    graph: &LayerGraph,
    weights: &Weights,
    first: LayerId,
    end: LayerId,
    input: Shape,
    fold: Fold,
) -> Result<Program, ProgramError> {
    let range = first.index()..end.index();
    let mut layers: Vec<net::Layer> = graph.layers()[range.clone()]
        .iter()
        .map(|l| net::Layer {
            name: l.name.clone(),
            op: l.op.clone(),
            inputs: l.inputs.clone(),
            shape: l.shape,
        })
        .collect();
    let mut w = Weights::new();
    for l in &layers {
        for name in weights_of(graph, l) {
            if let Some(t) = weights.get_by_name(&name) {
                match weights.seeded(&name) {
                    Some(s) => w.insert_seeded(name, t.shape(), s),
                    None => w.insert(name, t.clone()),
                }
            }
        }
    }
    if fold == Fold::BatchNorms {
        for n in 0..layers.len().saturating_sub(1) {
            let i = first.index() + n;
            if let Some((conv, bias)) = folded(graph, &w, i) {
                let (c, bn) = (&layers[n], &layers[n + 1]);
                for role in [
                    WeightRole::Weight,
                    WeightRole::Bias,
                    WeightRole::RunningMean,
                    WeightRole::RunningVar,
                ] {
                    w.remove(&Weights::tensor_name(&bn.name, role));
                }
                w.insert(Weights::tensor_name(&c.name, WeightRole::Weight), conv);
                w.insert(Weights::tensor_name(&c.name, WeightRole::Bias), bias);
                if let Op::Conv2d(c) = &mut layers[n].op {
                    c.bias = true;
                }
                layers[n + 1].op = Op::Identity;
            }
        }
    }
    Program::new(first, layers, input, w)
}

/// The names of a layer's weight tensors.
fn weights_of(graph: &LayerGraph, l: &net::Layer) -> Vec<String> {
    let input = match l.inputs.first() {
        Some(s) => shape_of(graph, s),
        None => graph.input.shape,
    };
    l.op.weight_shapes(input)
        .into_iter()
        .map(|(role, _)| Weights::tensor_name(&l.name, role))
        .collect()
}

/// Layer `i` (a convolution) with the batch norm at `i + 1` folded in: its weights and
/// bias, when the batch norm reads only it and is its only reader and every tensor has
/// its shape.
fn folded(graph: &LayerGraph, w: &Weights, i: usize) -> Option<(ArrayD<f32>, ArrayD<f32>)> {
    let layer = graph.layers().get(i)?;
    let next = graph.layers().get(i + 1)?;
    let (Op::Conv2d(c), Op::BatchNorm { eps }) = (&layer.op, &next.op) else {
        return None;
    };
    let me = Source::Layer(LayerId(i as u32));
    if next.inputs != [me] || graph.consumers(LayerId(i as u32)).len() != 1 {
        return None;
    }
    let cin = shape_of(graph, layer.inputs.first()?).c;
    let (cout, g) = (c.out_channels, c.groups);
    if g == 0 || !cin.is_multiple_of(g) || !cout.is_multiple_of(g) {
        return None;
    }
    let kdim = cin / g * c.kernel.h * c.kernel.w;
    let wt = w.get(&layer.name, WeightRole::Weight)?;
    if wt.shape() != [cout, cin / g, c.kernel.h, c.kernel.w] {
        return None;
    }
    let vector = |name: &str, role| {
        let t = w.get(name, role)?;
        (t.shape() == [cout]).then(|| t.iter().copied().collect::<Vec<f32>>())
    };
    let mut bias = if c.bias {
        vector(&layer.name, WeightRole::Bias)?
    } else {
        vec![0.0; cout]
    };
    let (gamma, beta) = (
        vector(&next.name, WeightRole::Weight)?,
        vector(&next.name, WeightRole::Bias)?,
    );
    let (mean, var) = (
        vector(&next.name, WeightRole::RunningMean)?,
        vector(&next.name, WeightRole::RunningVar)?,
    );
    let mut values: Vec<f32> = wt.iter().copied().collect();
    for o in 0..cout {
        let scale = gamma[o] / (var[o] + eps).sqrt();
        values[o * kdim..(o + 1) * kdim]
            .iter_mut()
            .for_each(|x| *x *= scale);
        bias[o] = (bias[o] - mean[o]) * scale + beta[o];
    }
    let conv = ArrayD::from_shape_vec(IxDyn(wt.shape()), values).ok()?;
    Some((conv, ArrayD::from_shape_vec(IxDyn(&[cout]), bias).ok()?))
}
