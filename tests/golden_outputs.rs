//! Bit-identical outputs: every example network × every strategy on `edge4.yaml` (plus q8 and
//! q4 plans), run through `plan.bin` on the in-process cluster with the compiled kernels,
//! must give exactly the bits committed in `tests/golden/outputs/` — outputs recorded before
//! the runtime was restructured, so refactorings that should change nothing are checked to
//! change nothing.
//!
//! To re-record after a change that is *meant* to move bits (a new kernel, another summation
//! order), run with `ADCNN_BLESS_GOLDEN=1` and say why in the commit.

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Compression, Options, Strategy};
use adcnn_core::format::decode;
use adcnn_core::npy;
use adcnn_core::weights::SplitMix64;
use adcnn_runtime::local::LocalCluster;
use adcnn_tests::{EXAMPLE_NETS, example, relative_l2, repo_root};
use ndarray::{Array3, ArrayD};

/// Every strategy with exact tiles, FDSP, and compressed plans.
fn cases() -> Vec<(Strategy, Compression)> {
    let mut v: Vec<(Strategy, Compression)> = Strategy::ALL
        .iter()
        .map(|s| (*s, Compression::None))
        .collect();
    v.push((Strategy::Auto, Compression::Q8));
    v.push((Strategy::Fdsp, Compression::Q4));
    v
}

fn golden_path(net: &str, strategy: Strategy, how: Compression) -> std::path::PathBuf {
    repo_root().join(format!(
        "tests/golden/outputs/{net}.{}.{}.npy",
        strategy.name(),
        how.name()
    ))
}

#[test]
fn every_example_and_strategy_gives_the_recorded_bits() {
    let bless = std::env::var_os("ADCNN_BLESS_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (net, _) in EXAMPLE_NETS {
        for (strategy, how) in cases() {
            let opts = Options {
                strategy,
                compression: how,
                ..Options::default()
            };
            let built = build(&example(net), Some(&example("edge4")), &opts, 2)
                .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
            let lp = decode(&built.bytes).unwrap_or_else(|e| panic!("{net}: {e}"));
            let s = lp.header.network.input.shape;
            let mut rng = SplitMix64::new(11);
            let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.7, 1.7));
            let mut exec = LocalCluster::new(lp);
            assert_eq!(exec.compile_error(), None);
            let got = exec.run(&x).expect("runs").output.into_dyn();
            let path = golden_path(net, strategy, how);
            if bless {
                std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
                npy::write_f32_file(&path, &got).expect("writes");
                continue;
            }
            let want: ArrayD<f32> = npy::read_f32_file(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (record with ADCNN_BLESS_GOLDEN=1)", path.display())
            });
            let same = want.shape() == got.shape()
                && want
                    .iter()
                    .zip(got.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                let differ = want
                    .iter()
                    .zip(got.iter())
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                failures.push(format!(
                    "{net} {} {}: {differ} of {} values differ, relative L2 {:.2e}",
                    strategy.name(),
                    how.name(),
                    want.len(),
                    relative_l2(got.iter(), want.iter())
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
