//! MobileNetV2's depthwise layers (3×3, pad 1, relu6) on the generated kernel and on the
//! host AVX2+FMA kernel, best of 30 × 5 calls each, interleaved; checks both give the same
//! bits. `cargo run --release -p adcnn-kernels --example depthwise_bench`
use adcnn_kernels::depthwise;
use adcnn_kernels::jit::{Act, DepthwiseSpec, JitSession};
use std::time::Instant;

fn main() {
    let shapes = [
        (32, 112, 112, 1),
        (96, 112, 112, 2),
        (144, 56, 56, 1),
        (144, 56, 56, 2),
        (192, 28, 28, 1),
        (192, 28, 28, 2),
        (384, 14, 14, 1),
        (576, 14, 14, 1),
        (576, 14, 14, 2),
        (960, 7, 7, 1),
    ];
    // How often each shape occurs in MobileNetV2.
    let mult = [1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 4.0, 2.0, 1.0, 3.0];
    let (mut tj, mut th, mut tn, mut t16) = (0.0, 0.0, 0.0, 0.0);
    for (si, &(c, h, w, s)) in shapes.iter().enumerate() {
        let oh = (h + 2 - 3) / s + 1;
        let ow = (w + 2 - 3) / s + 1;
        let spec = DepthwiseSpec {
            channels: c,
            h,
            w,
            kh: 3,
            kw: 3,
            sh: s,
            sw: s,
            dh: 1,
            dw: 1,
            pad: [1, 1, 1, 1],
            oh,
            ow,
            act: Act::Clip { min: 0.0, max: 6.0 },
            residual: false,
        };
        if !depthwise::applies(&spec) {
            println!("this CPU has no AVX2+FMA: no host depthwise kernel");
            return;
        }
        let mut sess = JitSession::new().expect("cranelift supports this host");
        let hd = sess.depthwise(&spec).expect("compilable");
        let code = sess.finish().expect("finalized");
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let wt: Vec<f32> = (0..c * 9)
            .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
            .collect();
        let b = vec![0.1f32; c];
        let mut y1 = vec![0.0f32; c * oh * ow];
        let mut y2 = vec![0.0f32; c * oh * ow];
        let mut s1 = vec![0.0f32; spec.scratch_len()];
        let mut s2 = vec![0.0f32; depthwise::scratch_len(&spec)];
        let xt: Vec<f32> = (0..c * h * w).map(|i| x[(i % c) * h * w + i / c]).collect();
        let wtt = depthwise::taps_by_channel(&wt, c);
        let mut y3 = vec![0.0f32; c * oh * ow];
        let (mut bj, mut bh, mut bn, mut b16) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        let lanes16 = depthwise::nhwc_lanes(&spec) == 16;
        for _ in 0..30 {
            let t = Instant::now();
            for _ in 0..5 {
                code.run_depthwise(hd, &spec, &x, &wt, &b, None, &mut y1, &mut s1);
            }
            bj = bj.min(t.elapsed().as_secs_f64() / 5.0);
            let t = Instant::now();
            for _ in 0..5 {
                depthwise::run(&spec, &x, h * w, None, &wt, &b, None, &mut y2, &mut s2);
            }
            bh = bh.min(t.elapsed().as_secs_f64() / 5.0);
            let t = Instant::now();
            for _ in 0..5 {
                depthwise::run_nhwc_lanes(8, &spec, &xt, &wtt, &b, &mut y3);
            }
            bn = bn.min(t.elapsed().as_secs_f64() / 5.0);
            if lanes16 {
                let t = Instant::now();
                for _ in 0..5 {
                    depthwise::run_nhwc_lanes(16, &spec, &xt, &wtt, &b, &mut y3);
                }
                b16 = b16.min(t.elapsed().as_secs_f64() / 5.0);
            }
        }
        // The interleaved output is the planar one transposed, bit for bit.
        let planar =
            (0..c * oh * ow).all(|i| y3[i].to_bits() == y2[(i % c) * oh * ow + i / c].to_bits());
        assert!(planar, "interleaved and planar host kernels differ");
        assert_eq!(y1, y2, "generated and host kernels differ");
        let n = (c * oh * ow) as f64;
        println!(
            "{c}x{h}x{w} s{s}: jit {:.1} us ({:.2} ns/out)  host {:.1} us ({:.2} ns/out)  interleaved {:.1} us ({:.2} ns/out)  16 lanes {:.1} us ({:.2} ns/out)",
            bj * 1e6,
            bj * 1e9 / n,
            bh * 1e6,
            bh * 1e9 / n,
            bn * 1e6,
            bn * 1e9 / n,
            b16 * 1e6,
            b16 * 1e9 / n
        );
        tn += bn * mult[si];
        t16 += if lanes16 { b16 } else { bn } * mult[si];
        tj += bj * mult[si];
        th += bh * mult[si];
    }
    println!(
        "mobilenetv2 total: jit {:.3} ms host {:.3} ms interleaved {:.3} ms (16 lanes where it \
         runs: {:.3} ms)",
        tj * 1e3,
        th * 1e3,
        tn * 1e3,
        t16 * 1e3
    );
}
