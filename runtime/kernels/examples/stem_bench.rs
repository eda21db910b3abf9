//! Network stems with few input channels (MobileNetV2's 3×3/2 on RGB, ResNet's 7×7/2,
//! YOLOv2-tiny's and VGG16's 3×3/1), as
//! one-layer plans on one thread: the direct kernel (`adcnn_kernels::direct`) against im2col +
//! GEMM + epilogue (`CompileOptions::direct` off), interleaved, best and median of 40 runs.
//!
//! `cargo run --release -p adcnn-kernels --example stem_bench` — a benchmark: it prints and
//! asserts nothing.

use std::path::Path;
use std::time::Instant;

use adcnn_compiler::check::check_text;
use adcnn_compiler::lower::{Fold, lower};
use adcnn_compiler::plan::{Options, Strategy, plan};
use adcnn_compiler::weights::SplitMix64;
use adcnn_kernels::{CompileOptions, CompiledKernels};
use ndarray::Array3;

const CLUSTER: &str = "
cluster:
  name: one
  coordinator: a
  nodes:
    - { name: a, address: \"10.0.0.1:1\", gflops: 40, mbps: 100, latency_ms: 1 }
";

fn main() {
    let stems = [
        (
            "MobileNetV2 3x3/2 3->32 224",
            224,
            "conv(32, k=3, s=2, p=1, bias=false) | bn | relu6",
        ),
        (
            "ResNet 7x7/2 3->64 224",
            224,
            "conv(64, k=7, s=2, p=3, bias=false) | bn | relu",
        ),
        (
            "YOLOv2-tiny 3x3/1 3->16 416",
            416,
            "conv(16, k=3, p=1, bias=false) | bn | leaky_relu(0.1)",
        ),
        ("VGG16 3x3/1 3->64 224", 224, "conv(64, k=3, p=1) | relu"),
    ];
    for (name, hw, layer) in stems {
        let text = format!(
            "network:\n  name: t\n  input:\n    shape: [3, {hw}, {hw}]\n  weights: random(seed=1)\n  layers:\n    - c: {layer}\n{CLUSTER}"
        );
        let checked = check_text(Path::new("t.yaml"), text);
        let (Some((graph, weights)), Some(cluster)) = (&checked.network, &checked.cluster) else {
            println!("{name}: does not check: {:?}", checked.diagnostics);
            continue;
        };
        let opts = Options {
            strategy: Strategy::Single,
            ..Options::default()
        };
        let Ok(p) = plan(graph, cluster, &opts) else {
            println!("{name}: no plan");
            continue;
        };
        let lowered = lower(graph, weights, &p, Fold::BatchNorms).expect("lowers");
        let parts: Vec<_> = p.segments.iter().zip(&lowered.segments).collect();
        let (seg, prog) = (&p.segments[0], &lowered.segments[0]);
        let tile = &seg.tiles[0];
        let mut rng = SplitMix64::new(3);
        let x = Array3::from_shape_simple_fn((3, hw, hw), || rng.uniform(-2.0, 2.0));
        let compile = |direct| {
            let o = CompileOptions {
                direct,
                ..CompileOptions::default()
            };
            CompiledKernels::compile(&parts, |_| true, &o).expect("compiles")
        };
        let (kd, kg) = (compile(true), compile(false));
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..40 {
            for (t, k) in times.iter_mut().zip([&kd, &kg]) {
                let t0 = Instant::now();
                let out = k.run_tile(prog, seg, tile, &x).expect("runs");
                t.push(t0.elapsed().as_secs_f64() * 1e3);
                drop(out);
            }
        }
        for t in &mut times {
            t.sort_by(f64::total_cmp);
        }
        println!(
            "{name}: direct best {:.3} ms p50 {:.3} | im2col+GEMM best {:.3} ms p50 {:.3} (direct convs: {})",
            times[0][0], times[0][20], times[1][0], times[1][20], kd.stats.direct
        );
    }
}
