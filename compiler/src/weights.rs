//! Binding a network's weights, by layer name and role (`{layer}.weight`, `{layer}.bias`, …
//! as PyTorch names them): from a `.safetensors` file, or generated from a seed with batch
//! norms calibrated.

use std::path::Path;

pub use adcnn_core::weights::{Seeded, SplitMix64, Weights};
use ndarray::{Array1, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::diag::{Diagnostic, Diagnostics, Span};
use crate::dsl::network::WeightsSource;
use crate::graph::{Layer, LayerGraph, Source};
use adcnn_core::format::MAX_TENSOR_ELEMENTS;
use adcnn_core::ops::{Op, Shape, WeightRole};

/// Largest weights file read (bytes).
pub const MAX_WEIGHTS_FILE_BYTES: u64 = 16 << 30;

/// A layer and the tensors (role, shape) it needs.
type Needed<'a> = (&'a Layer, Vec<(WeightRole, Vec<usize>)>);

/// Binds weights to every layer that needs them, generated from the seed or read from the
/// file the network names; checks that every tensor exists with the right shape.
pub fn bind(graph: &LayerGraph, diags: &mut Diagnostics) -> Option<Weights> {
    let needed: Vec<Needed> = graph
        .layers()
        .iter()
        .map(|l| (l, l.op.weight_shapes(input_shape(graph, l))))
        .filter(|(_, w)| !w.is_empty())
        .collect();
    // What a plan can carry bounds what is generated or read (a linear layer after a large
    // flatten would otherwise ask for 2⁴⁸ values).
    for (layer, tensors) in &needed {
        for (role, shape) in tensors {
            let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            if n.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
                diags.push(
                    Diagnostic::error(format!(
                        "layer `{}`: its {} of shape {shape:?} has more than {MAX_TENSOR_ELEMENTS} values",
                        layer.name,
                        role.suffix()
                    ))
                    .at(&layer.span, "too many weights")
                    .help("a plan carries tensors of at most 2^28 values (1 GiB of float32)"),
                );
                return None;
            }
        }
    }
    let Some(spec) = &graph.weights else {
        if let Some((layer, _)) = needed.first() {
            diags.push(
                Diagnostic::error(format!("layer `{}` has weights, but the network has no `weights:`", layer.name))
                    .at(&layer.span, "needs weights")
                    .help("add `weights: net.safetensors` (tensors named `LAYER.weight`, …) or `weights: random(seed=0)` for benchmarks"),
            );
            return None;
        }
        return Some(Weights::new());
    };
    match &spec.source {
        WeightsSource::Random { seed } => Some(random(graph, *seed, &needed)),
        WeightsSource::File(path) => load_file(path, &spec.span, &needed, diags),
    }
}

fn input_shape(graph: &LayerGraph, layer: &Layer) -> Shape {
    match layer.inputs.first() {
        Some(Source::Layer(id)) => graph.layer(*id).shape,
        _ => graph.input.shape,
    }
}

/// Seeded weights whose activations keep their scale through deep stacks: He-uniform
/// convolutions and linear layers (variance 2 / fan-in), small biases, γ near 1, and batch-norm
/// running statistics *calibrated*: measured on a seeded pseudo-random input in one pass of
/// the reference interpreter, as training would have left them. Without calibration, residual
/// networks double their activations' variance at every block (ResNet-50 grows past 10⁴).
fn random(graph: &LayerGraph, seed: u64, needed: &[Needed]) -> Weights {
    let mut w = uncalibrated(seed, needed);
    if graph
        .layers()
        .iter()
        .any(|l| matches!(l.op, Op::BatchNorm { .. }))
    {
        calibrate_batch_norms(graph, seed, &mut w);
    }
    w
}

fn calibrate_batch_norms(graph: &LayerGraph, seed: u64, w: &mut Weights) {
    let s = graph.input.shape;
    let mut rng = SplitMix64::for_tensor(seed, "calibration input");
    // Uniform on [-√3, √3]: zero mean, unit variance, like a normalised image.
    let a = 3f32.sqrt();
    let input = ndarray::Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-a, a));
    let result = crate::reference::execute(graph, &input, false, |layer, inputs| {
        if matches!(layer.op, Op::BatchNorm { .. }) {
            let x = inputs[0];
            let mean: Vec<f32> = x.outer_iter().map(|c| c.mean().unwrap_or(0.0)).collect();
            let var: Vec<f32> = x
                .outer_iter()
                .zip(&mean)
                .map(|(c, m)| {
                    c.iter().map(|v| (v - m).powi(2)).sum::<f32>() / c.len().max(1) as f32
                })
                .collect();
            w.insert(
                Weights::tensor_name(&layer.name, WeightRole::RunningMean),
                Array1::from(mean).into_dyn(),
            );
            w.insert(
                Weights::tensor_name(&layer.name, WeightRole::RunningVar),
                Array1::from(var).into_dyn(),
            );
        }
        crate::reference::eval_op(&layer.op, &layer.name, inputs, w)
    });
    // The graph is validated and every weight exists, so the pass cannot fail; if it ever
    // did, the uncalibrated statistics stay, which is still a valid (if less tame) network.
    drop(result);
}

