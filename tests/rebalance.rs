//! Re-balancing (`adcnn_core::rebalance`, what the runtime re-plans with): for every example
//! network's exact plans on edge4, tiles re-balanced for a node four times slower than the
//! cluster file says fit their programs, compute exactly what the plan computes, and give
//! the slow node a smaller share of the work, predicted faster than the tiles as they were.

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Compression, Options, Strategy};
use adcnn_core::format::{DecodedPlan, ProgramLayers, decode};
use adcnn_core::plan::Segment;
use adcnn_core::program::run_plan;
use adcnn_core::rebalance::{SegmentLayers, rebalance, shares};
use adcnn_core::weights::SplitMix64;
use adcnn_tests::{example, relative_l2};
use ndarray::Array3;

fn holders(plan: &DecodedPlan) -> Vec<Vec<usize>> {
    plan.header
        .plan
        .segments
        .iter()
        .map(|s| {
            let mut h: Vec<usize> = s.tiles.iter().map(|t| t.node).collect();
            h.sort_unstable();
            h.dedup();
            h
        })
        .collect()
}

/// Every segment's layers and their FLOPs, as the coordinator describes them.
fn described(plan: &DecodedPlan) -> Vec<(ProgramLayers, Vec<u64>)> {
    plan.segments
        .iter()
        .zip(&plan.header.plan.segments)
        .map(|(p, s)| {
            let flops = s
                .layers()
                .map(|id| plan.header.network.layers[id.index()].flops)
                .collect();
            (ProgramLayers::of(p), flops)
        })
        .collect()
}

fn descs(described: &[(ProgramLayers, Vec<u64>)]) -> Vec<SegmentLayers<'_>> {
    described
        .iter()
        .map(|(l, f)| SegmentLayers {
            layers: &l.layers,
            flops: f,
            input: l.input,
        })
        .collect()
}

#[test]
fn rebalanced_tiles_are_exact_and_move_work_off_a_slow_node() {
    for net in ["vgg16", "resnet18", "alexnet"] {
        for strategy in [Strategy::Auto, Strategy::Halo] {
            let opts = Options {
                strategy,
                compression: Compression::None,
                ..Options::default()
            };
            let built = build(&example(net), Some(&example("edge4")), &opts, 2)
                .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()));
            let plan = decode(&built.bytes).expect("plan");
            let p = &plan.header.plan;
            let described = described(&plan);
            let descs = descs(&described);
            let holders = holders(&plan);
            // The busiest worker runs four times slower than assumed.
            let before = shares(&p.segments, p.cluster.nodes.len());
            let slow = (0..before.len())
                .max_by(|&a, &b| before[a].total_cmp(&before[b]))
                .expect("nodes");
            let mut speeds: Vec<f64> = p
                .cluster
                .nodes
                .iter()
                .map(|n| if n.worker { n.speed() } else { 0.0 })
                .collect();
            speeds[slow] /= 4.0;
            let r = rebalance(
                &p.cluster,
                p.compression,
                &p.segments,
                &holders,
                &descs,
                &speeds,
            )
            .expect("rebalances");
            let what = format!("{net} {}", strategy.name());
            assert!(r.gain() > 1.1, "{what}: gain {}", r.gain());
            let after = shares(&r.segments, p.cluster.nodes.len());
            assert!(
                after[slow] < before[slow] * 0.75,
                "{what}: node {slow}'s share {:.3} → {:.3}",
                before[slow],
                after[slow]
            );
            for (seg, prog) in r.segments.iter().zip(&plan.segments) {
                prog.check_tiles(seg)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    seg.tiles
                        .iter()
                        .all(|t| holders.iter().flatten().any(|&h| h == t.node))
                );
            }
            // Exactly what the plan computes.
            let s = plan.header.network.input.shape;
            let mut rng = SplitMix64::new(7);
            let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
            let tile = |prog: &adcnn_core::program::Program,
                        seg: &Segment,
                        t: &_,
                        x: &Array3<f32>| { prog.run_tile(seg, t, x) };
            let want = run_plan(p, &plan.segments, &plan.tail, &x, tile).expect("plan");
            let mut moved = p.clone();
            moved.segments = r.segments.clone();
            let got = run_plan(&moved, &plan.segments, &plan.tail, &x, tile).expect("rebalanced");
            let e = relative_l2(got.iter(), want.iter());
            assert!(e <= 1e-6, "{what}: relative L2 {e:.2e}");
        }
    }
}

