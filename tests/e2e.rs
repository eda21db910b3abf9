//! End to end: every example network, planned for `edge4.yaml` with every strategy, encoded to
//! plan.bin and decoded again, run on the in-process cluster, equals the network computed
//! whole (exact strategies), or a direct tile-by-tile computation (FDSP). Every check runs
//! twice: with the compiled (JIT) kernels against the reference interpreter on the network
//! as written, and with the plain operators (`Kernels::Reference`) against the same
//! arithmetic the plan carries — its programs, batch norms folded — computed whole, so the
//! runtime's scatter, stitch and tail are checked to 1e-5 whatever folding does. What folding
//! does is measured on its own.

use adcnn_compiler::build::{Built, build};
use adcnn_compiler::graph::LayerGraph;
use adcnn_compiler::plan::{Compression, Mode, Options, Region, Strategy};
use adcnn_compiler::reference;
use adcnn_compiler::weights::{SplitMix64, Weights};
use adcnn_core::format::{DecodedPlan, decode};
use adcnn_core::tensor::{crop, region_mut};
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::worker::Kernels;
use adcnn_tests::{EXAMPLE_NETS, example, relative_l2};
use ndarray::Array3;

/// Stated tolerance for exact plans: relative L2 against the reference interpreter.
const EXACT: f64 = 1e-5;

/// The same for compiled kernels on whole networks. They fold batch norm into the conv
/// weights, sum in another order (blocked GEMM with FMA) and compute 3×3 convolutions as
/// Winograd F(4×4, 3×3) (~1e-6 per layer): each layer is within 1e-5 of the reference
/// (`runtime/kernels/tests/codegen.rs` checks that per tile), but rounding differences compound with
/// depth — ResNet-50 (53 convolutions) measures 4.2e-5 to 4.4e-5, YOLOv2-tiny 1.1e-5 to
/// 1.2e-5, the other examples stay under 1e-5. A wrong kernel shows errors of 1e-3 and more.
const EXACT_JIT: f64 = 1e-4;

fn tolerance(kernels: Kernels) -> f64 {
    match kernels {
        Kernels::Jit | Kernels::Gemm => EXACT_JIT,
        Kernels::Reference => EXACT,
    }
}

/// Batch norms folded into the convolutions before them at build time (`w·γ/√(σ²+ε)`) round
/// differently from applying them after: the plan's own arithmetic, computed whole on the
/// plain operators, against the network as written. Measured: ResNet-50 2.4e-5 (53 folded
/// convolutions), the others under 1e-5.
const FOLDED: f64 = 1e-4;

/// The network as the plan computes it: every segment's program on whole tensors, then the
/// tail (no tiles, no wire).
fn plan_whole(lp: &Loaded, x: &Array3<f32>) -> Array3<f32> {
    let mut current = x.clone();
    for p in &lp.plan.segments {
        current = p.run(&current).expect("segment runs");
    }
    lp.plan.tail.run(&current).expect("tail runs")
}

/// Both kernel kinds, in the order the tests run them.
const KERNELS: [Kernels; 2] = [Kernels::Jit, Kernels::Reference];

fn executor(lp: &Loaded, kernels: Kernels) -> LocalCluster {
    let exec = LocalCluster::with_kernels(lp.plan.clone(), kernels, None);
    assert_eq!(exec.compile_error(), None);
    exec
}

/// A built plan: the checked network it came from, and the plan as a runtime decodes it.
struct Loaded {
    built: Built,
    plan: DecodedPlan,
}

impl Loaded {
    fn network(&self) -> (&LayerGraph, &Weights) {
        let (g, w) = self.built.checked.network.as_ref().expect("a network");
        (g, w)
    }

    fn is_exact(&self) -> bool {
        self.plan.header.plan.is_exact()
    }
}

fn load(net: &str, strategy: Strategy, compression: Compression) -> Loaded {
    let opts = Options {
        strategy,
        compression,
        ..Options::default()
    };
    let built = build(&example(net), Some(&example("edge4")), &opts, 2)
        .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
    let plan = decode(&built.bytes).unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
    Loaded { built, plan }
}

