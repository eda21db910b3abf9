//! Every file in `tests/fixtures/invalid/` fails `check`, and what the user sees (every
//! error with file:line:col, a code frame and help) is snapshotted in `snapshots/check/`.

use std::collections::BTreeSet;

use adcnn_compiler::check::check;
use adcnn_tests::{repo_root, yaml_files};

const FIXTURES: &str = "tests/fixtures/invalid";

#[test]
fn invalid_fixtures_render_located_diagnostics() {
    let files = yaml_files(FIXTURES);
    assert!(files.len() >= 15, "only {} invalid fixtures", files.len());
    for path in &files {
        let checked = check(path, None);
        assert!(!checked.is_ok(), "{} should fail to check", path.display());
        let rendered = checked.render();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        // Every located error names the file with line and column.
        for d in checked.diagnostics.iter().filter(|d| d.span.is_some()) {
            let span = d.span.as_ref().expect("span");
            let (line, col) = checked.sources.line_col(span.file, span.range.start);
            let place = format!("{}:{line}:{col}", checked.sources.name(span.file));
            assert!(
                rendered.contains(&place),
                "{name}: `{place}` missing from\n{rendered}"
            );
        }
        insta::with_settings!({
            snapshot_path => "../snapshots/check",
            prepend_module_to_snapshot => false,
            input_file => path,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name, rendered);
        });
    }
}

/// A snapshot without its fixture is stale: CI refuses it like snapshot drift.
#[test]
fn no_orphaned_check_snapshots() {
    let fixtures: BTreeSet<String> = yaml_files(FIXTURES)
        .iter()
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .collect();
    let dir = repo_root().join("snapshots/check");
    for entry in std::fs::read_dir(&dir).expect("snapshots/check exists") {
        let path = entry.expect("readable").path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if let Some(stem) = file.strip_suffix(".snap") {
            assert!(
                fixtures.contains(stem),
                "orphaned snapshot {}",
                path.display()
            );
        }
    }
}
