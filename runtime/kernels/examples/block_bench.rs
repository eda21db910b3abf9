//! MobileNetV2 (`single` plan, one thread) with its inverted-residual blocks computed layer
//! by layer and over row bands of several sizes (`CompileOptions::blocks`, `band_bytes`),
//! all compiled in one process and run interleaved (this host's speed changes between
//! processes), median and best of 40 rounds.
//!
//! `cargo run --release -p adcnn-kernels --example block_bench` — a benchmark: it prints
//! and asserts nothing.

use std::path::Path;
use std::time::Instant;

use adcnn_compiler::check::check;
use adcnn_compiler::lower::{Fold, lower};
use adcnn_compiler::plan::{Options, Strategy, plan};
use adcnn_compiler::weights::SplitMix64;
use adcnn_core::program::run_segments;
use adcnn_kernels::{BAND_BYTES, CompileOptions, CompiledKernels, CompiledProgram};
use ndarray::Array3;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let checked = check(
        &root.join("dsl-examples/mobilenetv2.yaml"),
        Some(&root.join("dsl-examples/edge4.yaml")),
    );
    let (Some((graph, weights)), Some(cluster)) = (&checked.network, &checked.cluster) else {
        eprintln!("mobilenetv2.yaml does not check:\n{}", checked.render());
        std::process::exit(1);
    };
    let opts = Options {
        strategy: Strategy::Single,
        ..Options::default()
    };
    let p = plan(graph, cluster, &opts).expect("plans");
    let lowered = lower(graph, weights, &p, Fold::BatchNorms).expect("lowers");
    let parts: Vec<_> = p.segments.iter().zip(&lowered.segments).collect();
    let s = graph.input.shape;
    let mut rng = SplitMix64::new(3);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-2.0, 2.0));
    let mut configs = vec![("layer by layer".to_string(), false, 0)];
    for kib in [128, 256, 512, 1024, 2048, 1 << 20] {
        let name = match kib << 10 {
            BAND_BYTES => format!("bands of {kib} KiB (default)"),
            _ if kib == 1 << 20 => "one band (whole map)".to_string(),
            _ => format!("bands of {kib} KiB"),
        };
        configs.push((name, true, kib << 10));
    }
    let kernels: Vec<CompiledKernels> = configs
        .iter()
        .map(|&(_, blocks, band_bytes)| {
            let o = CompileOptions {
                blocks,
                band_bytes,
                ..CompileOptions::default()
            };
            CompiledKernels::compile(&parts, |_| true, &o).expect("compiles")
        })
        .collect();
    let tail =
        CompiledProgram::compile(&lowered.tail, &CompileOptions::default()).expect("compiles");
    let mut times = vec![Vec::new(); configs.len()];
    for round in 0..42 {
        for (t, k) in times.iter_mut().zip(&kernels) {
            let t0 = Instant::now();
            let out = run_segments(&p, &lowered.segments, &x, |prog, seg, tile, t| {
                k.run_tile(prog, seg, tile, t)
            })
            .and_then(|head| tail.run(&lowered.tail, &head))
            .expect("runs");
            // Two warm-up rounds.
            if round >= 2 {
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            drop(out);
        }
    }
    println!("MobileNetV2, single plan, one thread: ms per frame (median, best of 40)");
    for ((name, _, _), t) in configs.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        println!("{:>8.2} {:>8.2}  {name}", t[t.len() / 2], t[0]);
    }
}
