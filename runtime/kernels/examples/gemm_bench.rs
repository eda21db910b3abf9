//! Measures the host SGEMM (`adcnn_kernels::gemm`) against ndarray's `general_mat_mul` (the
//! reference interpreter's GEMM, matrixmultiply) on one thread, in GFLOP/s.
//!
//! `cargo run --release -p adcnn-kernels --example gemm_bench` — a benchmark, not a test:
//! it prints best-of and median figures and asserts nothing.

use std::time::Instant;

use adcnn_compiler::weights::SplitMix64;
use adcnn_kernels::act::Act;
use adcnn_kernels::gemm::{
    ColumnEpilogue, PackedA, PackedB, Strided, gemm_packed, gemm_strided, isa,
};
use ndarray::{Array2, linalg::general_mat_mul};

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// (best, median) seconds of `f` over enough runs to fill ~0.4 s (at least 5), calling
/// `before` (untimed) ahead of each run.
fn time_after(mut before: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 5 || (start.elapsed().as_secs_f64() < 0.4 && v.len() < 200) {
        before();
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn time(f: impl FnMut()) -> (f64, f64) {
    time_after(|| {}, f)
}

/// Writes 64 MiB (twice the last-level cache), so the next run finds A, B and C in memory
/// as a layer in a network does, where the previous layers pushed them out.
fn evict(buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(64).enumerate() {
        chunk[0] = i as u8;
    }
    std::hint::black_box(&buf[..]);
}

fn main() {
    println!("micro-kernel: {:?}; one thread", isa());
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}",
        "shape (M×N×K)", "adcnn best", "adcnn p50", "ndarray best", "ndarray p50"
    );
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("256³", 256, 256, 256),
        ("VGG conv1_2 56×56 tile", 64, 3136, 576),
        ("VGG conv2_2 56×56", 128, 3136, 1152),
        ("VGG conv3_2 56×56", 256, 3136, 2304),
        ("VGG conv4_2 28×28", 512, 784, 4608),
        ("VGG conv5_2 14×14", 512, 196, 4608),
        ("VGG conv1_1 (K=27)", 64, 3136, 27),
        ("ResNet-50 1×1 56×56", 256, 3136, 64),
        ("ResNet-50 1×1 56×56 down", 64, 3136, 256),
        ("ResNet-50 1×1 28×28", 512, 784, 128),
        ("ResNet-50 1×1 14×14", 1024, 196, 256),
        ("ResNet-50 1×1 14×14 down", 256, 196, 1024),
        ("ResNet-50 1×1 7×7", 2048, 49, 512),
        ("ResNet-50 1×1 7×7 down", 512, 49, 2048),
        ("Winograd VGG conv1_2 block", 64, 168, 64),
        ("Winograd VGG conv3 block", 256, 96, 256),
    ];
    let packed = bench(shapes);
    println!(
        "{:<28} {:>10} {:>10}",
        "strided (pixels × out)", "p50", "packed p50"
    );
    for (&(name, m, n, k), t) in shapes.iter().zip(packed) {
        if name.starts_with("ResNet") {
            strided(name, (m, n, k), t);
        }
    }
    // MobileNetV2's 1×1 convolutions (M = out channels, N = pixels, K = in channels), with
    // how often each runs per frame: small K and N = 49–196 stress packing and edges.
    let mobilenet: &[(&str, usize, usize, usize, usize)] = &[
        ("MNv2 112² project", 16, 12544, 32, 1),
        ("MNv2 112² expand", 96, 12544, 16, 1),
        ("MNv2 56² project", 24, 3136, 96, 1),
        ("MNv2 56² expand", 144, 3136, 24, 2),
        ("MNv2 56² project", 24, 3136, 144, 1),
        ("MNv2 28² project", 32, 784, 144, 1),
        ("MNv2 28² expand", 192, 784, 32, 3),
        ("MNv2 28² project", 32, 784, 192, 2),
        ("MNv2 14² project", 64, 196, 192, 1),
        ("MNv2 14² expand", 384, 196, 64, 4),
        ("MNv2 14² project", 64, 196, 384, 3),
        ("MNv2 14² project", 96, 196, 384, 1),
        ("MNv2 14² expand", 576, 196, 96, 3),
        ("MNv2 14² project", 96, 196, 576, 2),
        ("MNv2 7² project", 160, 49, 576, 1),
        ("MNv2 7² expand", 960, 49, 160, 3),
        ("MNv2 7² project", 160, 49, 960, 2),
        ("MNv2 7² project", 320, 49, 960, 1),
        ("MNv2 7² conv 18", 1280, 49, 320, 1),
    ];
    let plain: Vec<_> = mobilenet
        .iter()
        .map(|&(s, m, n, k, _)| (s, m, n, k))
        .collect();
    let times = bench(&plain);
    let per_frame = |times: &[f64]| -> f64 {
        let t: f64 = times
            .iter()
            .zip(mobilenet)
            .map(|(t, s)| t * s.4 as f64)
            .sum();
        t * 1e3
    };
    println!(
        "MobileNetV2 1×1 GEMMs per frame (median times × count): {:.2} ms",
        per_frame(&times)
    );
    // The same products as the interleaved blocks compute them (`gemm_strided`, the
    // weights packed as B): expansions read the input's channel planes in place and apply
    // bias and relu6 as they store; projections read interleaved rows.
    println!(
        "{:<28} {:>10} {:>10}   (interleaved: pixels × out channels)",
        "", "strided p50", "packed p50"
    );
    let strided: Vec<f64> = mobilenet
        .iter()
        .zip(&times)
        .map(|(&(name, m, n, k, _), &packed)| strided(name, (m, n, k), packed))
        .collect();
    println!(
        "MobileNetV2 1×1 GEMMs per frame, interleaved: {:.2} ms (packed: {:.2} ms)",
        per_frame(&strided),
        per_frame(&times)
    );
    // The same GEMMs with the caches emptied before each run.
    let mut junk = vec![0u8; 64 << 20];
    let cold: Vec<f64> = plain
        .iter()
        .map(|&(_, m, n, k)| {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            let pa = PackedA::new(&a, m, k, k);
            let mut c = vec![0.0f32; m * n];
            let t = time_after(
                || evict(&mut junk),
                || gemm_packed(&pa, &b, n, n, &mut c, n, false),
            )
            .1;
            println!("{:<28} {:>8.1} µs from memory ({m}×{n}×{k})", "", t * 1e6);
            t
        })
        .collect();
    println!(
        "the same from memory (caches evicted before each run): {:.2} ms",
        per_frame(&cold)
    );
}

