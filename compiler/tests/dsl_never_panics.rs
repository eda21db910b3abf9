//! No input makes the DSL front end panic: random text, and valid files with random
//! edits, all come back as diagnostics (or a clean check).

use std::path::Path;

use adcnn_compiler::check::check_text;
use proptest::prelude::*;

const VALID: &str = "network:
  input: { shape: [3, 16, 16], image: { resize: 20, mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2] } }
  weights: random(seed=3)
  layers:
    - stem: conv(8, k=3, s=2, p=[1, 0, 1, 0]) as c | bn | leaky_relu(0.1) | maxpool(2, ceil=true)
    - down: stem -> conv(8, k=1, bias=false) | bn
    - block: stem -> dwconv(k=3, p=1) | relu6 | add(down) | relu
    - cat: block, down -> concat | avgpool(2, p=1, count_pad=false)
    - m: { op: conv, out: 4, k: [1, 3], p: [0, 1], from: cat }
    - head: global_avgpool | flatten | dropout(0.2) | linear(10) | softmax
cluster:
  coordinator: a
  nodes:
    - { name: a, gflops: 10, address: \"h:1\" }
    - { name: b, gflops: 5.5, mbps: 100, latency_ms: 2 }
";

fn run(text: String) -> bool {
    let checked = check_text(Path::new("fuzz.yaml"), text);
    // Rendering must not panic either, whatever the spans.
    let _ = checked.render();
    checked.is_ok()
}

#[test]
fn the_seed_file_is_valid() {
    let checked = check_text(Path::new("fuzz.yaml"), VALID.to_string());
    assert!(checked.is_ok(), "{}", checked.render());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_text(text in "[ -~\n]{0,200}") {
        run(text);
    }

    #[test]
    fn random_edits_of_a_valid_file(edits in prop::collection::vec((0usize..2000, 0usize..4, "[ -~\n]{0,6}"), 1..5)) {
        let mut text = VALID.to_string();
        for (at, del, ins) in edits {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            let mut end = (at + del).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(at..end, &ins);
        }
        run(text);
    }

    #[test]
    fn random_layer_expressions(expr in "[a-z0-9_.,()\\[\\]=| ->-]{0,60}") {
        run(format!("network:\n  input: {{ shape: [3, 8, 8] }}\n  weights: random(seed=0)\n  layers:\n    - x: {expr}\n"));
    }
}
