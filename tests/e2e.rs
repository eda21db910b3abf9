//! End to end: every example network, planned for `edge4.yaml` with every strategy, encoded to
//! plan.bin and decoded again, run on the in-process cluster, equals the reference
//! interpreter on the whole network (exact strategies), or a direct tile-by-tile computation
//! (FDSP). Every check runs twice: with the compiled (JIT) kernels and with the reference
//! interpreter's tile kernels (`Kernels`), so both paths meet the same tolerance.

use adcnn_compiler::build::build;
use adcnn_compiler::graph::Source;
use adcnn_compiler::plan::format::{LoadedPlan, decode};
use adcnn_compiler::plan::{Compression, Mode, Options, Region, Strategy};
use adcnn_compiler::reference;
use adcnn_compiler::reference::tile::crop;
use adcnn_compiler::weights::SplitMix64;
use adcnn_runtime::exec::{Executor, Kernels};
use adcnn_tests::{EXAMPLE_NETS, example, relative_l2};
use ndarray::{Array3, s};

/// Stated tolerance for exact plans: relative L2 against the reference interpreter.
const EXACT: f64 = 1e-5;

/// The same for compiled kernels on whole networks. They fold batch norm into the conv
/// weights, sum in another order (blocked GEMM with FMA) and compute 3×3 convolutions as
/// Winograd F(4×4, 3×3) (~1e-6 per layer): each layer is within 1e-5 of the reference
/// (`compiler/tests/codegen.rs` checks that per tile), but rounding differences compound with
/// depth — ResNet-50 (53 convolutions) measures 4.2e-5 to 4.4e-5, YOLOv2-tiny 1.1e-5 to
/// 1.2e-5, the other examples stay under 1e-5. A wrong kernel shows errors of 1e-3 and more.
const EXACT_JIT: f64 = 1e-4;

fn tolerance(kernels: Kernels) -> f64 {
    match kernels {
        Kernels::Jit | Kernels::Gemm => EXACT_JIT,
        Kernels::Reference => EXACT,
    }
}

/// Both kernel kinds, in the order the tests run them.
const KERNELS: [Kernels; 2] = [Kernels::Jit, Kernels::Reference];

fn executor(lp: LoadedPlan, kernels: Kernels) -> Executor {
    let exec = Executor::with_kernels(lp, kernels);
    assert_eq!(exec.compile_error(), None);
    exec
}

fn load(net: &str, strategy: Strategy, compression: Compression) -> LoadedPlan {
    let opts = Options {
        strategy,
        compression,
        ..Options::default()
    };
    let built = build(&example(net), Some(&example("edge4")), &opts, 2)
        .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
    decode(&built.bytes).unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()))
}

fn random_input(lp: &LoadedPlan) -> Array3<f32> {
    let s = lp.graph.input.shape;
    let mut rng = SplitMix64::new(11);
    Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.7, 1.7))
}

#[test]
fn exact_strategies_equal_the_reference_on_every_example() {
    for (net, _) in EXAMPLE_NETS {
        let mut expected = None;
        for strategy in [
            Strategy::Halo,
            Strategy::Layerwise,
            Strategy::Single,
            Strategy::HaloEven,
            Strategy::Auto,
        ] {
            let lp = load(net, strategy, Compression::None);
            assert!(lp.plan.is_exact(), "{net} {}", strategy.name());
            let x = random_input(&lp);
            let want = expected.get_or_insert_with(|| {
                reference::run(&lp.graph, &lp.weights, &x).expect("reference")
            });
            for kernels in KERNELS {
                let exec = executor(lp.clone(), kernels);
                let got = exec.run(&x).expect("runs");
                let err = relative_l2(got.output.iter(), want.iter());
                assert!(
                    err <= tolerance(kernels),
                    "{net} {} {kernels:?}: relative L2 {err:.2e}",
                    strategy.name()
                );
                assert_eq!(got.compression_error, 0.0);
            }
        }
    }
}

