//! The bundled real model — PP-OCRv4's text detector with its trained weights
//! (`dsl-examples/ppocr-det.yaml`) — on the bundled photo of a book page: the reference
//! interpreter and every exact plan for edge4 (compiled kernels, in-process cluster) equal
//! onnxruntime's output within 1e-4 relative L2, and the text regions found in the output
//! are the ones found in onnxruntime's. The photo, resized, and onnxruntime's output are in
//! `tests/golden/ppocr-det.io.safetensors` (made by `dsl-examples/make_ppocr_det.py`).

use adcnn_compiler::build::build;
use adcnn_compiler::check::check;
use adcnn_compiler::plan::{Options, Strategy};
use adcnn_compiler::reference;
use adcnn_core::boxes::{BoxOptions, compare, find_boxes};
use adcnn_core::format::decode;
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::worker::Kernels;
use adcnn_tests::{example, relative_l2, repo_root};
use ndarray::{Array3, Axis};

/// The stated tolerance against onnxruntime (it sums in another order, and computes the
/// hard-swish and the divisions by constants another way round).
const TOLERANCE: f64 = 1e-4;

/// The network input (normalised as the network file says) and onnxruntime's output.
fn golden() -> (Array3<f32>, Array3<f32>) {
    let path = repo_root().join("tests/golden/ppocr-det.io.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let pixels = st.tensor("pixels").expect("pixels");
    let [h, w, 3] = *pixels.shape() else {
        panic!("pixels {:?}", pixels.shape())
    };
    // (p / 255 − 0.5) / 0.5 in float32, as the script computed it for onnxruntime.
    let x = Array3::from_shape_fn((3, h, w), |(c, y, x)| {
        (f32::from(pixels.data()[(y * w + x) * 3 + c]) / 255.0 - 0.5) / 0.5
    });
    let out = st.tensor("output").expect("output");
    let want: Vec<f32> = out
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want = Array3::from_shape_vec((1, h, w), want).expect("output [1, H, W]");
    (x, want)
}

/// The reference interpreter's output on the golden input.
fn reference_output(x: &Array3<f32>) -> Array3<f32> {
    let checked = check(&example("ppocr-det"), None);
    let (graph, weights) = checked.network.as_ref().expect("the network checks");
    reference::run(graph, weights, x).expect("runs")
}

#[test]
fn the_reference_and_every_exact_plan_match_onnxruntime_on_the_photo() {
    let (x, want) = golden();
    let whole = reference_output(&x);
    let err = relative_l2(whole.iter(), want.iter());
    assert!(err <= TOLERANCE, "reference: relative L2 {err:.2e}");

    for strategy in [
        Strategy::Single,
        Strategy::Layerwise,
        Strategy::HaloEven,
        Strategy::Halo,
        Strategy::Auto,
    ] {
        let opts = Options {
            strategy,
            ..Options::default()
        };
        let built = build(&example("ppocr-det"), Some(&example("edge4")), &opts, 2)
            .unwrap_or_else(|e| panic!("{}: {e}", strategy.name()));
        let plan = decode(&built.bytes).expect("decodes");
        assert!(plan.header.plan.is_exact());
        let mut cluster = LocalCluster::with_kernels(plan, Kernels::Jit, None);
        assert_eq!(cluster.compile_error(), None);
        let got = cluster.run(&x).expect("runs").output;
        let err = relative_l2(got.iter(), want.iter());
        assert!(
            err <= TOLERANCE,
            "{}: relative L2 {err:.2e} from onnxruntime",
            strategy.name()
        );
    }
}

#[test]
fn the_text_regions_are_onnxruntimes() {
    let (x, want) = golden();
    let got = reference_output(&x);
    let o = BoxOptions::default();
    let theirs = find_boxes(want.index_axis(Axis(0), 0), &o);
    let ours = find_boxes(got.index_axis(Axis(0), 0), &o);
    // The page's heading, the five lines of its paragraph and its line of code.
    assert_eq!(theirs.len(), 7, "{theirs:?}");
    assert_eq!(
        compare(&ours, &theirs),
        (theirs.len(), 0, 0),
        "{ours:?}\n{theirs:?}"
    );
}