fn random_input(lp: &Loaded) -> Array3<f32> {
    let s = lp.network().0.input.shape;
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
            assert!(lp.is_exact(), "{net} {}", strategy.name());
            let x = random_input(&lp);
            let network = expected.get_or_insert_with(|| {
                let (g, w) = lp.network();
                reference::run(g, w, &x).expect("reference")
            });
            let folded = plan_whole(&lp, &x);
            let err = relative_l2(folded.iter(), network.iter());
            assert!(
                err <= FOLDED,
                "{net} {}: folding: {err:.2e}",
                strategy.name()
            );
            for kernels in KERNELS {
                let mut exec = executor(&lp, kernels);
                let got = exec.run(&x).expect("runs");
                let want = match kernels {
                    Kernels::Reference => &folded,
                    _ => &*network,
                };
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

/// `--kernels gemm`: compiled kernels without Winograd give the same outputs and prepare
/// less weight memory (a quarter for the 3×3 layers Winograd would take).
#[test]
fn gemm_kernels_skip_winograd_and_equal_the_reference() {
    for net in ["resnet18", "yolov2-tiny"] {
        for strategy in [Strategy::Single, Strategy::Halo] {
            let lp = load(net, strategy, Compression::None);
            let x = random_input(&lp);
            let (g, w) = lp.network();
            let want = reference::run(g, w, &x).expect("reference");
            let (jit, mut gemm) = (executor(&lp, Kernels::Jit), executor(&lp, Kernels::Gemm));
            let got = gemm.run(&x).expect("runs");
            let err = relative_l2(got.output.iter(), want.iter());
            assert!(err <= EXACT_JIT, "{net} {}: {err:.2e}", strategy.name());
            let bytes = |e: &LocalCluster| e.weight_bytes().iter().sum::<usize>();
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
    let mut first = executor(&lp, Kernels::Jit);
    let mut second = executor(&lp, Kernels::Jit);
    let workers: Vec<usize> = (0..lp.plan.header.plan.cluster.nodes.len())
        .filter(|&i| first.weight_bytes()[i] > 0)
        .collect();
    assert!(workers.len() > 1, "{workers:?}");
    for &i in &workers {
        assert!(second.kernels_cached()[i], "node {i}");
        assert_eq!(second.compile_ms()[i], 0.0, "node {i}");
    }
    // Another kernel kind is another entry: compiled afresh.
    let gemm = executor(&lp, Kernels::Gemm);
    assert!(
        gemm.kernels_cached().iter().all(|c| !c),
        "{:?}",
        gemm.kernels_cached()
    );
    let (a, b) = (first.run(&x).expect("runs"), second.run(&x).expect("runs"));
    assert_eq!(a.output, b.output);
}

/// FDSP segments compute each tile as an image of its own; the expected output is built here
/// independently of the runtime: each tile's block through the segment's layers on the
/// plain operators, stitched.
#[test]
fn fdsp_equals_direct_tile_by_tile_computation() {
    let mut approximate = 0;
    for (net, _) in EXAMPLE_NETS {
        let lp = load(net, Strategy::Fdsp, Compression::None);
        let x = random_input(&lp);
        let mut current = x.clone();
        for (seg, prog) in lp.plan.header.plan.segments.iter().zip(&lp.plan.segments) {
            let out_shape = prog.output_shape();
            let mut out = Array3::<f32>::zeros((out_shape.c, out_shape.h, out_shape.w));
            let full = Region::full(prog.input_shape());
            // Halo segments of an FDSP plan are exact: their tiles are the segment's whole
            // result.
            let whole = (seg.mode == Mode::Halo).then(|| prog.run(&current).expect("runs"));
            for tile in &seg.tiles {
                let block = crop(&current, &full, &tile.input);
                let result = match &whole {
                    None => independent_image(prog, &block),
                    Some(w) => crop(w, &Region::full(out_shape), &tile.output),
                };
                region_mut(&mut out, &tile.output).assign(&result);
            }
            current = out;
        }
        let want = lp.plan.tail.run(&current).expect("tail runs");
        approximate += usize::from(!lp.is_exact());
        for kernels in KERNELS {
            let mut exec = executor(&lp, kernels);
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

/// A segment's layers on `block` as a network of its own, written out here with the plain
/// operators (not through the runtime's tile geometry).
fn independent_image(prog: &adcnn_core::program::Program, block: &Array3<f32>) -> Array3<f32> {
    let mut values: Vec<Array3<f32>> = Vec::new();
    for layer in prog.layers() {
        let inputs: Vec<&Array3<f32>> = layer
            .inputs
            .iter()
            .map(|s| match prog.position(s) {
                Some(j) => &values[j],
                None => block,
            })
            .collect();
        let y = reference::eval_op(&layer.op, &layer.name, &inputs, prog.weights());
        values.push(y.expect("layer runs"));
    }
    values.pop().expect("a layer")
}

#[test]
fn compression_reports_its_error_and_saves_bytes() {
    let mut errors = Vec::new();
    for how in [Compression::None, Compression::Q8, Compression::Q4] {
        let lp = load("resnet18", Strategy::Halo, how);
        let x = random_input(&lp);
        let (g, w) = lp.network();
        let want = reference::run(g, w, &x).expect("reference");
        // The bytes every tile takes on the wire, as the planner predicts them.
        let predicted: usize = lp
            .plan
            .header
            .plan
            .segments
            .iter()
            .map(|seg| {
                let c = g.layer(seg.output()).shape.c;
                let tiles = seg.tiles.iter();
                tiles
                    .map(|t| how.wire_bytes(t.output.area() * c, c))
                    .sum::<usize>()
            })
            .sum();
        let mut exec = executor(&lp, Kernels::Jit);
        let got = exec.run(&x).expect("runs");
        let end_to_end = relative_l2(got.output.iter(), want.iter());
        errors.push((how, got.compression_error, end_to_end, got.wire_bytes));
        assert_eq!(got.wire_bytes, predicted as u64, "{how:?}");
        // The reference's tiles, quantised on the host: the same bytes, and the same output
        // but for codes that the kernels' rounding differences move by one step.
        let by_reference = executor(&lp, Kernels::Reference).run(&x).expect("runs");
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

/// A node's kernel threads (`--threads`) split each layer by output channels, so they must
/// give the very bits one thread gives: every example network, its whole plan (`single`:
/// every layer whole, the largest splits; `auto`: real tiles) and the tail's GEMV, on the
/// compiled kernels alone and inside a pool of three threads.
#[test]
fn kernel_threads_give_the_same_bits_as_one_thread() {
    use adcnn_core::program::run_segments;
    use adcnn_kernels::par::Pool;
    use adcnn_kernels::{CompileOptions, CompiledKernels, CompiledProgram};
    let pool = Pool::new(3).expect("threads start").expect("a pool");
    for (net, _) in EXAMPLE_NETS {
        for strategy in [Strategy::Single, Strategy::Auto] {
            let lp = load(net, strategy, Compression::None);
            let x = random_input(&lp);
            let header = &lp.plan.header;
            let parts: Vec<_> = header.plan.segments.iter().zip(&lp.plan.segments).collect();
            let kernels = CompiledKernels::compile(&parts, |_| true, &CompileOptions::default())
                .expect("kernels compile");
            let tail = CompiledProgram::compile(&lp.plan.tail, &CompileOptions::default())
                .expect("the tail compiles");
            let once = || {
                let head = run_segments(&header.plan, &lp.plan.segments, &x, |p, s, tile, t| {
                    kernels.run_tile(p, s, tile, t)
                })
                .expect("segments run");
                tail.run(&lp.plan.tail, &head).expect("tail runs")
            };
            let one = once();
            let three = pool.run(once);
            assert_eq!(one.dim(), three.dim());
            let differ = one
                .iter()
                .zip(&three)
                .filter(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(
                differ.count(),
                0,
                "{net} {}: threads changed the result",
                strategy.name()
            );
        }
    }
}