/// FDSP segments compute each tile as an image of its own; the expected output is built here
/// independently of the runtime: each tile's block through the segment's layers on the
/// reference interpreter, stitched.
/// `--kernels gemm`: compiled kernels without Winograd give the same outputs and prepare
/// less weight memory (a quarter for the 3×3 layers Winograd would take).
#[test]
fn gemm_kernels_skip_winograd_and_equal_the_reference() {
    for net in ["resnet18", "yolov2-tiny"] {
        for strategy in [Strategy::Single, Strategy::Halo] {
            let lp = load(net, strategy, Compression::None);
            let x = random_input(&lp);
            let want = reference::run(&lp.graph, &lp.weights, &x).expect("reference");
            let (jit, gemm) = (
                executor(lp.clone(), Kernels::Jit),
                executor(lp, Kernels::Gemm),
            );
            let got = gemm.run(&x).expect("runs");
            let err = relative_l2(got.output.iter(), want.iter());
            assert!(err <= EXACT_JIT, "{net} {}: {err:.2e}", strategy.name());
            let bytes = |e: &Executor| e.weight_bytes().iter().sum::<usize>();
            assert!(
                bytes(&gemm) < bytes(&jit),
                "{net} {}: gemm {} vs jit {} bytes",
                strategy.name(),
                bytes(&gemm),
                bytes(&jit)
            );
            // Nodes prepare weights only for segments they compute tiles of.
            let preparing = jit.weight_bytes().iter().filter(|b| **b > 0).count();
            match strategy {
                Strategy::Single => assert_eq!(preparing, 1, "{net}"),
                _ => assert!(preparing > 1, "{net}: {preparing} nodes"),
            }
        }
    }
}

/// Loading a plan whose kernels another executor already holds reuses them (cached by plan
/// hash, node and kernel kind): nothing is compiled, and the outputs are the same.
#[test]
fn a_plan_loaded_again_reuses_its_compiled_kernels() {
    let lp = load("alexnet", Strategy::Halo, Compression::None);
    let x = random_input(&lp);
    let first = executor(lp.clone(), Kernels::Jit);
    let second = executor(lp.clone(), Kernels::Jit);
    let workers: Vec<usize> = (0..lp.plan.cluster.nodes.len())
        .filter(|&i| first.weight_bytes()[i] > 0)
        .collect();
    assert!(workers.len() > 1, "{workers:?}");
    for &i in &workers {
        assert!(second.kernels_cached()[i], "node {i}");
        assert_eq!(second.compile_ms()[i], 0.0, "node {i}");
    }
    // Another kernel kind is another entry: compiled afresh.
    let gemm = executor(lp, Kernels::Gemm);
    assert!(
        gemm.kernels_cached().iter().all(|c| !c),
        "{:?}",
        gemm.kernels_cached()
    );
    let (a, b) = (first.run(&x).expect("runs"), second.run(&x).expect("runs"));
    assert_eq!(a.output, b.output);
}

#[test]
fn fdsp_equals_direct_tile_by_tile_computation() {
    let mut approximate = 0;
    for (net, _) in EXAMPLE_NETS {
        let lp = load(net, Strategy::Fdsp, Compression::None);
        let x = random_input(&lp);
        let mut current = x.clone();
        for seg in &lp.plan.segments {
            let out_shape = lp.graph.layer(seg.output()).shape;
            let mut out = Array3::<f32>::zeros((out_shape.c, out_shape.h, out_shape.w));
            let full = Region {
                r0: 0,
                r1: current.dim().1,
                c0: 0,
                c1: current.dim().2,
            };
            for tile in &seg.tiles {
                let block = crop(&current, &full, &tile.input);
                let result = if seg.mode == Mode::Fdsp {
                    independent_image(&lp, seg.first.index(), seg.end.index(), &block)
                } else {
                    // Halo segments of an FDSP plan are exact: their tile is the exact result.
                    let exact = reference::run_all(&lp.graph, &lp.weights, &x).expect("reference");
                    let o = &exact[seg.output().index()];
                    o.slice(s![
                        ..,
                        tile.output.r0..tile.output.r1,
                        tile.output.c0..tile.output.c1
                    ])
                    .to_owned()
                };
                out.slice_mut(s![
                    ..,
                    tile.output.r0..tile.output.r1,
                    tile.output.c0..tile.output.c1
                ])
                .assign(&result);
            }
            current = out;
        }
        let want = tail(&lp, current, &x);
        approximate += usize::from(!lp.plan.is_exact());
        for kernels in KERNELS {
            let exec = executor(lp.clone(), kernels);
            let got = exec.run(&x).expect("runs");
            let err = relative_l2(got.output.iter(), want.iter());
            assert!(
                err <= tolerance(kernels),
                "{net} fdsp {kernels:?}: relative L2 {err:.2e} against the direct computation"
            );
        }
    }
    assert!(
        approximate >= 3,
        "FDSP should apply to most examples, applied to {approximate}"
    );
}

