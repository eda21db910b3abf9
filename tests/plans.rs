//! Plans as reviewers see them: `adcnnc explain` text for every example network × strategy on
//! edge4 is snapshotted in `snapshots/plans/`, so a planner change shows up as a diff; plus the
//! partition figures measured in PyTorch that the geometry must reproduce.

use adcnn_compiler::build::build;
use adcnn_compiler::check::check;
use adcnn_compiler::plan::{Mode, Options, Strategy, explain, segment_for};
use adcnn_core::format::PlanFile;
use adcnn_tests::{EXAMPLE_NETS, example, repo_root};

#[test]
fn explain_text_of_every_example_and_strategy() {
    let table =
        std::fs::read_to_string(repo_root().join("book/src/predicted-latency.md")).expect("table");
    let pictures = [
        "vgg16-halo-even",
        "vgg16-auto",
        "vgg16-fdsp",
        "yolov2-tiny-auto",
        "resnet18-layerwise",
    ];
    for (net, _) in EXAMPLE_NETS {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {net} |")))
            .expect("a row per network");
        let header: Vec<&str> = table
            .lines()
            .next()
            .expect("header")
            .split('|')
            .map(str::trim)
            .collect();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let mut predicted = Vec::new();
        for strategy in Strategy::ALL {
            let opts = Options {
                strategy,
                ..Options::default()
            };
            let built = build(&example(net), Some(&example("edge4")), &opts, 2)
                .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
            let lp = PlanFile::parse(&built.bytes)
                .and_then(|f| f.header())
                .expect("decodes");
            predicted.push((strategy, lp.plan.predicted_ms));
            assert_eq!(lp.plan, built.plan, "{net}: plan.bin round trip");
            let text = explain::text(&lp);
            // The book's table and pictures are these plans (book/predicted-latency.sh and
            // book/make-pictures.sh regenerate them).
            let col = header
                .iter()
                .position(|h| *h == strategy.name())
                .expect("a column per strategy");
            assert_eq!(
                cells[col],
                format!("{:.2}", lp.plan.predicted_ms),
                "book table: {net} {}",
                strategy.name()
            );
            let name = format!("{net}-{}", strategy.name());
            if pictures.contains(&name.as_str()) {
                let svg =
                    std::fs::read_to_string(repo_root().join(format!("book/src/img/{name}.svg")))
                        .expect("svg");
                assert_eq!(svg, explain::svg(&lp), "book/src/img/{name}.svg is stale");
            }
            insta::with_settings!({
                snapshot_path => "../snapshots/plans",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                description => format!("adcnnc build dsl-examples/{net}.yaml --cluster dsl-examples/edge4.yaml --strategy {}", strategy.name()),
            }, {
                insta::assert_snapshot!(format!("{net}-{}", strategy.name()), text);
            });
        }
        // `auto` searches a space that holds the `single`, `halo` and `layerwise` plans.
        let of = |s: Strategy| {
            predicted
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, p)| *p)
                .expect("planned")
        };
        for other in [Strategy::Single, Strategy::Halo, Strategy::Layerwise] {
            assert!(
                of(Strategy::Auto) <= of(other) + 1e-9,
                "{net}: auto predicts worse than {}",
                other.name()
            );
        }
    }
}

#[test]
fn no_orphaned_plan_snapshots() {
    for entry in std::fs::read_dir(repo_root().join("snapshots/plans")).expect("snapshots/plans") {
        let path = entry.expect("entry").path();
        let Some(stem) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".snap"))
        else {
            continue;
        };
        let known = EXAMPLE_NETS.iter().any(|(n, _)| {
            Strategy::ALL
                .iter()
                .any(|s| stem == format!("{n}-{}", s.name()))
        });
        assert!(known, "orphaned snapshot {}", path.display());
    }
}

