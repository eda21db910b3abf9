//! `adcnn-run` as a user runs it.

use std::process::Command;

fn adcnn_run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_adcnn-run"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("adcnn-run runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runs_a_classifier_on_an_image_and_prints_top_5() {
    let out = std::env::temp_dir().join(format!("adcnn-run-test-{}.npy", std::process::id()));
    let out_s = out.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = adcnn_run(&[
        "dsl-examples/mobilenetv2.yaml",
        "--input",
        "dsl-examples/images/chelsea.jpg",
        "--output",
        out_s,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("top-5:"), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.contains(". class ")).count(),
        5,
        "{stdout}"
    );
    let saved = adcnn_compiler::npy::read_f32_file(&out).expect("output written");
    assert_eq!(saved.shape(), &[1000, 1, 1]);
    // The saved output is a valid input for nothing else: feeding it back is a shape error.
    let (code, _, stderr) = adcnn_run(&["dsl-examples/mobilenetv2.yaml", "--input", out_s]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the tensor has shape [1000, 1, 1]; the network takes [3, 224, 224]"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&out);
}

#[test]
fn unreadable_inputs_are_one_clear_error() {
    let (code, _, stderr) = adcnn_run(&["dsl-examples/alexnet.yaml", "--input", "Cargo.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: Cargo.toml: not a readable image"),
        "{stderr}"
    );
    let (code, _, stderr) = adcnn_run(&["dsl-examples/alexnet.yaml", "--input", "missing.png"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot read missing.png"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_network_shows_its_diagnostics() {
    let (code, _, stderr) = adcnn_run(&[
        "tests/fixtures/invalid/cycle.yaml",
        "--input",
        "dsl-examples/images/chelsea.jpg",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("layers form a cycle"), "{stderr}");
}
