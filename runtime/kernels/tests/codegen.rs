//! Compiled tile kernels against the reference interpreter.
//!
//! Differential property tests: random convolution layers (kernel 1–11, stride 1–4,
//! asymmetric padding, dilation, groups incl. depthwise, odd sizes) followed by random
//! epilogues (batch norm, relu / clip / leaky relu, max pool with and without padding or
//! ceil mode), Winograd-eligible 3×3 layers, and random depthwise layers (kernel 1–7,
//! stride 1–4, dilation 1–3 per axis, asymmetric padding, input sizes from "just fits the
//! window" up, residual adds), random 3×3 stride-1/2 depthwise layers (the host AVX2+FMA
//! kernel's shapes: widths 3–40, padding 0–2 per side, residual adds, relu6; asserted to
//! run on that kernel where the CPU has it), planned with forced halo grids (edge tiles
//! smaller than the rest, tiles narrower than one f32x4) and as FDSP tiles, every tile
//! compared with the oracle, `Program::run_tile` on the unfolded program — with kernels compiled for it, with kernels
//! that generate no code (the host fallbacks), and with generated depthwise kernels in
//! place of the host AVX2 one. Tolerance: relative L2 ≤ 1e-5 per tile (the compiled path
//! folds batch norm into the weights and sums in a blocked order with FMA: ~1e-7 measured);
//! a tile over it whose result cancels (tiny against the terms summed) is judged instead
//! against the exact tile in f64, relative to those terms' magnitudes (see [`ROUNDING`]).
//! Every tile is also sent through kernels compiled for q8 or q4 (alternating by seed): their
//! quantising epilogues and passes must give exactly the codes and ranges of
//! `wire::encode` applied to the exact tile (the same f32 operations), and its error within
//! 1e-3 (f32 lane sums against the host's f64).
//! CLIF snapshots of small kernels live in `snapshots/clif/`.

use std::collections::BTreeSet;
use std::path::Path;

use adcnn_compiler::check::check_text;
use adcnn_compiler::graph::LayerGraph;
use adcnn_compiler::lower::{Fold, lower};
use adcnn_compiler::plan::{Compression, Options, Region, Strategy, plan};
use adcnn_compiler::weights::{SplitMix64, Weights};
use adcnn_core::net::Source;
use adcnn_core::ops::{Op, Shape, WeightRole};
use adcnn_core::plan::{Mode, Segment};
use adcnn_core::tensor::crop;
use adcnn_kernels::gemm::{Isa, isa};
use adcnn_kernels::jit::{
    Act, DepthwiseSpec, EpilogueSpec, JitSession, MaxPoolSpec, depthwise_clif, epilogue_clif,
    max_pool_clif,
};
use adcnn_kernels::wire::{self, QuantError, Quantised};
use adcnn_kernels::{
    CompileOptions, CompiledKernels, CompiledProgram, KernelKind, KernelStats, Profile, rel_l2,
};
use ndarray::{Array3, s};
use proptest::prelude::{Just, ProptestConfig, TestCaseError, any, prop_oneof, proptest};
use proptest::strategy::Strategy as _;

const TOLERANCE: f64 = 1e-5;

/// A tile over [`TOLERANCE`] still matches when both it and the oracle's tile lie within
/// this of the exact (f64) tile, relative L2 to the magnitudes summed (`Σ|w|·|x|` through
/// the layers): cancellation makes f32 rounding large against a tiny result (seen: a
/// batch norm's mean cancelling a 36-tap sum to 1.3e-3, every other value of the tile
/// zeroed by relu: 2.3e-5 between the two, each ~1e-4 from the exact value, 1.3e-8 of
/// the magnitudes). Measured over the random tests: at most 1.4e-7 (compiled) and 9.3e-8
/// (oracle), about 2 units of f32 rounding; a wrong tap or edge is a whole term.
const ROUNDING: f64 = 1e-6;