/// Times `C = A·B` as the interleaved blocks compute it (`gemm_strided`, pixels × out
/// channels, the weights packed as B; expansions read channel planes and apply bias and
/// relu6, other shapes read interleaved rows), prints it against `packed` seconds and
/// returns the median seconds.
fn strided(name: &str, (m, n, k): (usize, usize, usize), packed: f64) -> f64 {
    let (w, x) = (data(m * k, 1), data(k * n, 2));
    let pb = PackedB::transposed(&PackedA::new(&w, m, k, k));
    let bias = data(m, 3);
    let mut c = vec![0.0f32; m * n];
    let expand = name.contains("expand");
    let a = if expand {
        Strided {
            a: &x,
            rs: 1,
            ks: n,
        }
    } else {
        Strided {
            a: &x,
            rs: k,
            ks: 1,
        }
    };
    let epi = expand.then_some(ColumnEpilogue {
        bias: &bias,
        act: Act::Clip { min: 0.0, max: 6.0 },
    });
    let med = time(|| gemm_strided(a, n, &pb, &mut c, m, epi)).1;
    let gf = 2.0 * (m * n * k) as f64 / 1e9;
    println!(
        "{name:<28} {:>10.1} {:>10.1}   GFLOP/s ({m}×{n}×{k})",
        gf / med,
        gf / packed
    );
    med
}

/// Prints each shape's figures; returns the median seconds of adcnn's GEMM per shape.
fn bench(shapes: &[(&str, usize, usize, usize)]) -> Vec<f64> {
    let mut medians = Vec::new();
    for &(name, m, n, k) in shapes {
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let gf = 2.0 * (m * n * k) as f64 / 1e9;
        let pa = PackedA::new(&a, m, k, k);
        let mut c = vec![0.0f32; m * n];
        let (best, med) = time(|| gemm_packed(&pa, &b, n, n, &mut c, n, false));
        let an = Array2::from_shape_vec((m, k), a.clone()).expect("shape");
        let bn = Array2::from_shape_vec((k, n), b.clone()).expect("shape");
        let mut cn = Array2::<f32>::zeros((m, n));
        let (nbest, nmed) = time(|| general_mat_mul(1.0, &an, &bn, 0.0, &mut cn));
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>12.1} {:>11.1}   GFLOP/s ({m}×{n}×{k})",
            name,
            gf / best,
            gf / med,
            gf / nbest,
            gf / nmed
        );
        medians.push(med);
    }
    medians
}
