//! What quantising tile outputs for the wire costs a worker, one thread: every tile of a
//! plan's segments run as (a) exact, (b) exact and then quantised by a separate host pass
//! over the output (`wire::encode`), (c) quantised by the kernels themselves
//! (`run_tile_wire`: the last epilogue quantises each channel while it is in L1, or a
//! generated pass does). Reports milliseconds per frame (sum over the tiles), medians of
//! interleaved rounds.
//!
//! Without a plan, it times the epilogue alone on a few output shapes: plain, quantising,
//! and plain followed by the host quantiser.
//!
//! `cargo run --release -p adcnn-kernels --example wire_bench -- [PLAN.bin [q8|q4] [ROUNDS]]`
//! (build the plan with `adcnnc build … -o PLAN.bin`). A benchmark: it asserts nothing.

use std::time::Instant;

use adcnn_core::format::{DecodedPlan, decode};
use adcnn_core::plan::Compression;
use adcnn_core::program::run_segments;
use adcnn_core::weights::SplitMix64;
use adcnn_kernels::jit::{Act, EpilogueSpec, JitSession};
use adcnn_kernels::wire;
use adcnn_kernels::{CompileOptions, CompiledKernels};
use ndarray::Array3;

/// Every tile's input (stitched from exact outputs), in the order of the plan's segments
/// and tiles.
fn tile_inputs(lp: &DecodedPlan, k: &CompiledKernels) -> Vec<Array3<f32>> {
    let s0 = lp.header.network.input.shape;
    let mut rng = SplitMix64::new(1);
    let input = Array3::from_shape_simple_fn((s0.c, s0.h, s0.w), || rng.uniform(0.0, 1.0));
    let mut inputs = Vec::new();
    run_segments(
        &lp.header.plan,
        &lp.segments,
        &input,
        |prog, seg, tile, x| {
            inputs.push(x.clone());
            k.run_tile(prog, seg, tile, x)
        },
    )
    .expect("the plan runs");
    inputs
}

/// Median microseconds of `f` over interleaved runs.
fn time_us(f: &mut dyn FnMut()) -> f64 {
    let mut t = Vec::new();
    for _ in 0..201 {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The epilogue alone: bias + relu, with and without quantisation.
fn epilogues() {
    println!("epilogue (bias + relu) per tile output, one thread, median µs");
    println!(
        "{:<22} {:>8} {:>16} {:>18}",
        "channels × pixels", "plain", "quantising (q8)", "plain + host pass"
    );
    for (c, p) in [(64, 56 * 56), (256, 14 * 14), (512, 7 * 7), (24, 56 * 56)] {
        let mut session = JitSession::new().expect("jit");
        let spec = |wire| EpilogueSpec {
            channels: c,
            pixels: p,
            bias: true,
            act: Act::Relu,
            residual: false,
            wire,
        };
        let (plain, quant) = (spec(Compression::None), spec(Compression::Q8));
        let hp = session.epilogue(&plain).expect("compiles");
        let hq = session.epilogue(&quant).expect("compiles");
        let code = session.finish().expect("finishes");
        let mut rng = SplitMix64::new(3);
        let y0: Vec<f32> = (0..c * p).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let bias = vec![0.0f32; c];
        let mut y = y0.clone();
        let mut codes = vec![0u8; c * p];
        let mut stats = vec![[0.0f32; 4]; c];
        let mut ranges = vec![[0.0f32; 2]; c];
        let a = time_us(&mut || code.run_epilogue(hp, &plain, &mut y, &bias, None));
        let b = time_us(&mut || {
            code.run_quantising(hq, &quant, &mut y, &bias, None, &mut codes, &mut stats);
        });
        let d = time_us(&mut || {
            code.run_epilogue(hp, &plain, &mut y, &bias, None);
            wire::quantise(&y, c, p, Compression::Q8, &mut codes, &mut ranges);
        });
        println!("{:<22} {a:>8.1} {b:>16.1} {d:>18.1}", format!("{c} × {p}"));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        epilogues();
        return;
    };
    let how = match args.next().as_deref() {
        None | Some("q8") => Compression::Q8,
        Some("q4") => Compression::Q4,
        Some(other) => {
            eprintln!("unknown compression {other} (q8 or q4)");
            std::process::exit(2);
        }
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let bytes = std::fs::read(&path).expect("reads the plan");
    let lp = decode(&bytes).expect("a plan");
    let opts = CompileOptions {
        wire: how,
        ..CompileOptions::default()
    };
    let parts: Vec<_> = lp.header.plan.segments.iter().zip(&lp.segments).collect();
    let k = CompiledKernels::compile(&parts, |_| true, &opts).expect("compiles");
    let inputs = tile_inputs(&lp, &k);
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    // The separate pass alone, timed around each call.
    let mut pass = Vec::new();
    let mut values = 0usize;
    for round in 0..rounds + 2 {
        for (mode, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            let mut in_pass = 0.0;
            let tiles = parts
                .iter()
                .flat_map(|&(seg, prog)| seg.tiles.iter().map(move |tile| (seg, prog, tile)));
            for ((seg, prog, tile), x) in tiles.zip(&inputs) {
                let n = match mode {
                    0 => k.run_tile(prog, seg, tile, x).expect("runs").len(),
                    1 => {
                        let y = k.run_tile(prog, seg, tile, x).expect("runs");
                        let t0 = Instant::now();
                        let n = wire::encode(y, how).0.wire_bytes();
                        in_pass += t0.elapsed().as_secs_f64() * 1e3;
                        n
                    }
                    _ => k
                        .run_tile_wire(prog, seg, tile, x, how)
                        .expect("runs")
                        .0
                        .wire_bytes(),
                };
                if round == 0 && mode == 0 {
                    values += n;
                }
            }
            if round >= 2 {
                t.push(start.elapsed().as_secs_f64() * 1e3);
                if mode == 1 {
                    pass.push(in_pass);
                }
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut a, mut b, mut c] = times;
    let (a, b, c) = (median(&mut a), median(&mut b), median(&mut c));
    let p = median(&mut pass);
    println!(
        "{path}: {} tiles, {:.2} M output values, {} ({} quantising epilogues, {} passes)",
        lp.header
            .plan
            .segments
            .iter()
            .map(|s| s.tiles.len())
            .sum::<usize>(),
        values as f64 / 1e6,
        how.name(),
        k.stats.quantising_epilogues,
        k.stats.quantisers,
    );
    println!("exact tiles                 {a:8.3} ms");
    println!(
        "exact + separate host pass  {b:8.3} ms  (+{:.3} ms; the pass alone {p:.3} ms)",
        b - a
    );
    println!("quantised by the kernels    {c:8.3} ms  (+{:.3} ms)", c - a);
}