fn uncalibrated(seed: u64, needed: &[Needed]) -> Weights {
    let mut w = Weights::new();
    for (layer, tensors) in needed {
        let fan_in: usize = tensors
            .first()
            .map_or(1, |(_, s)| s[1..].iter().product::<usize>().max(1));
        for (role, shape) in tensors {
            let name = Weights::tensor_name(&layer.name, *role);
            let (lo, hi) = match (&layer.op, role) {
                (Op::BatchNorm { .. }, WeightRole::Weight) => (0.8, 1.2),
                (Op::BatchNorm { .. }, WeightRole::RunningVar) => (0.5, 1.5),
                (Op::BatchNorm { .. }, _) => (-0.1, 0.1),
                (Op::PRelu, _) => (0.05, 0.3),
                (_, WeightRole::Weight) => {
                    let a = (6.0 / fan_in as f32).sqrt();
                    (-a, a)
                }
                (_, _) => (-0.05, 0.05),
            };
            w.insert_seeded(name, shape, Seeded { seed, lo, hi });
        }
    }
    w
}

fn load_file(
    path: &Path,
    span: &Span,
    needed: &[Needed],
    diags: &mut Diagnostics,
) -> Option<Weights> {
    let fail = |diags: &mut Diagnostics, message: String| {
        diags.push(Diagnostic::error(message).at(span, "weights named here"));
        None
    };
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_WEIGHTS_FILE_BYTES => {
            return fail(
                diags,
                format!(
                    "{} is larger than {MAX_WEIGHTS_FILE_BYTES} bytes",
                    path.display()
                ),
            );
        }
        Ok(_) => {}
        Err(e) => {
            return fail(
                diags,
                format!("cannot read weights {}: {e}", path.display()),
            );
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                diags,
                format!("cannot read weights {}: {e}", path.display()),
            );
        }
    };
    let st = match SafeTensors::deserialize(&bytes) {
        Ok(st) => st,
        Err(e) => {
            return fail(
                diags,
                format!("{} is not a valid .safetensors file: {e}", path.display()),
            );
        }
    };
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut w = Weights::new();
    let before = diags.len();
    for (layer, tensors) in needed {
        let missing: Vec<String> = tensors
            .iter()
            .map(|(role, shape)| (Weights::tensor_name(&layer.name, *role), shape))
            .filter(|(name, _)| st.tensor(name).is_err())
            .map(|(name, shape)| format!("`{name}` {shape:?}"))
            .collect();
        if !missing.is_empty() {
            diags.push(
                Diagnostic::error(format!("{file} has no weights for layer `{}`", layer.name))
                    .at(&layer.span, format!("needs {}", missing.join(", ")))
                    .note(span, "weights named here")
                    .help("tensor names are the layer name plus `.weight`, `.bias`, `.running_mean` or `.running_var`"),
            );
            continue;
        }
        for (role, shape) in tensors {
            let name = Weights::tensor_name(&layer.name, *role);
            let Ok(t) = st.tensor(&name) else { continue };
            if t.dtype() != Dtype::F32 {
                diags.push(
                    Diagnostic::error(format!(
                        "tensor `{name}` in {file} is {:?}; adcnn reads F32",
                        t.dtype()
                    ))
                    .at(&layer.span, "this layer's weights")
                    .help("convert the weights to float32 before saving"),
                );
                continue;
            }
            if t.shape() != shape.as_slice() {
                diags.push(
                    Diagnostic::error(format!(
                        "tensor `{name}` in {file} has shape {:?}, layer `{}` needs {shape:?}",
                        t.shape(),
                        layer.name
                    ))
                    .at(&layer.span, format!("needs {shape:?}"))
                    .note(span, "weights named here"),
                );
                continue;
            }
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            match ArrayD::from_shape_vec(IxDyn(shape), values) {
                Ok(a) => w.insert(name, a),
                Err(e) => {
                    diags.push(
                        Diagnostic::error(format!("tensor `{name}` in {file}: {e}"))
                            .at(span, "here"),
                    );
                }
            }
        }
    }
    (diags.len() == before).then_some(w)
}
