//! Measures Winograd F(4×4, 3×3) convolutions (`adcnn_kernels::winograd`) on the 3×3 stride-1
//! layer shapes of the example networks, one thread: milliseconds and "effective" GFLOP/s
//! (the direct convolution's FLOPs over the time taken, so above the GEMM's rate when the
//! saved products outweigh the transforms).
//!
//! `cargo run --release -p adcnn-kernels --example winograd_bench` — a benchmark: it prints
//! best-of and median figures and asserts nothing.

use std::time::Instant;

use adcnn_compiler::weights::SplitMix64;
use adcnn_kernels::winograd::{Shape, Winograd};

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

fn main() {
    println!("one thread; effective GFLOP/s = direct 3×3 FLOPs / time");
    println!(
        "{:<26} {:>9} {:>9} {:>10}",
        "layer (cin→cout, H×W)", "best ms", "p50 ms", "eff GFLOP/s"
    );
    let shapes: &[(&str, usize, usize, usize)] = &[
        ("VGG16 conv1_2", 64, 64, 224),
        ("VGG16 conv3_2", 256, 256, 56),
        ("VGG16 conv5_2", 512, 512, 14),
        ("ResNet layer1", 64, 64, 56),
        ("ResNet layer2", 128, 128, 28),
        ("ResNet layer3", 256, 256, 14),
        ("YOLOv2-tiny conv7", 512, 1024, 13),
        ("YOLOv2-tiny conv8", 1024, 1024, 13),
    ];
    for &(name, cin, cout, hw) in shapes {
        let s = Shape {
            h: hw,
            w: hw,
            oh: hw,
            ow: hw,
            pad_top: 1,
            pad_left: 1,
        };
        let (x, w) = (data(cin * hw * hw, 1), data(cout * cin * 9, 2));
        let wg = Winograd::new(&w, cout, cin);
        let mut y = vec![0.0f32; cout * hw * hw];
        wg.conv(&s, &x, &mut y, false, None);
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 5 || (start.elapsed().as_secs_f64() < 0.5 && times.len() < 200) {
            let t = Instant::now();
            wg.conv(&s, &x, &mut y, false, None);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let gflop = 2.0 * (cin * cout * 9 * hw * hw) as f64 / 1e9;
        println!(
            "{:<26} {:>9.3} {:>9.3} {:>10.1}",
            format!("{name} ({cin}→{cout}, {hw}²)"),
            times[0],
            times[times.len() / 2],
            gflop / (times[0] / 1e3)
        );
    }
}
