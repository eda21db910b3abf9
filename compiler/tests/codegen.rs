//! Compiled tile kernels against the reference interpreter.
//!
//! Differential property tests: random convolution layers (kernel 1–11, stride 1–4,
//! asymmetric padding, dilation, groups incl. depthwise, odd sizes) followed by random
//! epilogues (batch norm, relu / clip / leaky relu, max pool with and without padding or
//! ceil mode), planned with a forced halo grid
//! (edge tiles smaller than the rest) and as FDSP tiles, every tile compared with
//! `reference::tile::run_tile`. Tolerance: relative L2 ≤ 1e-5 per tile (the compiled path
//! folds batch norm into the weights and sums in a blocked order with FMA: ~1e-7 measured).
//! CLIF snapshots of small kernels live in `snapshots/clif/`.

use std::path::Path;

use adcnn_compiler::check::check_text;
use adcnn_compiler::codegen::jit::{Act, EpilogueSpec, MaxPoolSpec, epilogue_clif, max_pool_clif};
use adcnn_compiler::codegen::{CompiledKernels, KernelStats, rel_l2};
use adcnn_compiler::plan::{Options, Region, Strategy, plan};
use adcnn_compiler::reference::tile::{crop, run_tile};
use adcnn_compiler::weights::SplitMix64;
use ndarray::{Array3, s};
use proptest::prelude::{Just, ProptestConfig, TestCaseError, any, prop_oneof, proptest};
use proptest::strategy::Strategy as _;

const TOLERANCE: f64 = 1e-5;

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
    let text = format!(
        "network:\n  name: t\n  input:\n    shape: [{c}, {h}, {w}]\n  weights: random(seed={seed})\n  layers:\n    - {layers}\n{CLUSTER}"
    );
    let checked = check_text(Path::new("t.yaml"), text.clone());
    let (Some((graph, weights)), Some(cluster)) = (&checked.network, &checked.cluster) else {
        return Err(format!("does not check: {text}\n{:?}", checked.diagnostics));
    };
    let Ok(p) = plan(graph, cluster, opts) else {
        return Ok((0, KernelStats::default()));
    };
    let kernels = CompiledKernels::compile(graph, weights, &p.segments, |_| true)
        .map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(seed ^ 7);
    let s0 = graph.input.shape;
    let mut current = Array3::from_shape_simple_fn((s0.c, s0.h, s0.w), || rng.uniform(-2.0, 2.0));
    let mut tiles = 0;
    for seg in &p.segments {
        let o = graph.layer(seg.output()).shape;
        let mut out = Array3::<f32>::zeros((o.c, o.h, o.w));
        let full = Region {
            r0: 0,
            r1: current.dim().1,
            c0: 0,
            c1: current.dim().2,
        };
        for tile in &seg.tiles {
            let x = crop(&current, &full, &tile.input);
            let want = run_tile(graph, weights, seg, tile, &x).map_err(|e| e.to_string())?;
            let got = kernels
                .run_tile(graph, weights, seg, tile, &x)
                .map_err(|e| e.to_string())?;
            if got.dim() != want.dim() {
                return Err(format!(
                    "{layers}: tile {tile:?} shape {:?} vs {:?}",
                    got.dim(),
                    want.dim()
                ));
            }
            let err = rel_l2(
                got.as_standard_layout().as_slice().unwrap_or(&[]),
                want.as_standard_layout().as_slice().unwrap_or(&[]),
            );
            if err > TOLERANCE {
                return Err(format!(
                    "{layers} ({c}×{h}×{w}) {:?}: tile {},{} relative L2 {err:.2e}",
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
    Ok((tiles, kernels.stats))
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

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
    - d: add(c, b) | relu
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
    }
}

#[test]
fn residual_blocks_and_edge_tiles_match_the_reference() {
    let layers = "b: conv(8, k=3, p=1, bias=false) | bn | relu
    - c: conv(8, k=3, p=1, bias=false) | bn
    - d: add(c, b) | relu
    - e: conv(8, k=1) | clip(0, 6) | maxpool(2)";
    for grid in [(1, 1), (2, 3), (3, 2)] {
        let opts = Options {
            strategy: Strategy::Halo,
            grid: Some(grid),
            ..Options::default()
        };
        let (tiles, _) = differential(8, 23, 17, layers, &opts, 3).expect("matches");
        assert!(tiles >= grid.0 * grid.1, "{tiles} tiles");
    }
}

#[test]
fn clif_snapshots() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../../snapshots/clif");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::assert_snapshot!(
            "epilogue_4x6_relu",
            epilogue_clif(&EpilogueSpec {
                channels: 4,
                pixels: 6,
                act: Act::Relu,
                residual: false
            })
        );
        insta::assert_snapshot!(
            "epilogue_2x8_residual_leaky",
            epilogue_clif(&EpilogueSpec {
                channels: 2,
                pixels: 8,
                act: Act::Leaky { slope: 0.1 },
                residual: true
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
