//! The reference interpreter, driven through the whole front end (YAML → layer graph →
//! weights from .safetensors → whole-network run), matches PyTorch on every golden case.
//! The cases and `make_golden.py`, which wrote them with PyTorch, are in `tests/golden/`.

use adcnn_compiler::check::check;
use adcnn_compiler::reference;
use adcnn_tests::{read_safetensors, relative_l2, yaml_files};
use ndarray::Ix3;

/// Stated tolerance: relative L2 error against PyTorch's float32 result.
const TOLERANCE: f64 = 1e-5;

#[test]
fn every_golden_case_matches_pytorch() {
    let cases = yaml_files("tests/golden/cases");
    assert!(cases.len() >= 50, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for path in &cases {
        let checked = check(path, None);
        assert!(checked.is_ok(), "{}:\n{}", path.display(), checked.render());
        let (graph, weights) = checked.network.as_ref().expect("network");
        let io = read_safetensors(&path.with_extension("io.safetensors"));
        let input = io["input"]
            .clone()
            .into_dimensionality::<Ix3>()
            .expect("[C, H, W] input");
        let expected = &io["output"];
        let got = reference::run(graph, weights, &input).expect("runs");
        assert_eq!(got.len(), expected.len(), "{}: output size", path.display());
        let err = relative_l2(got.iter(), expected.iter());
        if err > TOLERANCE || !err.is_finite() {
            failures.push(format!("{}: relative L2 {err:.2e}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Halo tiling is exact on every layer kind and option: each golden network, cut into a
/// single fused segment on several grids, run tile by tile, equals the whole-network run.
#[test]
fn halo_tiles_of_every_golden_case_equal_the_whole_run() {
    use adcnn_compiler::plan::{Options, Strategy, plan};
    use adcnn_core::cluster::Cluster;
    let cluster = Cluster::local(3, 40.0);
    let mut tiled_cases = 0;
    for path in yaml_files("tests/golden/cases") {
        let checked = check(&path, None);
        let (graph, weights) = checked.network.as_ref().expect("network");
        let io = read_safetensors(&path.with_extension("io.safetensors"));
        let input = io["input"]
            .clone()
            .into_dimensionality::<Ix3>()
            .expect("[C, H, W] input");
        let whole = reference::run(graph, weights, &input).expect("runs");
        for grid in [(2, 2), (3, 1), (1, 3), (2, 3)] {
            let opts = Options {
                strategy: Strategy::Halo,
                grid: Some(grid),
                ..Options::default()
            };
            // Grids larger than a small layer's output are refused, which is right.
            let Ok(p) = plan(graph, &cluster, &opts) else {
                continue;
            };
            if p.segments.iter().any(|s| s.tiles.len() > 1) {
                tiled_cases += 1;
            }
            let tiled = reference::run_plan(graph, weights, &p, &input).expect("tiles run");
            let err = relative_l2(tiled.iter(), whole.iter());
            assert!(
                err <= TOLERANCE,
                "{} on a {grid:?} grid: relative L2 {err:.2e}",
                path.display()
            );
        }
    }
    assert!(tiled_cases >= 100, "only {tiled_cases} tiled runs");
}
