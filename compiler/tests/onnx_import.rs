//! ONNX import end to end: every model in `tests/onnx/cases/` (made by
//! `tests/onnx/make_onnx.py`) is imported to YAML + safetensors in a temporary folder,
//! checked like a hand-written network, run, and compared with onnxruntime's output.
//! Malformed models give the right `ImportError`, and no input makes the importer panic.

use std::path::{Path, PathBuf};

use adcnn_compiler::graph::LayerGraph;
use adcnn_compiler::onnx::proto::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use adcnn_compiler::onnx::{self, ImportError};
use adcnn_compiler::plan::{Options, Strategy, plan};
use adcnn_compiler::weights::Weights;
use adcnn_core::cluster::Cluster;
use ndarray::Array3;
use proptest::prelude::*;
use prost::Message;

const TOLERANCE: f64 = 1e-4;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/onnx/cases")
}

fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("tests/onnx/cases exists")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "onnx")
                .then(|| p.file_stem().map(|s| s.to_string_lossy().into_owned()))?
        })
        .collect();
    names.sort();
    names
}

/// A fresh temporary folder for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adcnn-onnx-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

type Executor = fn(&LayerGraph, &Weights, &Array3<f32>) -> Result<Vec<f32>, String>;

/// The ways a checked network is run: whole on the reference interpreter, and planned with
/// the `single` and `halo` strategies for three local nodes, run tile by tile.
const EXECUTORS: &[(&str, Executor)] = &[
    ("reference", |g, w, x| {
        adcnn_compiler::reference::run(g, w, x)
            .map(|y| y.iter().copied().collect())
            .map_err(|e| e.to_string())
    }),
    ("single", |g, w, x| planned(g, w, x, Strategy::Single)),
    ("halo", |g, w, x| planned(g, w, x, Strategy::Halo)),
];

fn planned(
    g: &LayerGraph,
    w: &Weights,
    x: &Array3<f32>,
    strategy: Strategy,
) -> Result<Vec<f32>, String> {
    let opts = Options {
        strategy,
        ..Options::default()
    };
    let p = plan(g, &Cluster::local(3, 40.0), &opts).map_err(|e| e.to_string())?;
    adcnn_compiler::reference::run_plan(g, w, &p, x)
        .map(|y| y.iter().copied().collect())
        .map_err(|e| e.to_string())
}

/// `input` and `output` of a case, the input as `[C, H, W]` (`[F]` becomes `[F, 1, 1]`).
fn load_io(cases: &Path, name: &str) -> (Array3<f32>, Vec<f32>) {
    let bytes = std::fs::read(cases.join(format!("{name}.io.safetensors"))).expect("io file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let floats = |t: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(t).expect("tensor present");
        let data = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (v.shape().to_vec(), data)
    };
    let (shape, x) = floats("input");
    let dims = match shape.as_slice() {
        [c, h, w] => (*c, *h, *w),
        [f] => (*f, 1, 1),
        other => panic!("{name}: input shape {other:?}"),
    };
    (
        Array3::from_shape_vec(dims, x).expect("input shape"),
        floats("output").1,
    )
}

fn relative_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Imports, checks and runs one case; `Err` says what went wrong.
fn run_case(cases: &Path, name: &str, dir: &Path) -> Result<String, String> {
    let yaml = dir.join(format!("{name}.yaml"));
    let written = onnx::import_file(&cases.join(format!("{name}.onnx")), &yaml)
        .map_err(|e| format!("import: {e}"))?;
    let checked = adcnn_compiler::check::check(&yaml, None);
    let text = std::fs::read_to_string(&yaml).unwrap_or_default();
    let Some((graph, weights)) = checked.network.as_ref().filter(|_| checked.is_ok()) else {
        return Err(format!("check failed:\n{}\n{text}", checked.render()));
    };
    let (x, want) = load_io(cases, name);
    for (executor, run) in EXECUTORS {
        let got = run(graph, weights, &x).map_err(|e| format!("{executor}: {e}"))?;
        if got.len() != want.len() {
            return Err(format!(
                "{executor}: {} outputs, onnxruntime gave {}\n{text}",
                got.len(),
                want.len()
            ));
        }
        let err = relative_l2(&got, &want);
        if err.is_nan() || err > TOLERANCE {
            return Err(format!(
                "{executor}: relative L2 error {err:e} > {TOLERANCE:e}\n{text}"
            ));
        }
    }
    Ok(written.summary())
}

