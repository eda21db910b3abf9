//! The reference interpreter against PyTorch, operator by operator, on the golden cases in
//! `tests/golden/cases/` (made by `tests/golden/make_golden.py`).
//!
//! This test does not need the DSL: every case's operators are written out here by hand, next
//! to the DSL text they stand for. Single-layer cases run the layer named `layer` on the stored
//! operands (`input`, and for add/concat also `input1`, `input2`); composite cases run their
//! layers in order, each on the outputs of earlier layers, and compare the last one. Results
//! must be within 1e-5 relative L2 error (‖ours − torch‖₂ / ‖torch‖₂) of PyTorch's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use adcnn_compiler::reference::eval_op;
use adcnn_compiler::weights::Weights;
use adcnn_core::ops::{Conv2d, Hw, Op, Pad2, Pool2d};
use ndarray::{Array3, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/cases");
const TOLERANCE: f64 = 1e-5;

type Result<T, E = String> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Loading the golden files.

fn case_path(name: &str, suffix: &str) -> PathBuf {
    Path::new(CASES).join(format!("{name}{suffix}"))
}

/// Every tensor of a `.safetensors` file, which must all be float32.
fn load_tensors(path: &Path) -> Result<BTreeMap<String, ArrayD<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(format!(
                "{}: tensor `{name}` is {:?}, expected F32",
                path.display(),
                view.dtype()
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
            .map_err(|e| format!("{}: tensor `{name}`: {e}", path.display()))?;
        out.insert(name.to_string(), array);
    }
    Ok(out)
}

/// The case's weights, or none if it has no weights file.
fn load_weights(name: &str) -> Result<Weights> {
    let path = case_path(name, ".safetensors");
    let mut weights = Weights::new();
    if path.exists() {
        for (tensor, array) in load_tensors(&path)? {
            weights.insert(tensor, array);
        }
    }
    Ok(weights)
}

/// A stored `[C, H, W]` tensor, or a flat `[N]` one as `[N, 1, 1]`.
fn as_chw(name: &str, t: &ArrayD<f32>) -> Result<Array3<f32>> {
    let dims = match *t.shape() {
        [c, h, w] => (c, h, w),
        [n] => (n, 1, 1),
        ref other => {
            return Err(format!(
                "tensor `{name}` has shape {other:?}, expected [C, H, W] or [N]"
            ));
        }
    };
    Array3::from_shape_vec(dims, t.iter().copied().collect())
        .map_err(|e| format!("tensor `{name}`: {e}"))
}

/// The case's input/output tensors (`input`, `output`, maybe `input1`, `input2`) as `[C, H, W]`.
fn load_io(name: &str) -> Result<BTreeMap<String, Array3<f32>>> {
    load_tensors(&case_path(name, ".io.safetensors"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), as_chw(k, v)?)))
        .collect()
}