/// Layers `a..b` on `block` as a network of its own.
fn independent_image(lp: &LoadedPlan, a: usize, b: usize, block: &Array3<f32>) -> Array3<f32> {
    let mut values: Vec<Array3<f32>> = Vec::new();
    for i in a..b {
        let layer = &lp.graph.layers()[i];
        let inputs: Vec<&Array3<f32>> = layer
            .inputs
            .iter()
            .map(|s| match s {
                Source::Layer(id) if id.index() >= a => &values[id.index() - a],
                _ => block,
            })
            .collect();
        values.push(
            reference::eval_op(&layer.op, &layer.name, &inputs, &lp.weights).expect("layer runs"),
        );
    }
    values.pop().expect("a layer")
}

fn tail(lp: &LoadedPlan, live: Array3<f32>, input: &Array3<f32>) -> Array3<f32> {
    let start = lp.plan.tail_start.index();
    let mut values: Vec<Option<Array3<f32>>> = vec![None; lp.graph.layers().len()];
    if start > 0 {
        values[start - 1] = Some(live.clone());
    }
    for i in start..lp.graph.layers().len() {
        let layer = &lp.graph.layers()[i];
        let inputs: Vec<&Array3<f32>> = layer
            .inputs
            .iter()
            .map(|s| match s {
                Source::Input => input,
                Source::Layer(id) => values[id.index()].as_ref().expect("computed"),
            })
            .collect();
        values[i] = Some(
            reference::eval_op(&layer.op, &layer.name, &inputs, &lp.weights).expect("layer runs"),
        );
    }
    values.pop().flatten().unwrap_or(live)
}

#[test]
fn compression_reports_its_error_and_saves_bytes() {
    let mut errors = Vec::new();
    for how in [Compression::None, Compression::Q8, Compression::Q4] {
        let lp = load("resnet18", Strategy::Halo, how);
        let x = random_input(&lp);
        let want = reference::run(&lp.graph, &lp.weights, &x).expect("reference");
        // The bytes every tile takes on the wire, as the planner predicts them.
        let predicted: usize = lp
            .plan
            .segments
            .iter()
            .map(|seg| {
                let c = lp.graph.layer(seg.output()).shape.c;
                let tiles = seg.tiles.iter();
                tiles
                    .map(|t| how.wire_bytes(t.output.area() * c, c))
                    .sum::<usize>()
            })
            .sum();
        let exec = Executor::new(lp.clone());
        let got = exec.run(&x).expect("runs");
        let end_to_end = relative_l2(got.output.iter(), want.iter());
        errors.push((how, got.compression_error, end_to_end, got.wire_bytes));
        assert_eq!(got.wire_bytes, predicted as u64, "{how:?}");
        // The reference's tiles, quantised on the host: the same bytes, and the same output
        // but for codes that the kernels' rounding differences move by one step.
        let by_reference = Executor::with_kernels(lp, Kernels::Reference)
            .run(&x)
            .expect("runs");
        assert_eq!(by_reference.wire_bytes, got.wire_bytes, "{how:?}");
        let apart = relative_l2(got.output.iter(), by_reference.output.iter());
        if how == Compression::None {
            assert!(apart <= tolerance(Kernels::Jit), "{apart:.2e}");
        } else {
            // Measured: q8 6.8e-5 apart, 5.2e-4 from the exact network; q4 2.7e-4 and 8.8e-3.
            assert!(
                apart <= end_to_end / 4.0,
                "{how:?}: {apart:.2e} vs {end_to_end:.2e}"
            );
            let (e, e_ref) = (got.compression_error, by_reference.compression_error);
            assert!((e - e_ref).abs() <= 1e-3 * e_ref, "{how:?}: {e} vs {e_ref}");
        }
    }
    let (_, e_none, d_none, b_none) = errors[0];
    let (_, e_q8, d_q8, b_q8) = errors[1];
    let (_, e_q4, d_q4, b_q4) = errors[2];
    // What the coordinator decoded reaches the output: 5.2e-4 and 8.8e-3 measured (q4 with
    // its two codes per byte swapped on decoding: 2.9e-2).
    assert!(d_q8 > 0.0 && d_q8 < 0.002, "q8 deviation {d_q8}");
    assert!(d_q4 > d_q8 && d_q4 < 0.015, "q4 deviation {d_q4}");
    assert_eq!(e_none, 0.0);
    assert!(d_none <= EXACT);
    assert!(e_q8 > 0.0 && e_q8 < 0.01, "q8 error {e_q8}");
    assert!(e_q4 > e_q8 && e_q4 < 0.2, "q4 error {e_q4}");
    assert!(b_q8 * 3 < b_none && b_q4 < b_q8, "{b_none} {b_q8} {b_q4}");
}
