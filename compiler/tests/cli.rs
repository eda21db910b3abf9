//! `adcnnc` as a user runs it: exit codes, what goes to stdout and stderr.

use std::process::Command;

#[path = "../../tests/support/cli.rs"]
mod cli;

fn adcnnc(args: &[&str]) -> (i32, String, String) {
    let r = cli::run(
        env!("CARGO_BIN_EXE_adcnnc"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        args,
    );
    (r.code, r.stdout, r.stderr)
}

#[test]
fn check_prints_one_summary_line_and_exits_0() {
    let (code, stdout, stderr) = adcnnc(&["check", "dsl-examples/vgg16.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("vgg16: 39 layers, 138.36 M parameters"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(30.69 in convolutions)") && stdout.contains("output [1000]"),
        "{stdout}"
    );
}

#[test]
fn check_with_a_cluster_file_prints_both() {
    let (code, stdout, stderr) = adcnnc(&[
        "check",
        "dsl-examples/yolov2-tiny.yaml",
        "--cluster",
        "dsl-examples/edge4.yaml",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("output [125, 13, 13]"), "{stdout}");
    assert!(
        stdout.contains("cluster edge4: 5 nodes (4 workers"),
        "{stdout}"
    );
}

#[test]
fn errors_go_to_stderr_with_places_and_exit_1() {
    let (code, stdout, stderr) =
        adcnnc(&["check", "tests/fixtures/invalid/wrong_argument_type.yaml"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("tests/fixtures/invalid/wrong_argument_type.yaml:5:21"),
        "{stderr}"
    );
    assert!(stderr.trim_end().ends_with("3 errors found"), "{stderr}");
}

#[test]
fn a_missing_file_is_one_clear_error() {
    let (code, _, stderr) = adcnnc(&["check", "no/such/net.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read no/such/net.yaml"), "{stderr}");
}

#[test]
fn help_explains_the_commands() {
    let (code, stdout, _) = adcnnc(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("file:line:col"), "{stdout}");
}

#[test]
fn build_then_explain_in_every_format() {
    let out = std::env::temp_dir().join(format!("adcnnc-cli-{}.bin", std::process::id()));
    let o = out.to_str().expect("utf-8");
    let (code, stdout, stderr) = adcnnc(&[
        "build",
        "dsl-examples/resnet18.yaml",
        "--cluster",
        "dsl-examples/edge4.yaml",
        "--strategy",
        "halo",
        "--compress",
        "q8",
        "-o",
        o,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("resnet18 on edge4 (4 workers): strategy halo, compression q8"),
        "{stdout}"
    );
    assert!(stdout.contains("predicted latency"), "{stdout}");
    let (code, text, _) = adcnnc(&["explain", o]);
    assert_eq!(code, 0);
    assert!(
        text.contains("segment 0: conv1 …") && text.contains("tail on gateway"),
        "{text}"
    );
    let (code, json, _) = adcnnc(&["explain", o, "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["plan"]["strategy"], "Halo");
    assert_eq!(v["layers"].as_array().map(Vec::len), Some(69));
    let (code, svg, _) = adcnnc(&["explain", o, "--format", "svg"]);
    assert_eq!(code, 0);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let _ = std::fs::remove_file(&out);
}

#[test]
fn build_errors_are_clear() {
    let (code, _, stderr) = adcnnc(&[
        "build",
        "dsl-examples/alexnet.yaml",
        "--grid",
        "12x12",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot plan: grid 12×12 does not fit"),
        "{stderr}"
    );
    let (code, _, stderr) = adcnnc(&["build", "dsl-examples/alexnet.yaml", "--grid", "2by2"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("expected ROWSxCOLS"), "{stderr}");
    let (code, _, stderr) = adcnnc(&["explain", "Cargo.toml"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a plan file"), "{stderr}");
}

#[test]
fn check_layers_prints_a_row_per_layer() {
    let (code, stdout, stderr) = adcnnc(&["check", "dsl-examples/alexnet.yaml", "--layers"]);
    assert_eq!(code, 0, "{stderr}");
    // The summary, a header, and 21 layers.
    assert_eq!(stdout.lines().count(), 23, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("features.0") && l.contains("conv(64, k=11, s=4, p=2)")),
        "{stdout}"
    );
}

/// `adcnnc explain … | head`: a reader that closes its end early ends adcnnc quietly (it used
/// to panic in `println!` with a backtrace). The JSON is far larger than a pipe's buffer, so
/// the write must meet the closed pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    let out = std::env::temp_dir().join(format!("adcnnc-pipe-{}.bin", std::process::id()));
    let o = out.to_str().expect("utf-8");
    let (code, _, stderr) = adcnnc(&[
        "build",
        "dsl-examples/resnet50.yaml",
        "--cluster",
        "dsl-examples/lan8.yaml",
        "--strategy",
        "layerwise",
        "-o",
        o,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (_, json, _) = adcnnc(&["explain", o, "--format", "json"]);
    assert!(json.len() > 256 * 1024, "{} bytes", json.len());
    let mut child = Command::new(env!("CARGO_BIN_EXE_adcnnc"))
        .args(["explain", o, "--format", "json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("adcnnc runs");
    drop(child.stdout.take());
    let done = child.wait_with_output().expect("adcnnc ends");
    let _ = std::fs::remove_file(&out);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn run_evaluates_a_network_on_an_image_and_prints_top_5() {
    let out = std::env::temp_dir().join(format!("adcnnc-run-{}.npy", std::process::id()));
    let out_s = out.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = adcnnc(&[
        "run",
        "dsl-examples/mobilenetv2.yaml",
        "--input",
        "dsl-examples/images/chelsea.jpg",
        "--output",
        out_s,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ran on the reference interpreter"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(". class ")).count(),
        5,
        "{stdout}"
    );
    let saved = adcnn_core::npy::read_f32_file(&out).expect("output written");
    assert_eq!(saved.shape(), &[1000, 1, 1]);
    let (code, _, stderr) = adcnnc(&["run", "dsl-examples/mobilenetv2.yaml", "--input", out_s]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the tensor has shape [1000, 1, 1]; the network takes [3, 224, 224]"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&out);
}

#[test]
fn run_reports_unreadable_inputs_and_invalid_networks() {
    let (code, _, stderr) = adcnnc(&["run", "dsl-examples/alexnet.yaml", "--input", "Cargo.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: Cargo.toml: not a readable image"),
        "{stderr}"
    );
    let (code, _, stderr) = adcnnc(&["run", "dsl-examples/alexnet.yaml", "--input", "missing.png"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot read missing.png"),
        "{stderr}"
    );
    let (code, _, stderr) = adcnnc(&[
        "run",
        "tests/fixtures/invalid/cycle.yaml",
        "--input",
        "dsl-examples/images/chelsea.jpg",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("layers form a cycle"), "{stderr}");
}

/// The files of `tests/fuzz/regressions/<target>/`.
fn regressions(target: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fuzz/regressions"
    ))
    .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no inputs", dir.display());
    files
}

/// Every input that once broke a decoder, given to `adcnnc`: YAML bombs and deep nesting
/// to `check` and `build`, truncated and damaged models to `import`: exit code 1, an
/// `error` message, no panic, and nothing written.
#[test]
fn malformed_files_are_errors_and_write_nothing() {
    let dir = std::env::temp_dir().join(format!("adcnnc-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("out.bin");
    let yaml = dir.join("out.yaml");
    for bad in regressions("dsl") {
        let b = bad.to_str().expect("utf-8");
        for args in [
            vec!["check", b],
            vec!["build", b, "-o", out.to_str().expect("utf-8")],
        ] {
            let (code, _, stderr) = adcnnc(&args);
            assert_eq!(code, 1, "{args:?}: {stderr}");
            assert!(stderr.contains("error"), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        }
        assert!(!out.exists(), "{b}: a plan was written");
    }
    for bad in regressions("onnx") {
        let b = bad.to_str().expect("utf-8");
        let args = ["import", b, "-o", yaml.to_str().expect("utf-8")];
        let (code, _, stderr) = adcnnc(&args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!yaml.exists(), "{b}: a DSL file was written");
        assert!(
            !yaml.with_extension("safetensors").exists(),
            "{b}: weights were written"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