/// ‖ours − expected‖₂ / ‖expected‖₂, after checking the shapes agree.
fn relative_l2(ours: &Array3<f32>, expected: &Array3<f32>) -> Result<f64> {
    if ours.dim() != expected.dim() {
        return Err(format!(
            "shape {:?}, PyTorch has {:?}",
            ours.dim(),
            expected.dim()
        ));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (a, b) in ours.iter().zip(expected) {
        let (a, b) = (f64::from(*a), f64::from(*b));
        diff += (a - b) * (a - b);
        norm += b * b;
    }
    if !diff.is_finite() {
        return Err("non-finite result".into());
    }
    Ok(diff.sqrt() / norm.sqrt().max(f64::MIN_POSITIVE))
}

// ---------------------------------------------------------------------------------------------
// Operator constructors with the DSL's defaults.

/// `conv(out, k=k)`: stride 1, no padding, dilation 1, one group, with bias.
fn conv(out: usize, k: usize) -> Conv2d {
    Conv2d {
        out_channels: out,
        kernel: Hw::square(k),
        stride: Hw::square(1),
        padding: Pad2::default(),
        dilation: Hw::square(1),
        groups: 1,
        bias: true,
    }
}

/// `maxpool(k, s=s)` / `avgpool(k, s=s)`: no padding, floor mode, padding counted.
fn pool(k: usize, s: usize) -> Pool2d {
    Pool2d {
        kernel: Hw::square(k),
        stride: Hw::square(s),
        padding: Pad2::default(),
        ceil_mode: false,
        count_include_pad: true,
    }
}

fn hw(h: usize, w: usize) -> Hw {
    Hw { h, w }
}

fn p1(p: usize) -> Pad2 {
    Pad2::uniform(p)
}

fn p4(top: usize, left: usize, bottom: usize, right: usize) -> Pad2 {
    Pad2 {
        top,
        left,
        bottom,
        right,
    }
}

fn bn() -> Op {
    Op::BatchNorm { eps: 1e-5 }
}

fn relu6() -> Op {
    Op::Clip { min: 0.0, max: 6.0 }
}

// ---------------------------------------------------------------------------------------------
// The cases.

/// Single-layer cases: name, the operator of the layer named `layer`, its operands in order.
fn single_layer_cases() -> Vec<(&'static str, Op, &'static [&'static str])> {
    const X: &[&str] = &["input"];
    vec![
        ("conv_k1", Op::Conv2d(conv(4, 1)), X),
        (
            "conv_k3_p1",
            Op::Conv2d(Conv2d {
                padding: p1(1),
                ..conv(5, 3)
            }),
            X,
        ),
        (
            "conv_k3_s2_p1",
            Op::Conv2d(Conv2d {
                stride: Hw::square(2),
                padding: p1(1),
                ..conv(4, 3)
            }),
            X,
        ),
        (
            "conv_k5_s3_p2",
            Op::Conv2d(Conv2d {
                stride: Hw::square(3),
                padding: p1(2),
                ..conv(3, 5)
            }),
            X,
        ),
        (
            "conv_k7_s2_p3",
            Op::Conv2d(Conv2d {
                stride: Hw::square(2),
                padding: p1(3),
                ..conv(4, 7)
            }),
            X,
        ),
        (
            "conv_nobias",
            Op::Conv2d(Conv2d {
                bias: false,
                ..conv(5, 3)
            }),
            X,
        ),
        (
            "conv_pad_hw",
            Op::Conv2d(Conv2d {
                padding: p4(1, 2, 1, 2),
                ..conv(4, 3)
            }),
            X,
        ),
        (
            "conv_pad_asym",
            Op::Conv2d(Conv2d {
                stride: Hw::square(2),
                padding: p4(0, 0, 1, 1),
                ..conv(4, 3)
            }),
            X,
        ),
        (
            "conv_pad_asym4",
            Op::Conv2d(Conv2d {
                padding: p4(0, 1, 2, 3),
                ..conv(3, 3)
            }),
            X,
        ),
        (
            "conv_dilation2",
            Op::Conv2d(Conv2d {
                padding: p1(2),
                dilation: Hw::square(2),
                ..conv(4, 3)
            }),
            X,
        ),
        (
            "conv_groups2",
            Op::Conv2d(Conv2d {
                padding: p1(1),
                groups: 2,
                ..conv(6, 3)
            }),
            X,
        ),
        (
            "conv_depthwise",
            Op::Conv2d(Conv2d {
                stride: Hw::square(2),
                padding: p1(1),
                groups: 6,
                ..conv(6, 3)
            }),
            X,
        ),
        (
            "conv_depthwise_nobias",
            Op::Conv2d(Conv2d {
                padding: p1(2),
                groups: 5,
                bias: false,
                ..conv(5, 5)
            }),
            X,
        ),
        (
            "conv_k1x3",
            Op::Conv2d(Conv2d {
                kernel: hw(1, 3),
                padding: p4(0, 1, 0, 1),
                ..conv(4, 1)
            }),
            X,
        ),
        (
            "conv_k3x1",
            Op::Conv2d(Conv2d {
                kernel: hw(3, 1),
                stride: hw(2, 1),
                padding: p4(1, 0, 1, 0),
                ..conv(4, 1)
            }),
            X,
        ),
        (
            "conv_rect_all",
            Op::Conv2d(Conv2d {
                kernel: hw(3, 5),
                stride: hw(1, 2),
                padding: p1(2),
                dilation: hw(2, 1),
                ..conv(3, 1)
            }),
            X,
        ),
        ("bn", bn(), X),
        ("bn_eps", Op::BatchNorm { eps: 1e-3 }, X),
        ("relu", Op::Relu, X),
        ("relu6", relu6(), X),
        (
            "clip",
            Op::Clip {
                min: -0.5,
                max: 0.7,
            },
            X,
        ),
        ("leaky_relu", Op::LeakyRelu { slope: 0.1 }, X),
        ("prelu", Op::PRelu, X),
        ("sigmoid", Op::Sigmoid, X),
        ("dropout", Op::Dropout, X),
        ("maxpool_k2", Op::MaxPool(pool(2, 2)), X),
        (
            "maxpool_k3_s2_p1",
            Op::MaxPool(Pool2d {
                padding: p1(1),
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "maxpool_ceil",
            Op::MaxPool(Pool2d {
                ceil_mode: true,
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "maxpool_ceil_drop",
            Op::MaxPool(Pool2d {
                padding: p1(1),
                ceil_mode: true,
                ..pool(2, 2)
            }),
            X,
        ),
        (
            "maxpool_ceil_k3_s3",
            Op::MaxPool(Pool2d {
                padding: p1(1),
                ceil_mode: true,
                ..pool(3, 3)
            }),
            X,
        ),
        (
            "maxpool_darknet",
            Op::MaxPool(Pool2d {
                padding: p4(0, 0, 1, 1),
                ..pool(2, 1)
            }),
            X,
        ),
        ("avgpool_k2", Op::AvgPool(pool(2, 2)), X),
        (
            "avgpool_pad",
            Op::AvgPool(Pool2d {
                padding: p1(1),
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "avgpool_pad_nocount",
            Op::AvgPool(Pool2d {
                padding: p1(1),
                count_include_pad: false,
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "avgpool_ceil",
            Op::AvgPool(Pool2d {
                ceil_mode: true,
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "avgpool_ceil_pad",
            Op::AvgPool(Pool2d {
                padding: p1(1),
                ceil_mode: true,
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "avgpool_ceil_pad_nocount",
            Op::AvgPool(Pool2d {
                padding: p1(1),
                ceil_mode: true,
                count_include_pad: false,
                ..pool(3, 2)
            }),
            X,
        ),
        (
            "avgpool_k2_s3",
            Op::AvgPool(Pool2d {
                padding: p1(1),
                count_include_pad: false,
                ..pool(2, 3)
            }),
            X,
        ),
        ("global_avgpool", Op::GlobalAvgPool, X),
        // `a, b -> add` takes its operands in order; `add(refs)` the chain's value first.
        ("add2", Op::Add, &["input", "input1"]),
        ("add3", Op::Add, &["input2", "input", "input1"]),
        ("concat2", Op::Concat, &["input", "input1"]),
        ("concat3", Op::Concat, &["input2", "input", "input1"]),
        ("flatten", Op::Flatten, X),
        (
            "linear",
            Op::Linear {
                out_features: 5,
                bias: true,
            },
            X,
        ),
        (
            "linear_nobias",
            Op::Linear {
                out_features: 7,
                bias: false,
            },
            X,
        ),
        ("softmax_channels", Op::Softmax, X),
        ("softmax_vector", Op::Softmax, X),
        (
            "pad_zero",
            Op::Pad {
                padding: p4(1, 2, 0, 3),
                value: 0.0,
            },
            X,
        ),
        (
            "pad_value",
            Op::Pad {
                padding: p4(2, 1, 2, 1),
                value: -1.5,
            },
            X,
        ),
        (
            "pad_value_asym",
            Op::Pad {
                padding: p4(0, 0, 1, 2),
                value: 0.25,
            },
            X,
        ),
    ]
}

/// One layer of a composite case: its name, operator and inputs (layer names or `input`;
/// empty means the previous layer's output).
type Step = (&'static str, Op, &'static [&'static str]);

/// Composite cases, layer by layer as their DSL files name them.
fn composite_cases() -> Vec<(&'static str, Vec<Step>)> {
    let no_bias = |c: Conv2d| Op::Conv2d(Conv2d { bias: false, ..c });
    vec![
        (
            "resnet_block",
            vec![
                (
                    "main.conv1",
                    no_bias(Conv2d {
                        stride: Hw::square(2),
                        padding: p1(1),
                        ..conv(8, 3)
                    }),
                    &[],
                ),
                ("main.bn1", bn(), &[]),
                ("main.2", Op::Relu, &[]),
                (
                    "main.conv2",
                    no_bias(Conv2d {
                        padding: p1(1),
                        ..conv(8, 3)
                    }),
                    &[],
                ),
                ("main.bn2", bn(), &[]),
                (
                    "down.0",
                    no_bias(Conv2d {
                        stride: Hw::square(2),
                        ..conv(8, 1)
                    }),
                    &["input"],
                ),
                ("down.1", bn(), &[]),
                ("sum", Op::Add, &["down.1", "main.bn2"]),
                ("out", Op::Relu, &[]),
            ],
        ),
        (
            "mobilenet_v2_block",
            vec![
                ("expand.conv", no_bias(conv(12, 1)), &[]),
                ("expand.bn", bn(), &[]),
                ("expand.2", relu6(), &[]),
                (
                    "dw.conv",
                    no_bias(Conv2d {
                        padding: p1(1),
                        groups: 12,
                        ..conv(12, 3)
                    }),
                    &[],
                ),
                ("dw.bn", bn(), &[]),
                ("dw.2", relu6(), &[]),
                ("project.conv", no_bias(conv(4, 1)), &[]),
                ("project.bn", bn(), &[]),
                ("out", Op::Add, &["project.bn", "input"]),
            ],
        ),
        (
            "tiny_classifier",
            vec![
                (
                    "features.0",
                    no_bias(Conv2d {
                        padding: p1(1),
                        ..conv(8, 3)
                    }),
                    &[],
                ),
                ("features.1", bn(), &[]),
                ("features.2", Op::Relu, &[]),
                ("features.3", Op::MaxPool(pool(2, 2)), &[]),
                ("classifier.0", Op::Flatten, &[]),
                (
                    "classifier.1",
                    Op::Linear {
                        out_features: 10,
                        bias: true,
                    },
                    &[],
                ),
                ("classifier.2", Op::Softmax, &[]),
            ],
        ),
        (
            "tiny_yolo",
            vec![
                (
                    "b1.0",
                    no_bias(Conv2d {
                        padding: p1(1),
                        ..conv(8, 3)
                    }),
                    &[],
                ),
                ("b1.1", bn(), &[]),
                ("b1.2", Op::LeakyRelu { slope: 0.1 }, &[]),
                ("b1.3", Op::MaxPool(pool(2, 2)), &[]),
                (
                    "b2.0",
                    no_bias(Conv2d {
                        padding: p1(1),
                        ..conv(16, 3)
                    }),
                    &[],
                ),
                ("b2.1", bn(), &[]),
                ("b2.2", Op::LeakyRelu { slope: 0.1 }, &[]),
                (
                    "b2.3",
                    Op::MaxPool(Pool2d {
                        padding: p4(0, 0, 1, 1),
                        ..pool(2, 1)
                    }),
                    &[],
                ),
                ("head", Op::Conv2d(conv(8, 1)), &[]),
            ],
        ),
        (
            "fire",
            vec![
                ("squeeze.0", Op::Conv2d(conv(4, 1)), &[]),
                ("squeeze.1", Op::Relu, &[]),
                ("e1.0", Op::Conv2d(conv(6, 1)), &[]),
                ("e1.1", Op::Relu, &[]),
                (
                    "e3.0",
                    Op::Conv2d(Conv2d {
                        padding: p1(1),
                        ..conv(6, 3)
                    }),
                    &["squeeze.1"],
                ),
                ("e3.1", Op::Relu, &[]),
                ("out", Op::Concat, &["e1.1", "e3.1"]),
            ],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running and checking.

fn check_single(name: &str, op: &Op, operands: &[&str]) -> Result<f64> {
    let io = load_io(name)?;
    let weights = load_weights(name)?;
    let inputs = operands
        .iter()
        .map(|k| {
            io.get(*k)
                .ok_or_else(|| format!("no tensor `{k}` in the io file"))
        })
        .collect::<Result<Vec<_>>>()?;
    let expected = io
        .get("output")
        .ok_or("no tensor `output` in the io file")?;
    let ours = eval_op(op, "layer", &inputs, &weights).map_err(|e| e.to_string())?;
    relative_l2(&ours, expected)
}

fn check_composite(name: &str, steps: &[Step]) -> Result<f64> {
    let io = load_io(name)?;
    let weights = load_weights(name)?;
    let mut values = BTreeMap::new();
    let mut previous = "input";
    values.insert(
        "input",
        io.get("input")
            .ok_or("no tensor `input` in the io file")?
            .clone(),
    );
    for (layer, op, inputs) in steps {
        let names: &[&str] = if inputs.is_empty() {
            std::slice::from_ref(&previous)
        } else {
            inputs
        };
        let args = names
            .iter()
            .map(|k| {
                values
                    .get(k)
                    .ok_or_else(|| format!("layer `{layer}`: no value `{k}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        let y = eval_op(op, layer, &args, &weights).map_err(|e| format!("layer `{layer}`: {e}"))?;
        values.insert(*layer, y);
        previous = *layer;
    }
    let expected = io
        .get("output")
        .ok_or("no tensor `output` in the io file")?;
    relative_l2(&values[previous], expected)
}

/// Runs every check, then fails listing every case out of tolerance (not just the first).
fn report(results: Vec<(&str, Result<f64>)>) {
    let mut failures = Vec::new();
    for (name, result) in results {
        match result {
            Ok(err) if err <= TOLERANCE => println!("{name:28} rel L2 {err:.2e}"),
            Ok(err) => failures.push(format!(
                "{name}: relative L2 error {err:.3e} > {TOLERANCE:e}"
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn single_layer_cases_match_pytorch() {
    let results = single_layer_cases()
        .iter()
        .map(|(name, op, operands)| (*name, check_single(name, op, operands)))
        .collect();
    report(results);
}

#[test]
fn composite_cases_match_pytorch() {
    let results = composite_cases()
        .iter()
        .map(|(name, steps)| (*name, check_composite(name, steps)))
        .collect();
    report(results);
}

/// Each golden case is checked here, and each case checked here exists.
#[test]
fn every_golden_case_is_covered() -> Result<()> {
    let on_disk: BTreeSet<String> = std::fs::read_dir(CASES)
        .map_err(|e| format!("{CASES}: {e}"))?
        .filter_map(|entry| {
            let file = entry.ok()?.file_name().into_string().ok()?;
            file.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    let covered: BTreeSet<String> = single_layer_cases()
        .iter()
        .map(|c| c.0.to_string())
        .chain(composite_cases().iter().map(|c| c.0.to_string()))
        .collect();
    assert_eq!(
        on_disk, covered,
        "golden cases on disk vs cases in this test"
    );
    Ok(())
}

/// Every operator kind has at least one single-layer golden case.
#[test]
fn every_operator_kind_is_covered() {
    let kinds: BTreeSet<&str> = single_layer_cases().iter().map(|c| c.1.kind()).collect();
    for kind in [
        "conv",
        "bn",
        "relu",
        "clip",
        "leaky_relu",
        "prelu",
        "sigmoid",
        "maxpool",
        "avgpool",
        "global_avgpool",
        "add",
        "concat",
        "flatten",
        "linear",
        "softmax",
        "dropout",
        "pad",
    ] {
        assert!(
            kinds.contains(kind),
            "no single-layer golden case for `{kind}`"
        );
    }
}
