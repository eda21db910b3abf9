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

/// Seeded random weights keep every activation finite and of moderate size through every
/// example network (up to ResNet-50's 175 layers), so benchmarks on them mean something.
#[test]
fn random_weights_keep_activations_finite() {
    use adcnn_compiler::reference;
    use adcnn_compiler::weights::SplitMix64;
    for (name, _) in EXAMPLE_NETS {
        let checked = check(&example(name), None);
        let (graph, weights) = checked.network.as_ref().expect("a network");
        let s = graph.input.shape;
        let mut rng = SplitMix64::new(7);
        let input =
            ndarray::Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-2.0, 2.0));
        let outputs = reference::run_all(graph, weights, &input).expect("runs");
        for (layer, out) in graph.layers().iter().zip(&outputs) {
            let max = out.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                max.is_finite() && max < 1e4,
                "{name}: layer `{}` reaches |x| = {max}",
                layer.name
            );
        }
        let last = outputs.last().expect("output");
        let mean = last.mean().unwrap_or(0.0);
        let var = last.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / last.len() as f32;
        assert!(var > 1e-8, "{name}: the output is constant");
    }
}

/// Receptive fields measured in PyTorch for VGG16: 44 pixels at pool3, 212 at pool5.
#[test]
fn receptive_fields_and_strides_of_vgg16() {
    let checked = check(&example("vgg16"), None);
    let (graph, _) = checked.network.as_ref().expect("vgg16");
    for (layer, field, stride) in [("features.16", 44, 8), ("features.30", 212, 32)] {
        let r = graph
            .layer(graph.find(layer).expect("layer"))
            .stats
            .receptive
            .expect("spatial");
        assert_eq!(
            (r.field.h, r.field.w, r.stride.h),
            (field, field, stride),
            "{layer}"
        );
    }
    let table = graph.layer_table();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("features.30") && l.contains("212×212")),
        "{table}"
    );
}