#[test]
fn a_node_with_no_speed_gets_nothing_and_a_segment_with_no_holder_is_an_error() {
    let opts = Options {
        strategy: Strategy::Auto,
        compression: Compression::None,
        ..Options::default()
    };
    let built = build(&example("alexnet"), Some(&example("loopback3")), &opts, 2).expect("plan");
    let plan = decode(&built.bytes).expect("plan");
    let p = &plan.header.plan;
    let described = described(&plan);
    let descs = descs(&described);
    let holders = holders(&plan);
    // loopback3: node 0 coordinates; w2 lost.
    let r = rebalance(
        &p.cluster,
        p.compression,
        &p.segments,
        &holders,
        &descs,
        &[0.0, 44.0, 0.0, 44.0],
    )
    .expect("rebalances");
    assert!(
        r.segments
            .iter()
            .flat_map(|s| &s.tiles)
            .all(|t| t.node != 2)
    );
    assert!(r.current_ms.is_infinite() || shares(&p.segments, 4)[2] == 0.0);
    let none = rebalance(
        &p.cluster,
        p.compression,
        &p.segments,
        &holders,
        &descs,
        &[0.0; 4],
    );
    assert!(none.is_err());
}

#[test]
fn a_worker_keeps_the_plans_layout_the_new_one_and_those_it_is_told_to() {
    use adcnn_runtime::transport::{TileInput, TileJob};
    use adcnn_runtime::worker::{Kernels, Worker};
    use std::collections::HashMap;
    use std::sync::Arc;

    let built = build(
        &example("alexnet"),
        Some(&example("loopback3")),
        &Options::default(),
        2,
    )
    .expect("plan");
    let plan = decode(&built.bytes).expect("plan");
    let programs: HashMap<usize, Arc<_>> = plan
        .segments
        .iter()
        .cloned()
        .map(Arc::new)
        .enumerate()
        .collect();
    let node = plan.header.plan.segments[0].tiles[0].node;
    let w = Worker::new(
        node,
        &plan.header,
        plan.hash,
        &programs,
        Kernels::Reference,
        std::time::Instant::now(),
    )
    .expect("worker");
    let segs = &plan.header.plan.segments;
    w.retile(1, segs, &[]).expect("layout 1");
    w.retile(2, segs, &[1]).expect("layout 2");
    assert_eq!(w.layouts(), [0, 1, 2]);
    w.retile(3, segs, &[2]).expect("layout 3");
    assert_eq!(w.layouts(), [0, 2, 3]);
    // A re-tile that finishes after a newer one does not drop it.
    w.retile(2, segs, &[]).expect("layout 2 again");
    assert_eq!(w.layouts(), [0, 3, 2]);
    assert!(w.retile(0, segs, &[]).is_err(), "layout 0 is the plan's");
    assert!(w.retile(4, segs, &[1, 2]).is_err(), "too many to keep");
    assert!(w.retile(4, &segs[1..], &[]).is_err(), "a segment short");
    // A job of a layout it dropped says so; one of a layout it holds runs.
    let t = &segs[0].tiles[0];
    let s = plan.segments[0].input_shape();
    let x = ndarray::Array3::zeros((s.c, t.input.rows(), t.input.cols()));
    let job = |layout| TileJob {
        frame: 0,
        layout,
        segment: 0,
        tile: 0,
        input: TileInput::Values(x.clone()),
    };
    let err = w.run(&job(1)).output.expect_err("layout 1 is gone");
    assert!(err.contains("no tile layout 1"), "{err}");
    w.run(&job(3)).output.expect("layout 3");
    w.plan_layout_only();
    assert_eq!(w.layouts(), [0]);
}