#[test]
fn every_case_imports_checks_and_matches_onnxruntime() {
    let names = case_names();
    assert!(names.len() >= 40, "only {} cases", names.len());
    let dir = temp_dir("cases");
    let mut failures = Vec::new();
    for name in &names {
        match run_case(&cases_dir(), name, &dir) {
            Ok(summary) => println!("ok   {summary}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}

#[test]
fn yaml_of_a_small_resnet() {
    let bytes = std::fs::read(cases_dir().join("resnet_tiny.onnx")).expect("model");
    let imported = onnx::import(&bytes, "resnet_tiny").expect("imports");
    let yaml = imported.yaml("resnet_tiny.safetensors");
    insta::with_settings!({snapshot_path => "../../snapshots/onnx", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("resnet_tiny", yaml);
    });
}

#[test]
fn yaml_of_a_small_mobilenet() {
    let bytes = std::fs::read(cases_dir().join("mobilenetv2_tiny.onnx")).expect("model");
    let imported = onnx::import(&bytes, "mobilenetv2_tiny").expect("imports");
    let yaml = imported.yaml("mobilenetv2_tiny.safetensors");
    insta::with_settings!({snapshot_path => "../../snapshots/onnx", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("mobilenetv2_tiny", yaml);
    });
}

#[test]
fn inventory_lists_operators_in_order_with_counts() {
    let bytes = std::fs::read(cases_dir().join("resnet_tiny.onnx")).expect("model");
    let ops = onnx::inventory(&bytes).expect("decodes");
    let conv = ops.iter().find(|o| o.op_type == "Conv").expect("has Conv");
    assert_eq!(conv.count, 8);
    assert!(ops.iter().all(|o| o.supported), "{ops:?}");
    let bad = model(
        vec![node("Tanh", "act/tanh", &["input"], &["output"])],
        vec![],
        &[1, 2, 3, 3],
    );
    let ops = onnx::inventory(&bad).expect("decodes");
    assert_eq!(ops.len(), 1);
    assert!(!ops[0].supported);
}

// ---- malformed models ------------------------------------------------------------------------

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    use proto::tensor_shape_proto::{Dimension, dimension};
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(1),
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(dimension::Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, input: &[i64]) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input", input)],
            output: vec![value_info("output", &[])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn conv_model(weight: TensorProto) -> Vec<u8> {
    model(
        vec![node("Conv", "/c/Conv", &["input", "c.weight"], &["output"])],
        vec![weight],
        &[1, 2, 4, 4],
    )
}

#[test]
fn a_valid_hand_built_model_imports() {
    let m = conv_model(float_tensor("c.weight", &[3, 2, 1, 1], &[0.5; 6]));
    let imported = onnx::import(&m, "tiny").expect("imports");
    assert_eq!(imported.entries.len(), 1);
    assert_eq!(imported.entries[0].name, "c");
    assert_eq!(imported.entries[0].expression, "conv(3, k=1, bias=false)");
    assert_eq!(imported.parameters, 6);
}

#[test]
fn truncated_and_random_files_are_decode_errors() {
    let bytes = std::fs::read(cases_dir().join("conv_relu.onnx")).expect("model");
    let err = onnx::import(&bytes[..bytes.len() / 2], "t").expect_err("truncated");
    assert!(matches!(err, ImportError::Decode { .. }), "{err}");
    let mut state = 0x1234_5678_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect();
    let err = onnx::import(&random, "r").expect_err("random");
    assert!(!err.to_string().is_empty());
    let err = onnx::import(&[], "empty").expect_err("empty");
    assert!(matches!(err, ImportError::NoGraph), "{err}");
}

#[test]
fn a_cycle_is_named() {
    let m = model(
        vec![
            node("Relu", "a", &["input"], &["x1"]),
            node("Add", "b", &["x1", "x3"], &["x2"]),
            node("Relu", "c", &["x2"], &["x3"]),
            node("Relu", "d", &["x3"], &["output"]),
        ],
        vec![],
        &[1, 2, 3, 3],
    );
    match onnx::import(&m, "c") {
        Err(ImportError::Cycle { nodes }) => {
            assert!(
                nodes.contains(&"b".to_string()) && nodes.contains(&"c".to_string()),
                "{nodes:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_initializer_names_node_and_value() {
    let m = model(
        vec![node("Conv", "/c/Conv", &["input", "c.weight"], &["output"])],
        vec![],
        &[1, 2, 4, 4],
    );
    match onnx::import(&m, "m") {
        Err(ImportError::MissingValue {
            op_type,
            node,
            value,
        }) => {
            assert_eq!(
                (op_type.as_str(), node.as_str(), value.as_str()),
                ("Conv", "/c/Conv", "c.weight")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unsupported_op_names_node_and_lists_what_is_supported() {
    let m = model(
        vec![node("Tanh", "act/tanh", &["input"], &["output"])],
        vec![],
        &[1, 2, 3, 3],
    );
    let err = onnx::import(&m, "u").expect_err("unsupported");
    let text = err.to_string();
    match err {
        ImportError::UnsupportedOp {
            op_type,
            node,
            supported,
            ..
        } => {
            assert_eq!((op_type.as_str(), node.as_str()), ("Tanh", "act/tanh"));
            assert!(supported.contains("Conv") && supported.contains("Softmax"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        text.contains("`Tanh`") && text.contains("act/tanh"),
        "{text}"
    );
}

#[test]
fn an_int64_weight_is_a_type_error() {
    let m = conv_model(TensorProto {
        name: Some("c.weight".into()),
        dims: vec![3, 2, 1, 1],
        data_type: Some(7),
        int64_data: vec![1; 6],
        ..Default::default()
    });
    match onnx::import(&m, "i") {
        Err(ImportError::TensorType {
            tensor,
            expected,
            found,
        }) => {
            assert_eq!(
                (tensor.as_str(), expected, found.as_str()),
                ("c.weight", "float32", "int64")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tensor_data_must_match_its_dims() {
    let short = conv_model(float_tensor("c.weight", &[3, 2, 1, 1], &[0.5; 5]));
    assert!(matches!(
        onnx::import(&short, "s"),
        Err(ImportError::Tensor { .. })
    ));
    let huge = conv_model(float_tensor(
        "c.weight",
        &[1 << 20, 1 << 20, 1 << 20, 2],
        &[],
    ));
    assert!(matches!(
        onnx::import(&huge, "h"),
        Err(ImportError::Tensor { .. })
    ));
    let negative = conv_model(float_tensor("c.weight", &[-3, 2, 1, 1], &[]));
    assert!(matches!(
        onnx::import(&negative, "n"),
        Err(ImportError::Tensor { .. })
    ));
    let mut ext = float_tensor("c.weight", &[3, 2, 1, 1], &[]);
    ext.data_location = Some(1);
    assert!(matches!(
        onnx::import(&conv_model(ext), "e"),
        Err(ImportError::ExternalData { .. })
    ));
}

#[test]
fn unsupported_attributes_and_shapes_are_named() {
    let mut pad = node("Pad", "pad", &["input", "pads"], &["output"]);
    pad.attribute.push(AttributeProto {
        name: Some("mode".into()),
        s: Some(b"reflect".to_vec().into()),
        r#type: Some(3),
        ..Default::default()
    });
    let pads = TensorProto {
        name: Some("pads".into()),
        dims: vec![8],
        data_type: Some(7),
        int64_data: vec![0, 0, 1, 1, 0, 0, 1, 1],
        ..Default::default()
    };
    match onnx::import(&model(vec![pad], vec![pads], &[1, 2, 3, 3]), "p") {
        Err(ImportError::UnsupportedAttribute {
            attribute,
            node,
            supported,
            ..
        }) => {
            assert_eq!((attribute.as_str(), node.as_str()), ("mode", "pad"));
            assert!(supported.contains("constant"), "{supported}");
        }
        other => panic!("{other:?}"),
    }
    let shape = TensorProto {
        name: Some("shape".into()),
        dims: vec![3],
        data_type: Some(7),
        int64_data: vec![1, 2, 9],
        ..Default::default()
    };
    let reshape = node("Reshape", "rs", &["input", "shape"], &["output"]);
    match onnx::import(&model(vec![reshape], vec![shape], &[1, 2, 3, 3]), "r") {
        Err(ImportError::Unsupported {
            op_type, reason, ..
        }) => {
            assert_eq!(op_type, "Reshape");
            assert!(reason.contains("flatten"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let err = onnx::import(
        &model(
            vec![node("Relu", "r", &["input"], &["output"])],
            vec![],
            &[1, 2, 0, 3],
        ),
        "z",
    )
    .expect_err("zero dim");
    assert!(matches!(err, ImportError::Input { .. }), "{err}");
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(7),
        ..Default::default()
    }
}

#[test]
fn hostile_attribute_values_are_errors() {
    let weight = || float_tensor("c.weight", &[2, 2, 1, 1], &[1.0; 4]);
    for attr in [
        int_attr("group", i64::MAX),
        int_attr("group", 0),
        ints_attr("strides", &[0, 1]),
        ints_attr("dilations", &[-1, 1]),
        ints_attr("pads", &[0, 0, -1, 0]),
        ints_attr("pads", &[1 << 40, 0, 0, 0]),
        ints_attr("kernel_shape", &[3, 3]),
    ] {
        let mut conv = node("Conv", "c", &["input", "c.weight"], &["output"]);
        conv.attribute.push(attr.clone());
        let err = onnx::import(&model(vec![conv], vec![weight()], &[1, 2, 4, 4]), "h")
            .expect_err("rejected");
        assert!(
            matches!(
                err,
                ImportError::UnsupportedAttribute { .. } | ImportError::Unsupported { .. }
            ),
            "{attr:?}: {err}"
        );
    }
    let mut conv = node("Conv", "c", &["input", "c.weight"], &["output"]);
    conv.attribute.push(ints_attr("kernel_shape", &[1, 1]));
    onnx::import(&model(vec![conv], vec![weight()], &[1, 2, 4, 4]), "ok").expect("imports");
}

#[test]
fn only_the_batch_dimension_may_be_dynamic() {
    use proto::tensor_shape_proto::{Dimension, dimension};
    let bytes_for = |dynamic_axis: usize| {
        let mut m = ModelProto::decode(
            model(
                vec![node("Relu", "r", &["input"], &["output"])],
                vec![],
                &[1, 2, 3, 3],
            )
            .as_slice(),
        )
        .expect("decodes");
        if let Some(proto::type_proto::Value::TensorType(t)) = m
            .graph
            .as_mut()
            .and_then(|g| g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut()))
            && let Some(shape) = t.shape.as_mut()
        {
            shape.dim[dynamic_axis] = Dimension {
                value: Some(dimension::Value::DimParam("n".into())),
                ..Default::default()
            };
        }
        m.encode_to_vec()
    };
    let imported = onnx::import(&bytes_for(0), "b").expect("dynamic batch is fixed to 1");
    assert_eq!(imported.input.c, 2);
    match onnx::import(&bytes_for(2), "h") {
        Err(ImportError::Input { reason, .. }) => assert!(reason.contains("dynamic"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn opsets_outside_the_supported_range_are_errors() {
    let relu = || {
        model(
            vec![node("Relu", "r", &["input"], &["output"])],
            vec![],
            &[1, 2, 3, 3],
        )
    };
    let with_opset = |version: Option<i64>| {
        let mut m = ModelProto::decode(relu().as_slice()).expect("decodes");
        m.opset_import = version
            .map(|v| OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(v),
            })
            .into_iter()
            .collect();
        m.encode_to_vec()
    };
    assert!(matches!(
        onnx::import(&with_opset(Some(3)), "o"),
        Err(ImportError::Opset { version: 3, .. })
    ));
    assert!(matches!(
        onnx::import(&with_opset(None), "o"),
        Err(ImportError::NoOpset)
    ));
    onnx::import(&with_opset(Some(18)), "o").expect("opset 18 imports");
}

// ---- the command line ------------------------------------------------------------------------

#[path = "../../tests/support/cli.rs"]
mod cli;

fn adcnnc(args: &[&str]) -> (i32, String, String) {
    let r = cli::run(
        env!("CARGO_BIN_EXE_adcnnc"),
        env!("CARGO_MANIFEST_DIR"),
        args,
    );
    (r.code, r.stdout, r.stderr)
}

#[test]
fn cli_import_writes_yaml_and_weights_that_check() {
    let dir = temp_dir("cli");
    let yolo = cases_dir().join("yolo_tiny.onnx");
    let yaml = dir.join("net.yaml");
    let (code, stdout, stderr) = adcnnc(&[
        "import",
        yolo.to_str().expect("utf-8"),
        "-o",
        yaml.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("net.safetensors"), "{stdout}");
    assert!(dir.join("net.safetensors").exists());
    let (code, stdout, stderr) = adcnnc(&["check", yaml.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("output [21, 4, 4]"), "{stdout}");

    let (code, stdout, _) = adcnnc(&["import", "--check", yolo.to_str().expect("utf-8")]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Conv") && stdout.contains("supported"),
        "{stdout}"
    );

    let tanh = dir.join("tanh.onnx");
    let bytes = model(
        vec![node("Tanh", "act/tanh", &["input"], &["output"])],
        vec![],
        &[1, 2, 3, 3],
    );
    std::fs::write(&tanh, bytes).expect("write");
    let (code, stdout, _) = adcnnc(&["import", "--check", tanh.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("Tanh") && stdout.contains("NOT SUPPORTED"),
        "{stdout}"
    );
    let (code, _, stderr) = adcnnc(&[
        "import",
        tanh.to_str().expect("utf-8"),
        "-o",
        yaml.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("act/tanh") && stderr.contains("`Tanh`"),
        "{stderr}"
    );

    let bad = dir.join("bad.onnx");
    std::fs::write(&bad, b"not a model").expect("write");
    let (code, stdout, stderr) = adcnnc(&[
        "import",
        bad.to_str().expect("utf-8"),
        "-o",
        yaml.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.is_empty() && stderr.starts_with("error: "),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- never panics ----------------------------------------------------------------------------

fn sample_model() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(cases_dir().join("mobilenetv2_tiny.onnx")).expect("model"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = onnx::import(&bytes, "r");
        let _ = onnx::inventory(&bytes);
    }

    #[test]
    fn truncations_never_panic(cut in 0usize..100_000) {
        let m = sample_model();
        let _ = onnx::import(&m[..cut % (m.len() + 1)], "t");
    }

    #[test]
    fn mutations_never_panic(edits in proptest::collection::vec((0usize..100_000, any::<u8>()), 1..8)) {
        let mut m = sample_model().to_vec();
        let len = m.len();
        for (at, v) in edits {
            m[at % len] = v;
        }
        let _ = onnx::import(&m, "m");
    }
}