/// VGG16 at 224 on a 2×2 grid, measured in PyTorch: one halo segment over the whole conv stack
/// computes +159 % FLOPs with a 90-pixel halo; the segment up to pool3, +16 % with 18 pixels.
#[test]
fn vgg16_halo_figures_match_the_pytorch_measurements() {
    let checked = check(&example("vgg16"), Some(&example("edge4")));
    let (graph, _) = checked.network.as_ref().expect("vgg16");
    let cluster = checked.cluster.as_ref().expect("edge4");
    let opts = Options::default();
    let end_of = |name: &str| graph.find(name).expect("layer").index() + 1;
    for (last, redundancy, halo) in [("features.30", 1.59, 90), ("features.16", 0.16, 18)] {
        let seg = segment_for(graph, cluster, &opts, 0, end_of(last), (2, 2), Mode::Halo)
            .expect("segment");
        assert!(
            (seg.redundancy() - redundancy).abs() < 0.01,
            "up to {last}: +{:.1} % FLOPs, PyTorch measured +{:.0} %",
            100.0 * seg.redundancy(),
            100.0 * redundancy
        );
        // The top-left tile reads `halo` input pixels beyond its own block.
        let t = &seg.tiles[0];
        let stride = graph
            .layer(seg.output())
            .stats
            .receptive
            .expect("spatial")
            .stride
            .h;
        assert_eq!(t.input.r1 - t.output.r1 * stride, halo, "halo up to {last}");
    }
}

/// A node's `threads` count in the plan: of two workers with the same `gflops` per thread,
/// the one with two threads is planned at 1.8× the other's speed (`THREAD_EFFICIENCY`), so
/// an `auto` plan gives it about 1.8× the FLOPs; the explain text names its threads, and
/// the in-process cluster gives its worker two kernel threads.
#[test]
fn a_node_with_two_threads_gets_the_share_of_its_speed() {
    let dir = std::env::temp_dir().join(format!("adcnn-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cluster = dir.join("two.yaml");
    std::fs::write(
        &cluster,
        "cluster:
  name: two
  coordinator: gw
  nodes:
    - { name: gw, address: \"10.0.0.1:7070\", gflops: 40, worker: false }
    - { name: one, address: \"10.0.0.2:7070\", gflops: 40, mbps: 1000, latency_ms: 1 }
    - { name: two, address: \"10.0.0.3:7070\", gflops: 40, mbps: 1000, latency_ms: 1, threads: 2 }
",
    )
    .expect("cluster file");
    let opts = Options {
        strategy: Strategy::Auto,
        ..Options::default()
    };
    let built = build(&example("vgg16"), Some(&cluster), &opts, 2).expect("builds");
    let _ = std::fs::remove_dir_all(&dir);
    let plan = &built.plan;
    assert_eq!(plan.cluster.nodes[2].threads, 2);
    assert!((plan.cluster.nodes[2].speed() - 72.0).abs() < 1e-9);
    let flops = |node: usize| -> f64 {
        plan.segments
            .iter()
            .flat_map(|s| &s.tiles)
            .filter(|t| t.node == node)
            .map(|t| t.flops as f64)
            .sum()
    };
    let ratio = flops(2) / flops(1);
    assert!(
        (1.55..=2.05).contains(&ratio),
        "the two-thread node got {ratio:.2}× the other's FLOPs"
    );
    let lp = PlanFile::parse(&built.bytes)
        .and_then(|f| f.header())
        .expect("decodes");
    assert_eq!(lp.plan, built.plan, "threads survive plan.bin");
    assert!(explain::text(&lp).contains("(2 threads)"));
    // In process, each node's worker gets the threads the plan gives it.
    let decoded = adcnn_core::format::decode(&built.bytes).expect("decodes");
    let local = adcnn_runtime::local::LocalCluster::with_kernels(
        decoded,
        adcnn_runtime::worker::Kernels::Reference,
        None,
    );
    let threads: Vec<usize> = local
        .workers()
        .iter()
        .map(|w| w.as_ref().map_or(0, |w| w.threads()))
        .collect();
    assert_eq!(threads, [0, 1, 2]);
}
