//! Keeps documentation and code in step.

use adcnn_compiler::dsl::ops::KINDS;
use adcnn_tests::repo_root;

#[test]
fn the_layer_reference_lists_every_kind_with_its_synopsis() {
    let page = std::fs::read_to_string(repo_root().join("book/src/layers.md")).expect("layers.md");
    for (kind, synopsis) in KINDS {
        assert!(
            page.contains(&format!("| `{kind}`")),
            "book/src/layers.md lacks a row for `{kind}`"
        );
        assert!(
            page.contains(&format!("`{synopsis}`")),
            "book/src/layers.md lacks the synopsis `{synopsis}`"
        );
    }
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
    let command = "cargo test --workspace";
    assert!(
        readme.lines().any(|l| l.trim() == command),
        "README's test command changed"
    );
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run must run `{command}`"
    );
}
