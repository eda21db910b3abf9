//! Which lossless coder for tensors on the wire: every tile input and output of a plan run on
//! an image, as they would cross the network (f32, q8 or q4 codes), through zstd (level 1)
//! and LZ4, with the bytes and the encode/decode speed of each. A benchmark: it prints and
//! asserts nothing.
//!
//! `cargo run --release -p adcnn-runtime --example coder_bench -- PLAN.bin IMAGE [ROUNDS]`

use std::time::Instant;

use adcnn_core::format::decode;
use adcnn_core::input;
use adcnn_core::plan::Compression;
use adcnn_core::program::run_segments;
use adcnn_kernels::wire::{self, WireTile};
use adcnn_kernels::{CompileOptions, CompiledKernels};
use adcnn_runtime::net::codec::{self, Coder};
use ndarray::Array3;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(plan), Some(image)) = (args.next(), args.next()) else {
        eprintln!("usage: coder_bench PLAN.bin IMAGE [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    let bytes = std::fs::read(&plan).expect("reads the plan");
    let p = decode(&bytes).expect("a plan");
    let x = input::load(std::path::Path::new(&image), &p.header.network.input).expect("an input");
    let parts: Vec<_> = p.header.plan.segments.iter().zip(&p.segments).collect();
    let k =
        CompiledKernels::compile(&parts, |_| true, &CompileOptions::default()).expect("compiles");
    // Every tile's input and exact output.
    let mut inputs: Vec<Array3<f32>> = Vec::new();
    let mut outputs: Vec<Array3<f32>> = Vec::new();
    run_segments(&p.header.plan, &p.segments, &x, |prog, seg, tile, t| {
        inputs.push(t.clone());
        let y = k.run_tile(prog, seg, tile, t)?;
        outputs.push(y.clone());
        Ok(y)
    })
    .expect("runs");
    println!(
        "{}: {} tiles; per frame, bytes on the wire and coder time (median of {rounds})",
        p.header.plan.network,
        outputs.len()
    );
    println!(
        "{:<22} {:>12} {:>12} {:>8} {:>10} {:>10}",
        "what", "raw bytes", "coded bytes", "ratio", "encode ms", "decode ms"
    );
    let mut cases: Vec<(String, Vec<WireTile>)> = vec![(
        "tile inputs f32".into(),
        inputs.iter().cloned().map(WireTile::Exact).collect(),
    )];
    for how in [Compression::None, Compression::Q8, Compression::Q4] {
        let tiles = outputs
            .iter()
            .map(|y| wire::encode(y.clone(), how).0)
            .collect();
        cases.push((format!("tile outputs {}", how.name()), tiles));
    }
    for (name, tiles) in &cases {
        for coder in [Coder::None, Coder::Lz4, Coder::Zstd] {
            let (mut enc, mut dec) = (Vec::new(), Vec::new());
            let (mut raw, mut coded) = (0usize, 0usize);
            for _ in 0..rounds {
                let t0 = Instant::now();
                let msgs: Vec<_> = tiles.iter().map(|t| codec::encode_tile(t, coder)).collect();
                enc.push(t0.elapsed().as_secs_f64() * 1e3);
                let t0 = Instant::now();
                for m in &msgs {
                    let _ = codec::decode_tile(m).expect("decodes");
                }
                dec.push(t0.elapsed().as_secs_f64() * 1e3);
                raw = tiles.iter().map(WireTile::wire_bytes).sum();
                coded = msgs.iter().map(codec::wire_bytes).sum();
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "{:<22} {:>12} {:>12} {:>8.3} {:>10.2} {:>10.2}  {}",
                name,
                raw,
                coded,
                coded as f64 / raw.max(1) as f64,
                median(&mut enc),
                median(&mut dec),
                coder.name()
            );
        }
    }
}
