//! The bundled example networks and clusters check cleanly, with the published FLOP counts.

use adcnn_compiler::check::check;
use adcnn_tests::{EXAMPLE_CLUSTERS, EXAMPLE_NETS, example};

#[test]
fn example_networks_have_the_published_conv_flops() {
    for (name, gflops) in EXAMPLE_NETS {
        let checked = check(&example(name), None);
        assert!(checked.is_ok(), "{name}:\n{}", checked.render());
        let (graph, _) = checked.network.as_ref().expect("a network");
        let conv = graph.stats().conv_flops as f64 / 1e9;
        let rel = (conv - gflops).abs() / gflops;
        assert!(
            rel <= 0.005,
            "{name}: {conv:.3} conv GFLOPs, expected {gflops} ± 0.5 %"
        );
        // What `check` prints carries the same figure.
        let summary = checked.summary().join("\n");
        assert!(
            summary.contains(&format!("({conv:.2} in convolutions)")),
            "{summary}"
        );
    }
}

#[test]
fn example_clusters_check() {
    for name in EXAMPLE_CLUSTERS {
        let checked = check(&example(name), None);
        assert!(checked.is_ok(), "{name}:\n{}", checked.render());
        let cluster = checked.cluster.as_ref().expect("a cluster");
        assert!(cluster.workers().count() >= 4, "{name}");
    }
}

#[test]
fn a_network_checks_together_with_a_separate_cluster_file() {
    let checked = check(&example("resnet18"), Some(&example("edge4")));
    assert!(checked.is_ok(), "{}", checked.render());
    let lines = checked.summary();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].starts_with("cluster edge4: 5 nodes (4 workers, 132.0 GFLOP/s)"),
        "{lines:?}"
    );
}