const CLUSTER: &str = "
cluster:
  name: two
  coordinator: a
  nodes:
    - { name: a, address: \"10.0.0.1:1\", gflops: 40, mbps: 100, latency_ms: 1 }
    - { name: b, address: \"10.0.0.2:1\", gflops: 20, mbps: 100, latency_ms: 1 }
";

/// Plans `layers` on a `[c, h, w]` input with `opts`, then compares every tile.
fn differential(
    c: usize,
    h: usize,
    w: usize,
    layers: &str,
    opts: &Options,
    seed: u64,
) -> Result<(usize, KernelStats), String> {
    differential_ran(c, h, w, layers, opts, seed).map(|(tiles, stats, _)| (tiles, stats))
}

/// [`differential`], also returning the kinds of work the default compiled kernels ran
/// (the keys of their profile).
fn differential_ran(
    c: usize,
    h: usize,
    w: usize,
    layers: &str,
    opts: &Options,
    seed: u64,
) -> Result<(usize, KernelStats, BTreeSet<&'static str>), String> {
    let text = format!(
        "network:\n  name: t\n  input:\n    shape: [{c}, {h}, {w}]\n  weights: random(seed={seed})\n  layers:\n    - {layers}\n{CLUSTER}"
    );
    let checked = check_text(Path::new("t.yaml"), text.clone());
    let (Some((graph, weights)), Some(cluster)) = (&checked.network, &checked.cluster) else {
        return Err(format!("does not check: {text}\n{:?}", checked.diagnostics));
    };
    let Ok(p) = plan(graph, cluster, opts) else {
        return Ok((0, KernelStats::default(), BTreeSet::new()));
    };
    // The kernels compile from the plan as `adcnnc build` writes it (batch norms folded);
    // the oracle runs the network's own layers.
    let folded = lower(graph, weights, &p, Fold::BatchNorms).map_err(|e| e.to_string())?;
    let oracle = lower(graph, weights, &p, Fold::Nothing).map_err(|e| e.to_string())?;
    let parts: Vec<_> = p.segments.iter().zip(&folded.segments).collect();
    let kernels = CompiledKernels::compile(&parts, |_| true, &CompileOptions::default())
        .map_err(|e| e.to_string())?;
    // Kernels with no generated code: every shape takes the host fallbacks (host depthwise
    // loop, host epilogue, reference pools), as a tile shape that was not compiled does.
    // They also compute inverted-residual blocks one output row per band.
    let host_only = CompileOptions {
        generate: false,
        band_bytes: 0,
        ..CompileOptions::default()
    };
    let fallback =
        CompiledKernels::compile(&parts, |_| true, &host_only).map_err(|e| e.to_string())?;
    let how = [Compression::Q8, Compression::Q4][(seed % 2) as usize];
    let quantising = CompileOptions {
        wire: how,
        ..CompileOptions::default()
    };
    let wired =
        CompiledKernels::compile(&parts, |_| true, &quantising).map_err(|e| e.to_string())?;
    // Without the host AVX2 kernels: generated depthwise kernels also for the shapes the
    // host depthwise kernel takes, im2col + GEMM for the direct kernel's.
    let generated_only = CompileOptions {
        host_depthwise: false,
        direct: false,
        ..CompileOptions::default()
    };
    let generated =
        CompiledKernels::compile(&parts, |_| true, &generated_only).map_err(|e| e.to_string())?;
    // Inverted-residual blocks planar inside, as the layers one by one: the interleaved
    // path must give their bits.
    let planar_only = CompileOptions {
        interleave: false,
        ..CompileOptions::default()
    };
    let planar =
        CompiledKernels::compile(&parts, |_| true, &planar_only).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(seed ^ 7);
    let s0 = graph.input.shape;
    let mut current = Array3::from_shape_simple_fn((s0.c, s0.h, s0.w), || rng.uniform(-2.0, 2.0));
    let mut tiles = 0;
    let mut profile = Profile::new();
    for ((seg, prog), truth) in parts.iter().copied().zip(&oracle.segments) {
        let o = graph.layer(seg.output()).shape;
        let mut out = Array3::<f32>::zeros((o.c, o.h, o.w));
        // The segment on the whole map in f64, computed when a halo tile needs it.
        let mut whole = None;
        let full = Region {
            r0: 0,
            r1: current.dim().1,
            c0: 0,
            c1: current.dim().2,
        };
        for tile in &seg.tiles {
            let x = crop(&current, &full, &tile.input);
            let want = truth.run_tile(seg, tile, &x).map_err(|e| e.to_string())?;
            let mut outputs = Vec::new();
            for (how, k) in [
                ("compiled", &kernels),
                ("fallback", &fallback),
                ("generated", &generated),
                ("planar", &planar),
            ] {
                let prof = (how == "compiled").then_some(&mut profile);
                let got = k
                    .run_tile_profiled(prog, seg, tile, &x, prof)
                    .map_err(|e| e.to_string())?;
                if got.dim() != want.dim() {
                    return Err(format!(
                        "{layers} ({how}): tile {tile:?} shape {:?} vs {:?}",
                        got.dim(),
                        want.dim()
                    ));
                }
                let err = rel_l2(
                    got.as_standard_layout().as_slice().unwrap_or(&[]),
                    want.as_standard_layout().as_slice().unwrap_or(&[]),
                );
                if err > TOLERANCE {
                    // Cancellation (a batch norm's mean against the convolution's sum, a relu
                    // leaving one small value in a tile) can make the f32 rounding of either
                    // side large against a tiny result: judged against the exact (f64) tile,
                    // relative to the magnitudes summed ([`ROUNDING`]). The oracle must pass
                    // the same test (which also checks the f64 evaluation).
                    let exact = match seg.mode {
                        Mode::Halo => whole
                            .get_or_insert_with(|| exact_f64(graph, weights, seg, &current))
                            .as_ref()
                            .map(|(v, m)| {
                                let r = tile.output;
                                let cut = |a: &Array3<f64>| {
                                    a.slice(s![.., r.r0..r.r1, r.c0..r.c1]).to_owned()
                                };
                                (cut(v), cut(m))
                            }),
                        Mode::Fdsp => exact_f64(graph, weights, seg, &x),
                    };
                    let judged = exact.filter(|(v, _)| v.dim() == want.dim()).map(|(v, m)| {
                        let dist = |a: &Array3<f32>| {
                            a.iter()
                                .zip(&v)
                                .map(|(&a, &e)| (f64::from(a) - e).powi(2))
                                .sum::<f64>()
                                .sqrt()
                        };
                        let scale = m.iter().map(|m| m * m).sum::<f64>().sqrt();
                        (dist(&got), dist(&want), scale)
                    });
                    match judged {
                        Some((e_got, e_want, scale))
                            if e_got <= ROUNDING * scale && e_want <= ROUNDING * scale => {}
                        _ => {
                            let exact = judged.map_or("not computed".into(), |(g, o, m)| {
                                format!("{:.2e} and {:.2e}", g / m, o / m)
                            });
                            return Err(format!(
                                "{layers} ({c}×{h}×{w}) {:?} ({how}): tile {},{} relative L2 \
                                 {err:.2e} (to the exact tile, relative to the magnitudes \
                                 summed, {how} and oracle: {exact})",
                                seg.mode, tile.row, tile.col
                            ));
                        }
                    }
                }
                outputs.push(got);
            }
            let bits = |a: &Array3<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            if bits(&outputs[0]) != bits(&outputs[3]) {
                return Err(format!(
                    "{layers} ({c}×{h}×{w}) {:?}: tile {},{} differs from the planar blocks' bits",
                    seg.mode, tile.row, tile.col
                ));
            }
            let exact = kernels
                .run_tile(prog, seg, tile, &x)
                .map_err(|e| e.to_string())?;
            let (sent, e) = wired
                .run_tile_wire(prog, seg, tile, &x, how)
                .map_err(|e| e.to_string())?;
            let (expected, e_host) = wire::encode(exact, how);
            if sent != expected || !close(e, e_host) {
                return Err(format!(
                    "{layers} ({c}×{h}×{w}) {:?} {how:?}: tile {},{} sent {sent:?}, expected \
                     {expected:?} (errors {e:?} vs {e_host:?})",
                    seg.mode, tile.row, tile.col
                ));
            }
            out.slice_mut(s![
                ..,
                tile.output.r0..tile.output.r1,
                tile.output.c0..tile.output.c1
            ])
            .assign(&want);
            tiles += 1;
        }
        current = out;
    }
    let stats = KernelStats {
        quantising_epilogues: wired.stats.quantising_epilogues,
        quantisers: wired.stats.quantisers,
        ..kernels.stats
    };
    Ok((tiles, stats, profile.into_keys().collect()))
}

/// Segment `seg` of `graph` run in f64 on `x`, its input (the whole map for halo tiles, the
/// tile's image for FDSP ones): the exact output, and per value the magnitude of what was
/// summed on the way to it (`Σ|w|·|x| + |b|` through every layer; zero where an activation
/// clamps well clear of its threshold, where both sides give the clamp's constant), to which
/// f32 rounding error is proportional. `None` for an operator this does not evaluate.
fn exact_f64(
    graph: &LayerGraph,
    weights: &Weights,
    seg: &Segment,
    x: &Array3<f32>,
) -> Option<(Array3<f64>, Array3<f64>)> {
    type Pair = (Array3<f64>, Array3<f64>);
    let input: Pair = (x.mapv(f64::from), x.mapv(|v| f64::from(v).abs()));
    let mut values: Vec<Pair> = Vec::new();
    for id in seg.layers() {
        let layer = graph.layer(id);
        let args: Vec<&Pair> = layer
            .inputs
            .iter()
            .map(|src| match src {
                Source::Layer(j) if j.0 >= seg.first.0 => &values[(j.0 - seg.first.0) as usize],
                _ => &input,
            })
            .collect();
        let (v, m) = *args.first()?;
        let shape = layer
            .op
            .output_shape(
                &args
                    .iter()
                    .map(|(v, _)| {
                        let (c, h, w) = v.dim();
                        Shape::new(c, h, w)
                    })
                    .collect::<Vec<_>>(),
            )
            .ok()?;
        let vector = |role| {
            let t = weights.get(&layer.name, role)?;
            Some(t.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>())
        };
        // An activation: `f`, and whether it clamps `x` to a constant.
        let act = |f: &dyn Fn(f64) -> f64, clamped: &dyn Fn(f64, f64) -> bool| -> Pair {
            (
                v.mapv(f),
                ndarray::Zip::from(v)
                    .and(m)
                    .map_collect(|&x, &m| if clamped(x, 1e-3 * m) { 0.0 } else { m }),
            )
        };
        let out = match &layer.op {
            Op::Conv2d(cv) => {
                let wt = vector(WeightRole::Weight)?;
                let b = if cv.bias {
                    vector(WeightRole::Bias)?
                } else {
                    vec![0.0; shape.c]
                };
                let (cin, h, w) = v.dim();
                let (cg, og) = (cin / cv.groups, shape.c / cv.groups);
                let (kh, kw) = (cv.kernel.h, cv.kernel.w);
                let mut val = Array3::<f64>::zeros((shape.c, shape.h, shape.w));
                let mut mag = val.clone();
                for ((o, oy, ox), out) in val.indexed_iter_mut() {
                    let (mut acc, mut sum) = (b[o], b[o].abs());
                    for i in 0..cg {
                        let ch = o / og * cg + i;
                        for ky in 0..kh {
                            let iy = (oy * cv.stride.h + ky * cv.dilation.h)
                                .checked_sub(cv.padding.top)
                                .filter(|&y| y < h);
                            for kx in 0..kw {
                                let ix = (ox * cv.stride.w + kx * cv.dilation.w)
                                    .checked_sub(cv.padding.left)
                                    .filter(|&x| x < w);
                                if let (Some(iy), Some(ix)) = (iy, ix) {
                                    let k = wt[((o * cg + i) * kh + ky) * kw + kx];
                                    acc += k * v[[ch, iy, ix]];
                                    sum += k.abs() * m[[ch, iy, ix]];
                                }
                            }
                        }
                    }
                    *out = acc;
                    mag[[o, oy, ox]] = sum;
                }
                (val, mag)
            }
            Op::BatchNorm { eps } => {
                let (g, b) = (vector(WeightRole::Weight)?, vector(WeightRole::Bias)?);
                let (mean, var) = (
                    vector(WeightRole::RunningMean)?,
                    vector(WeightRole::RunningVar)?,
                );
                let scale = |c: usize| g[c] / (var[c] + f64::from(*eps)).sqrt();
                let mut val = v.clone();
                let mut mag = m.clone();
                for ((c, y, x), out) in val.indexed_iter_mut() {
                    *out = (v[[c, y, x]] - mean[c]) * scale(c) + b[c];
                    mag[[c, y, x]] = (m[[c, y, x]] + mean[c].abs()) * scale(c).abs() + b[c].abs();
                }
                (val, mag)
            }
            Op::Relu => act(&|x| x.max(0.0), &|x, margin| x < -margin),
            Op::Clip { min, max } => {
                let (lo, hi) = (f64::from(*min), f64::from(*max));
                act(&|x| x.clamp(lo, hi), &|x, margin| {
                    x < lo - margin || x > hi + margin
                })
            }
            Op::LeakyRelu { slope } => {
                let a = f64::from(*slope);
                act(&|x| if x < 0.0 { a * x } else { x }, &|_, _| false)
            }
            Op::Add => {
                let mut val = v.clone();
                let mut mag = m.clone();
                for (v2, m2) in &args[1..] {
                    val += v2;
                    mag += m2;
                }
                (val, mag)
            }
            Op::MaxPool(p) => {
                let (_, h, w) = v.dim();
                let mut val = Array3::<f64>::zeros((shape.c, shape.h, shape.w));
                let mut mag = val.clone();
                for ((c, oy, ox), out) in val.indexed_iter_mut() {
                    let (mut best, mut worst) = (f64::NEG_INFINITY, 0.0f64);
                    for ky in 0..p.kernel.h {
                        let iy = (oy * p.stride.h + ky)
                            .checked_sub(p.padding.top)
                            .filter(|&y| y < h);
                        for kx in 0..p.kernel.w {
                            let ix = (ox * p.stride.w + kx)
                                .checked_sub(p.padding.left)
                                .filter(|&x| x < w);
                            if let (Some(iy), Some(ix)) = (iy, ix) {
                                best = best.max(v[[c, iy, ix]]);
                                worst = worst.max(m[[c, iy, ix]]);
                            }
                        }
                    }
                    *out = best;
                    mag[[c, oy, ox]] = worst;
                }
                (val, mag)
            }
            _ => return None,
        };
        values.push(out);
    }
    values.pop()
}

/// Quantisation errors equal up to the order of f32 sums.
fn close(a: QuantError, b: QuantError) -> bool {
    let near = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(y.abs()) + 1e-30;
    near(a.err, b.err) && near(a.sq, b.sq)
}

fn conv_layer() -> impl proptest::strategy::Strategy<Value = (usize, usize, usize, String)> {
    (
        1usize..=11,
        1usize..=11,
        1usize..=4,
        1usize..=4,
        (0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3),
        1usize..=3,
        prop_oneof![Just(1usize), Just(2), Just(0)], // 0: depthwise
        1usize..=3,
        1usize..=3,
        (0usize..7, 0usize..4, any::<bool>(), any::<bool>()),
    )
        .prop_map(|(kh, kw, sh, sw, (pt, pl, pb, pr), d, g, cin_m, cout_m, (pool, act, bn, bias))| {
            let g_eff = if g == 0 { 2 * cin_m } else { g };
            let cin = g_eff * if g == 0 { 1 } else { cin_m };
            let cout = if g == 0 { cin } else { g_eff * cout_m };
            let d = if kh.max(kw) > 5 { 1 } else { d };
            let h = (kh - 1) * d + 1 + 9 + 2 * sh; // the dilated kernel fits; odd-ish sizes
            let w = (kw - 1) * d + 1 + 7 + 3 * sw;
            let mut l = format!(
                "c: conv({cout}, k=[{kh}, {kw}], s=[{sh}, {sw}], p=[{pt}, {pl}, {pb}, {pr}], d={d}, g={g_eff}, bias={bias})"
            );
            if bn {
                l.push_str(" | bn");
            }
            l.push_str(["", " | relu", " | clip(-0.5, 0.5)", " | leaky_relu(0.1)"][act]);
            l.push_str(
                [
                    "",
                    " | maxpool(2)",
                    " | maxpool(3, s=2)",
                    " | maxpool(2, s=1)",
                    // Padded (−∞ border copied in) and ceil-mode pools.
                    " | maxpool(3, s=2, p=1)",
                    " | maxpool(2, s=2, p=1, ceil=true)",
                    " | maxpool(3, s=2, ceil=true)",
                ][pool],
            );
            (cin, h, w, l)
        })
}

/// A depthwise convolution (channel multiplier 1) on an input of random size, with batch
/// norm, an activation and, when its output keeps the input's shape, a residual add of a
/// 1×1 convolution's output.
/// What follows a random conv: batch norm, the residual add of its input layer
/// `a`, and activation `act` (none, relu, relu6, clip, leaky relu).
fn layer_tail(bn: bool, residual: bool, act: usize) -> String {
    let mut l = String::new();
    if bn {
        l.push_str(" | bn");
    }
    if residual {
        l.push_str(" | add(a)");
    }
    l.push_str(
        [
            "",
            " | relu",
            " | relu6",
            " | clip(-0.5, 0.5)",
            " | leaky_relu(0.1)",
        ][act],
    );
    l
}

fn depthwise_layer() -> impl proptest::strategy::Strategy<Value = (usize, usize, usize, String)> {
    (
        (1usize..=7, 1usize..=7),
        (1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3),
        (0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3),
        (0usize..=12, 0usize..=12),
        // At least four channels: a tile can be a single output pixel, and with one channel
        // its relative L2 is that of one value, which random signed weights can cancel to
        // near zero (seen: -0.0039777 vs -0.0039778 from inputs near 1.6, one ulp of the
        // terms apart). Four such values all cancelling is rare enough.
        4usize..=8,
        (0usize..5, any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|((kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), (eh, ew), c, (act, bn, bias, res))| {
            let (span_h, span_w) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
            // A residual needs the output shape of the input: stride 1, "same" padding.
            let same = res && (span_h - 1) % 2 == 0 && (span_w - 1) % 2 == 0;
            let (sh, sw) = if same { (1, 1) } else { (sh, sw) };
            // Pads below the dilated window and inputs at least as large as it: then every
            // window reads some input, and every tile has a non-empty input region. (A tile
            // whose windows all lie in the padding gets an empty input region that the
            // planner places past the map's edge and a reference result of the wrong
            // width — see the report; not a property of the kernels.)
            let (pt, pl, pb, pr) = if same {
                ((span_h - 1) / 2, (span_w - 1) / 2, (span_h - 1) / 2, (span_w - 1) / 2)
            } else {
                (pt.min(span_h - 1), pl.min(span_w - 1), pb.min(span_h - 1), pr.min(span_w - 1))
            };
            // Odd sizes from "just the window" up.
            let (h, w) = (span_h + eh, span_w + ew);
            // A 1×1 conv first (the residual's source).
            let mut l = format!(
                "a: conv({c}, k=1)\n    - b: dwconv(k=[{kh}, {kw}], s=[{sh}, {sw}], p=[{pt}, {pl}, {pb}, {pr}], d=[{dh}, {dw}], bias={bias})"
            );
            l.push_str(&layer_tail(bn, same, act));
            (c, h, w, l)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_depthwise_layers_match_the_reference((c, h, w, layers) in depthwise_layer(), seed in 0u64..1000) {
        for opts in [
            Options { strategy: Strategy::Halo, grid: Some((2, 3)), ..Options::default() },
            Options { strategy: Strategy::Halo, grid: Some((3, 4)), ..Options::default() },
            Options { strategy: Strategy::Single, ..Options::default() },
            Options { strategy: Strategy::Fdsp, grid: Some((2, 2)), allow_approx: true, ..Options::default() },
        ] {
            match differential(c, h, w, &layers, &opts, seed) {
                Err(e) => return Err(TestCaseError::fail(e)),
                Ok((0, _)) if opts.strategy == Strategy::Single => {
                    return Err(TestCaseError::fail(format!("{layers}: no tiles compared")));
                }
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn random_conv_layers_match_the_reference((cin, h, w, layers) in conv_layer(), seed in 0u64..1000) {
        for opts in [
            Options { strategy: Strategy::Halo, grid: Some((2, 3)), ..Options::default() },
            Options { strategy: Strategy::Single, ..Options::default() },
            Options { strategy: Strategy::Fdsp, grid: Some((2, 2)), allow_approx: true, ..Options::default() },
        ] {
            match differential(cin, h, w, &layers, &opts, seed) {
                Err(e) => return Err(TestCaseError::fail(e)),
                // Every layer stack here is plannable as one whole-map segment.
                Ok((0, _)) if opts.strategy == Strategy::Single => {
                    return Err(TestCaseError::fail(format!("{layers}: no tiles compared")));
                }
                Ok(_) => {}
            }
        }
    }
}

/// A depthwise 3×3 convolution with stride 1 or 2 (what the host AVX2+FMA kernel takes):
/// inputs from 3 to 40 wide and high (rows under 8 wide, whose one vector spills into the
/// next row and, in the last plane, is stored through a copy; rows whose last vector
/// overlaps the one before), asymmetric padding 0–2, 4–12 channels, batch norm, every
/// activation incl. relu6, and a residual add (stride 1, padding 1).
fn host_depthwise_layer() -> impl proptest::strategy::Strategy<Value = (usize, usize, usize, String)>
{
    (
        1usize..=2,
        (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2),
        (3usize..=40, 3usize..=40),
        4usize..=12,
        (0usize..5, any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|(st, (pt, pl, pb, pr), (h, w), c, (act, bn, bias, res))| {
            let same = res && st == 1;
            let [pt, pl, pb, pr] = if same { [1; 4] } else { [pt, pl, pb, pr] };
            let mut l = format!(
                "a: conv({c}, k=1)\n    - b: dwconv(k=3, s={st}, p=[{pt}, {pl}, {pb}, {pr}], bias={bias})"
            );
            l.push_str(&layer_tail(bn, same, act));
            (c, h, w, l)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_host_depthwise_layers_match_the_reference((c, h, w, layers) in host_depthwise_layer(), seed in 0u64..1000) {
        // The whole map ran on the host kernel.
        differential_on_host_kernels(c, h, w, &layers, seed, |stats, ran| {
            stats.depthwise_host == 1 && stats.depthwise == 0 && ran.contains(HOST_DEPTHWISE)
        })?;
    }
}

/// [`differential_ran`] on a whole map, two halo grids and FDSP tiles; on the whole map,
/// where the CPU has AVX2+FMA, `ran_on_host` must also hold for the kernels' stats and
/// the kinds of work they ran.
fn differential_on_host_kernels(
    c: usize,
    h: usize,
    w: usize,
    layers: &str,
    seed: u64,
    ran_on_host: impl Fn(&KernelStats, &BTreeSet<&str>) -> bool,
) -> Result<(), TestCaseError> {
    for opts in [
        Options {
            strategy: Strategy::Single,
            ..Options::default()
        },
        Options {
            strategy: Strategy::Halo,
            grid: Some((2, 3)),
            ..Options::default()
        },
        Options {
            strategy: Strategy::Halo,
            grid: Some((3, 2)),
            ..Options::default()
        },
        Options {
            strategy: Strategy::Fdsp,
            grid: Some((2, 2)),
            allow_approx: true,
            ..Options::default()
        },
    ] {
        let single = opts.strategy == Strategy::Single;
        match differential_ran(c, h, w, layers, &opts, seed) {
            Err(e) => return Err(TestCaseError::fail(e)),
            Ok((0, _, _)) if single => {
                return Err(TestCaseError::fail(format!("{layers}: no tiles compared")));
            }
            Ok((_, stats, ran))
                if single && isa() == Isa::Avx2Fma && !ran_on_host(&stats, &ran) =>
            {
                return Err(TestCaseError::fail(format!("{layers}: {stats:?} {ran:?}")));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// A stride-1 or stride-2 convolution with 1–4 input channels and 8–32 output channels (the
/// direct kernel's shapes: network stems; 1×1 kernels at stride 2 only), with or without a
/// fused 2×2/2 max pool after it (YOLOv2-tiny's first layer), kernel 1–7 per axis, asymmetric padding below the
/// kernel, inputs from the kernel's size to 40 (output rows under 8 wide take the GEMM),
/// batch norm and every activation incl. relu6.
/// Also returns the output width.
fn direct_layer()
-> impl proptest::strategy::Strategy<Value = ((usize, usize, usize, String), usize)> {
    (
        (1usize..=4, 1usize..=4, 1usize..=2),
        (1usize..=7, 1usize..=7),
        (0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3),
        (0usize..=33, 0usize..=33),
        (0usize..5, any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |((cin, co8, st), (kh, kw), (pt, pl, pb, pr), (eh, ew), (act, bn, bias, pool))| {
                let st = if (kh, kw) == (1, 1) { 2 } else { st };
                let (pt, pl, pb, pr) = (
                    pt.min(kh - 1),
                    pl.min(kw - 1),
                    pb.min(kh - 1),
                    pr.min(kw - 1),
                );
                let mut l = format!(
                    "c: conv({}, k=[{kh}, {kw}], s={st}, p=[{pt}, {pl}, {pb}, {pr}], bias={bias})",
                    8 * co8
                );
                l.push_str(&layer_tail(bn, false, act));
                let (oh, ow) = ((eh + pt + pb) / st + 1, (ew + pl + pr) / st + 1);
                if pool && oh >= 2 && ow >= 2 {
                    l.push_str(" | maxpool(2)");
                }
                ((cin, kh + eh, kw + ew, l), ow)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_direct_conv_layers_match_the_reference(((cin, h, w, layers), ow) in direct_layer(), seed in 0u64..1000) {
        for opts in [
            Options { strategy: Strategy::Single, ..Options::default() },
            Options { strategy: Strategy::Halo, grid: Some((2, 3)), ..Options::default() },
            Options { strategy: Strategy::Fdsp, grid: Some((2, 2)), allow_approx: true, ..Options::default() },
        ] {
            match differential_ran(cin, h, w, &layers, &opts, seed) {
                Err(e) => return Err(TestCaseError::fail(e)),
                Ok((0, _, _)) if opts.strategy == Strategy::Single => {
                    return Err(TestCaseError::fail(format!("{layers}: no tiles compared")));
                }
                // Prepared for the direct kernel where the CPU has AVX2+FMA, and run on it
                // when the output rows are at least 8 wide.
                Ok((_, stats, ran))
                    if opts.strategy == Strategy::Single
                        && isa() == Isa::Avx2Fma
                        && (stats.direct != 1
                            || ran.contains(DIRECT) != (ow >= 8)) =>
                {
                    return Err(TestCaseError::fail(format!("{layers}: {stats:?} {ran:?}")));
                }
                Ok(_) => {}
            }
        }
    }
}

/// An inverted-residual block after a conv `a`: a 1×1 expansion by 1–6 (or, expansion
/// 0, none: then `a` is a 3×3 conv, so the depthwise conv starts the block), a 3×3
/// depthwise conv with stride 1 or 2 and padding 0–2 per side, a 1×1 projection, each with
/// or without bias, batch norm and any activation; where the shapes allow (stride 1,
/// padding 1, as many output channels as `a`), the residual add of `a`. Inputs 3–30 high
/// and wide, 2–12 channels.
fn inverted_residual_block()
-> impl proptest::strategy::Strategy<Value = ((usize, usize, usize, String), Option<usize>)> {
    (
        (2usize..=12, 0usize..=6, 1usize..=12),
        1usize..=2,
        (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2),
        (3usize..=30, 3usize..=30),
        (0usize..5, 0usize..5, 0usize..5),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|((c, t, cout), st, (pt, pl, pb, pr), (h, w), (ae, ad, ap), (bn, bias, res))| {
            let same = res && st == 1;
            let [pt, pl, pb, pr] = if same { [1; 4] } else { [pt, pl, pb, pr] };
            let cout = if same { c } else { cout };
            let tail = |act| layer_tail(bn, false, act);
            let first = match t {
                0 => format!("a: conv({c}, k=3, p=1)"),
                _ => format!("a: conv({c}, k=1)\n    - e: conv({}, k=1, bias={bias}){}", c * t, tail(ae)),
            };
            let mut l = format!(
                "{first}\n    - d: dwconv(k=3, s={st}, p=[{pt}, {pl}, {pb}, {pr}], bias={bias}){}\n    - p: conv({cout}, k=1, bias={bias})",
                tail(ad),
            );
            l.push_str(&layer_tail(bn, same, ap));
            ((c, h, w, l), (t > 0).then_some(c * t))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_inverted_residual_blocks_match_the_reference(((c, h, w, layers), hidden) in inverted_residual_block(), seed in 0u64..1000) {
        // The whole map ran as a block: channel-interleaved where it has an expansion and
        // whole groups of 8 hidden channels.
        let interleaved = hidden.is_some_and(|n| n % 8 == 0);
        differential_on_host_kernels(c, h, w, &layers, seed, |stats, ran| {
            let kind = if interleaved { BLOCK_INTERLEAVED } else { BLOCK };
            stats.blocks == 1
                && stats.interleaved_blocks == usize::from(interleaved)
                && ran.contains(kind)
        })?;
    }
}

/// The profile's names for the host kernels' work.
const BLOCK: &str = KernelKind::Block.name();
const BLOCK_INTERLEAVED: &str = KernelKind::BlockInterleaved.name();
const HOST_DEPTHWISE: &str = KernelKind::DepthwiseHost.name();
const DIRECT: &str = KernelKind::Direct.name();

/// A MobileNetV2-like stem (3×3/2 on 3 channels, batch norm, relu6) on a whole map and on
/// halo tiles: the direct kernel's output is compared, and it ran (wide enough tiles).
#[test]
fn stems_run_the_direct_kernel_and_match_the_reference() {
    let layers = "c: conv(32, k=3, s=2, p=1, bias=false) | bn | relu6
    - d: dwconv(k=3, p=1, bias=false) | bn | relu6";
    for grid in [(1, 1), (2, 2), (1, 3)] {
        let opts = Options {
            strategy: Strategy::Halo,
            grid: Some(grid),
            ..Options::default()
        };
        let (tiles, stats, ran) = differential_ran(3, 37, 53, layers, &opts, 11).expect("matches");
        assert!(tiles >= grid.0 * grid.1, "{tiles} tiles");
        if isa() == Isa::Avx2Fma {
            assert_eq!(stats.direct, 1, "{grid:?}: {stats:?}");
            assert!(stats.depthwise_host >= 1, "{grid:?}: {stats:?}");
            assert!(
                ran.contains(DIRECT) && ran.contains(HOST_DEPTHWISE),
                "{ran:?}"
            );
        }
    }
}

/// Layers the compiled kernels run as Winograd F(4×4, 3×3): 3×3 stride-1 convolutions with
/// ≥ 16 channels in and out and outputs of ≥ 8 tiles of 4×4 (smaller ones take the GEMM path,
/// which these cases then cover at the edge tiles).
fn winograd_layer() -> impl proptest::strategy::Strategy<Value = (usize, usize, usize, String)> {
    (
        16usize..=40,
        16usize..=40,
        // ≥ 8 output tiles even when a following pool trims the last column: 2 × 4.
        (10usize..=37, 19usize..=37),
        (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2),
        (0usize..4, any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(cin, cout, (h, w), (pt, pl, pb, pr), (act, bn, bias, pool))| {
                let mut l =
                    format!("c: conv({cout}, k=3, p=[{pt}, {pl}, {pb}, {pr}], bias={bias})");
                if bn {
                    l.push_str(" | bn");
                }
                l.push_str(["", " | relu", " | clip(-0.5, 0.5)", " | leaky_relu(0.1)"][act]);
                if pool {
                    l.push_str(" | maxpool(2)");
                }
                (cin, h, w, l)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_winograd_layers_match_the_reference((cin, h, w, layers) in winograd_layer(), seed in 0u64..1000) {
        for opts in [
            Options { strategy: Strategy::Single, ..Options::default() },
            Options { strategy: Strategy::Halo, grid: Some((2, 3)), ..Options::default() },
            Options { strategy: Strategy::Fdsp, grid: Some((2, 2)), allow_approx: true, ..Options::default() },
        ] {
            match differential(cin, h, w, &layers, &opts, seed) {
                Err(e) => return Err(TestCaseError::fail(e)),
                // Whole maps are large enough for Winograd.
                Ok((_, stats)) if opts.strategy == Strategy::Single && stats.winograd != 1 => {
                    return Err(TestCaseError::fail(format!("{layers}: {stats:?}")));
                }
                Ok(_) => {}
            }
        }
    }
}

/// A residual block wide enough for Winograd (16 channels, 40×36): the residual add and
/// activation fused after the Winograd products, on whole maps and halo tiles.
#[test]
fn winograd_residual_blocks_match_the_reference() {
    let layers = "b: conv(16, k=3, p=1, bias=false) | bn | relu
    - c: conv(16, k=3, p=1, bias=false) | bn
    - d: add(b) | relu
    - e: conv(24, k=3, p=1) | leaky_relu(0.1)";
    for grid in [(1, 1), (2, 2), (1, 3)] {
        let opts = Options {
            strategy: Strategy::Halo,
            grid: Some(grid),
            ..Options::default()
        };
        let (tiles, stats) = differential(16, 40, 36, layers, &opts, 5).expect("matches");
        assert!(tiles >= grid.0 * grid.1, "{tiles} tiles");
        assert_eq!(stats.winograd, 3, "{grid:?}: {stats:?}");
        // Both batch norms, both relus, the residual add and the leaky relu.
        assert_eq!(stats.fused_layers, 6, "{grid:?}: {stats:?}");
    }
}

#[test]
fn residual_blocks_and_edge_tiles_match_the_reference() {
    let layers = "b: conv(8, k=3, p=1, bias=false) | bn | relu
    - c: conv(8, k=3, p=1, bias=false) | bn
    - d: add(b) | relu
    - e: conv(8, k=1) | clip(0, 6) | maxpool(2)";
    for grid in [(1, 1), (2, 3), (3, 2)] {
        let opts = Options {
            strategy: Strategy::Halo,
            grid: Some(grid),
            ..Options::default()
        };
        let (tiles, stats) = differential(8, 23, 17, layers, &opts, 3).expect("matches");
        // Batch norms, relus, the residual add and the clip (the pool runs on its own).
        assert_eq!(stats.fused_layers, 6, "{grid:?}: {stats:?}");
        assert!(tiles >= grid.0 * grid.1, "{tiles} tiles");
    }
}

/// The quantising epilogue alone, against the host epilogue + `wire::quantise`, over channel
/// sizes around its 16-value blocks (odd sizes: q4's last half byte), with and without bias,
/// residual and activation.
#[test]
fn quantising_epilogues_equal_the_host_quantiser() {
    let mut rng = SplitMix64::new(11);
    let mut session = JitSession::new().expect("jit");
    let mut cases = Vec::new();
    for how in [Compression::Q8, Compression::Q4] {
        for pixels in [1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 47, 64, 100] {
            for (bias, act, residual) in [
                (true, Act::Relu, false),
                (true, Act::Clip { min: 0.0, max: 0.5 }, true),
                (true, Act::Leaky { slope: 0.1 }, false),
                (false, Act::None, false),
            ] {
                let spec = EpilogueSpec {
                    channels: 3,
                    pixels,
                    bias,
                    act,
                    residual,
                    wire: how,
                };
                cases.push((session.epilogue(&spec).expect("compiles"), spec));
            }
        }
    }
    let code = session.finish().expect("finishes");
    for (h, spec) in cases {
        let (c, n) = (spec.channels, spec.pixels);
        let mut y: Vec<f32> = (0..c * n).map(|_| rng.uniform(-2.0, 2.0)).collect();
        // A constant channel: step 0, every code 0.
        y[n..2 * n].fill(0.25);
        let bias: Vec<f32> = (0..c).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let res: Vec<f32> = (0..c * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut want = y.clone();
        for (ch, row) in want.chunks_mut(n).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                let mut t = *v;
                if spec.bias {
                    t += bias[ch];
                }
                if spec.residual {
                    t += res[ch * n + i];
                }
                *v = spec.act.apply(t);
            }
        }
        let mut q = Quantised::zeroed(spec.wire, (c, 1, n));
        let e_host = wire::quantise(&want, c, n, spec.wire, &mut q.codes, &mut q.ranges);
        let mut codes = vec![0xAA; q.codes.len()];
        let mut stats = vec![[0.0; 4]; c];
        let r = spec.residual.then_some(&res[..]);
        code.run_quantising(h, &spec, &mut y, &bias, r, &mut codes, &mut stats);
        assert_eq!(y, want, "{spec:?}: epilogue values");
        assert_eq!(codes, q.codes, "{spec:?}: codes");
        let mut e = QuantError::default();
        for (ch, st) in stats.iter().enumerate() {
            assert_eq!([st[0], st[1]], q.ranges[ch], "{spec:?}: channel {ch} range");
            e.add(QuantError {
                err: f64::from(st[2]),
                sq: f64::from(st[3]),
            });
        }
        assert!(close(e, e_host), "{spec:?}: {e:?} vs {e_host:?}");
    }
}

/// q8/q4 tiles of networks whose segments end in a GEMM convolution (with residual, with
/// activations), a depthwise convolution and a max pool: the first quantise in the last
/// epilogue, the others in a quantising pass; all equal `wire::encode` of the exact tile.
#[test]
fn wire_quantisation_is_fused_into_the_last_epilogue() {
    let nets = [
        (
            "b: conv(8, k=3, p=1, bias=false) | bn | relu
    - c: conv(8, k=1, bias=false) | bn
    - d: add(b) | relu",
            true,
        ),
        ("b: conv(6, k=3, s=2, p=1) | leaky_relu(0.1)", true),
        ("b: conv(8, k=3, p=1, groups=8) | clip(0, 6)", false),
        ("b: conv(8, k=1) | relu | maxpool(3, s=2)", false),
    ];
    for (seed, (layers, fused)) in nets.into_iter().enumerate() {
        for grid in [(1, 1), (2, 3)] {
            for parity in 0..2 {
                let opts = Options {
                    strategy: Strategy::Halo,
                    grid: Some(grid),
                    ..Options::default()
                };
                let seed = 2 * seed as u64 + parity;
                let (tiles, stats) = differential(8, 19, 21, layers, &opts, seed).expect("matches");
                assert!(tiles >= grid.0 * grid.1, "{tiles} tiles");
                if fused {
                    assert!(stats.quantising_epilogues > 0, "{layers}: {stats:?}");
                } else {
                    assert_eq!(stats.quantising_epilogues, 0, "{layers}: {stats:?}");
                    assert!(stats.quantisers > 0, "{layers}: {stats:?}");
                }
            }
        }
    }
}

#[test]
fn clif_snapshots() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../../snapshots/clif");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::assert_snapshot!(
            "epilogue_4x6_relu",
            epilogue_clif(&EpilogueSpec {
                channels: 4,
                pixels: 6,
                bias: true,
                act: Act::Relu,
                residual: false,
                wire: Compression::None,
            })
        );
        insta::assert_snapshot!(
            "epilogue_2x8_residual_leaky",
            epilogue_clif(&EpilogueSpec {
                channels: 2,
                pixels: 8,
                bias: true,
                act: Act::Leaky { slope: 0.1 },
                residual: true,
                wire: Compression::None,
            })
        );
        insta::assert_snapshot!(
            "epilogue_2x19_relu_q4",
            epilogue_clif(&EpilogueSpec {
                channels: 2,
                pixels: 19,
                bias: true,
                act: Act::Relu,
                residual: false,
                wire: Compression::Q4,
            })
        );
        insta::assert_snapshot!(
            "depthwise_3x3_s2_p1_relu6",
            depthwise_clif(&DepthwiseSpec {
                channels: 2,
                h: 6,
                w: 9,
                kh: 3,
                kw: 3,
                sh: 2,
                sw: 2,
                dh: 1,
                dw: 1,
                pad: [1, 1, 0, 1],
                oh: 3,
                ow: 5,
                act: Act::Clip { min: 0.0, max: 6.0 },
                residual: false
            })
        );
        insta::assert_snapshot!(
            "max_pool_2x2_s2",
            max_pool_clif(&MaxPoolSpec {
                c: 3,
                h: 4,
                w: 6,
                kh: 2,
                kw: 2,
                sh: 2,
                sw: 2,
                oh: 2,
                ow: 3
            })
        );
    });
}

/// Tiles whose windows lie wholly in a layer's padding (padding wider than the kernel on a
/// tiny map, cut on a forced grid): their input region is empty, at the map's edge, and the
/// tile operator pads exactly the windows' extent. Once a panic (`crop` past the map) and a
/// "region was not computed" error; now equal to the whole network on both tile runners.
#[test]
fn tiles_wholly_in_the_padding_equal_the_whole_network() {
    use adcnn_compiler::reference::{run, run_plan};
    for layers in [
        "a: conv(2, k=1, p=[0, 0, 0, 3], g=2) | relu",
        "a: conv(2, k=1, p=[0, 3, 0, 0], g=2) | relu",
        "z: conv(2, k=1)\n    - a: conv(2, k=1, p=[3, 0, 0, 3], g=2) | relu",
        "z: conv(2, k=1)\n    - a: conv(3, k=1, p=[0, 3, 3, 0])\n    - b: conv(2, k=3, p=1)",
    ] {
        let text = format!(
            "network:\n  name: t\n  input:\n    shape: [2, 3, 1]\n  weights: random(seed=4)\n  layers:\n    - {layers}\n{CLUSTER}"
        );
        let checked = check_text(Path::new("t.yaml"), text);
        let (Some((graph, weights)), Some(cluster)) = (&checked.network, &checked.cluster) else {
            panic!("{layers}: {:?}", checked.diagnostics);
        };
        let mut rng = SplitMix64::new(9);
        let x = Array3::from_shape_simple_fn((2, 3, 1), || rng.uniform(-1.0, 1.0));
        let want = run(graph, weights, &x).expect("whole network");
        for grid in [(3, 4), (2, 3), (1, 4)] {
            let opts = Options {
                strategy: Strategy::Halo,
                grid: Some(grid),
                ..Options::default()
            };
            let p = plan(graph, cluster, &opts).expect("plans");
            let lowered = lower(graph, weights, &p, Fold::BatchNorms).expect("lowers");
            let parts: Vec<_> = p.segments.iter().zip(&lowered.segments).collect();
            let kernels = CompiledKernels::compile(&parts, |_| true, &CompileOptions::default())
                .expect("compiles");
            let tail = CompiledProgram::compile(&lowered.tail, &CompileOptions::default())
                .expect("the tail compiles");
            let reference = run_plan(graph, weights, &p, &x).expect("reference tiles");
            let compiled =
                adcnn_core::program::run_segments(&p, &lowered.segments, &x, |pr, sg, t, v| {
                    kernels.run_tile(pr, sg, t, v)
                })
                .and_then(|head| tail.run(&lowered.tail, &head))
                .expect("compiled tiles");
            for (how, got) in [("reference", reference), ("compiled", compiled)] {
                assert_eq!(got.dim(), want.dim(), "{layers} {grid:?} {how}");
                let err = rel_l2(
                    got.as_standard_layout().as_slice().unwrap_or(&[]),
                    want.as_standard_layout().as_slice().unwrap_or(&[]),
                );
                assert!(err <= TOLERANCE, "{layers} {grid:?} {how}: {err:.2e}");
            }
        }
    }
}
