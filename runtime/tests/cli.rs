//! `adcnn-run` as a user runs it.

#[path = "../../tests/support/cli.rs"]
mod cli;

fn adcnn_run(args: &[&str]) -> (i32, String, String) {
    let r = cli::run(
        env!("CARGO_BIN_EXE_adcnn-run"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        args,
    );
    (r.code, r.stdout, r.stderr)
}

/// Builds a plan for a bundled network with the compiler library and writes it to a
/// temporary file.
fn plan_file(net: &str, strategy: adcnn_compiler::plan::Strategy, tag: &str) -> std::path::PathBuf {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let opts = adcnn_compiler::plan::Options {
        strategy,
        ..Default::default()
    };
    let built = adcnn_compiler::build::build(
        &root.join(format!("dsl-examples/{net}.yaml")),
        Some(&root.join("dsl-examples/edge4.yaml")),
        &opts,
        2,
    )
    .expect("builds");
    let path = std::env::temp_dir().join(format!("adcnn-run-{tag}-{}.bin", std::process::id()));
    std::fs::write(&path, built.bytes).expect("writes");
    path
}

#[test]
fn runs_a_plan_with_top_k_node_times_and_a_trace() {
    let plan = plan_file("mobilenetv2", adcnn_compiler::plan::Strategy::Auto, "plan");
    let trace = plan.with_extension("trace.json");
    let (code, stdout, stderr) = adcnn_run(&[
        plan.to_str().expect("utf-8"),
        "--local",
        "--input",
        "dsl-examples/images/coffee.jpg",
        "--trace",
        trace.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("top-5:"), "{stdout}");
    for node in ["gateway", "edge1", "edge2", "edge3", "edge4"] {
        assert!(
            stdout.contains(&format!("  {node}")),
            "{node} missing from\n{stdout}"
        );
    }
    assert!(stdout.contains("latency: measured"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).expect("trace written"))
            .expect("trace is JSON");
    let events = json["traceEvents"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e["ph"] == "X" && e["tid"] == 1),
        "no tile on edge1"
    );
    // The trace drawn as a Gantt chart: a row per node, a bar per tile.
    let gantt = plan.with_extension("gantt.svg");
    let (code, stdout, stderr) = adcnn_run(&[
        "report",
        trace.to_str().expect("utf-8"),
        "-o",
        gantt.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("5 nodes"), "{stdout}");
    let svg = std::fs::read_to_string(&gantt).expect("svg written");
    assert!(svg.starts_with("<svg"));
    for node in ["gateway", "edge1", "edge2", "edge3", "edge4"] {
        assert!(
            svg.contains(&format!(">{node}</text>")),
            "{node} has no row"
        );
    }
    let tiles = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["cat"] != "transfer")
        .filter(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("segment "))
        })
        .count();
    let bars = svg.matches("<title>segment ").count();
    assert!(tiles > 0 && bars == tiles, "{tiles} tiles, {bars} bars");
    // Not a trace: a clear error, nothing written.
    let (code, _, stderr) = adcnn_run(&[
        "report",
        plan.to_str().expect("utf-8"),
        "-o",
        gantt.with_extension("bad.svg").to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("not JSON") || stderr.contains("cannot read"),
        "{stderr}"
    );
    assert!(!gantt.with_extension("bad.svg").exists());
    let _ = std::fs::remove_file(&plan);
    let _ = std::fs::remove_file(&trace);
    let _ = std::fs::remove_file(&gantt);
}

#[test]
fn an_approximate_plan_reports_its_deviation() {
    let plan = plan_file("resnet18", adcnn_compiler::plan::Strategy::Fdsp, "fdsp");
    let (code, stdout, stderr) = adcnn_run(&[
        plan.to_str().expect("utf-8"),
        "--local",
        "--input",
        "dsl-examples/images/chelsea.jpg",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("deviation of the output from the exact network: relative L2"),
        "{stdout}"
    );
    let _ = std::fs::remove_file(&plan);
}

#[test]
fn bad_plans_and_inputs_are_one_clear_error_each() {
    let plan = plan_file("alexnet", adcnn_compiler::plan::Strategy::Single, "bad");
    let p = plan.to_str().expect("utf-8");
    // Wrong input shape.
    let npy = plan.with_extension("npy");
    adcnn_core::npy::write_f32_file(&npy, &ndarray::ArrayD::zeros(ndarray::IxDyn(&[3, 10, 10])))
        .expect("npy");
    let (code, _, stderr) = adcnn_run(&[p, "--local", "--input", npy.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the tensor has shape [3, 10, 10]; the network takes [3, 224, 224]"),
        "{stderr}"
    );
    // Unreadable image.
    let (code, _, stderr) = adcnn_run(&[p, "--local", "--input", "Cargo.toml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: Cargo.toml: not a readable image"),
        "{stderr}"
    );
    // Missing input.
    let (code, _, stderr) = adcnn_run(&[p, "--local", "--input", "missing.png"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot read missing.png"),
        "{stderr}"
    );
    // Deadlines that are not numbers are refused before any worker is reached (the address
    // is a loopback port where nothing listens: reaching for it would be another error).
    let token = plan.with_extension("token");
    std::fs::write(&token, "a token for a run that never connects\n").expect("token");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let nowhere = format!("w1={}", free.local_addr().expect("address"));
    drop(free);
    for (flag, value) in [("--deadline", "inf"), ("--deadline-floor-ms", "NaN")] {
        let (code, _, stderr) = adcnn_run(&[
            p,
            "--token-file",
            token.to_str().expect("utf-8"),
            "--worker",
            &nowhere,
            flag,
            value,
            "--input",
            "dsl-examples/images/chelsea.jpg",
        ]);
        assert_eq!(code, 1);
        assert!(
            stderr.starts_with(&format!("error: {flag} takes a number from 0 to")),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(&token);
    // Corrupted plan: the damaged section is named.
    let mut bytes = std::fs::read(&plan).expect("plan");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&plan, &bytes).expect("write");
    let (code, _, stderr) =
        adcnn_run(&[p, "--local", "--input", "dsl-examples/images/chelsea.jpg"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the plan file is corrupted: the ")
            && stderr.contains("section's checksum does not match"),
        "{stderr}"
    );
    // Another format version.
    bytes[mid] ^= 0xff;
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&plan, &bytes).expect("write");
    let (code, _, stderr) =
        adcnn_run(&[p, "--local", "--input", "dsl-examples/images/chelsea.jpg"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("this plan uses plan format 7 (written by adcnn"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for f in [&plan, &npy] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn bench_prints_latency_and_compile_time_with_either_kernels() {
    let plan = plan_file("alexnet", adcnn_compiler::plan::Strategy::Single, "bench");
    let p = plan.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = adcnn_run(&["bench", p, "--runs", "2", "--profile"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("kernels jit, 1 thread(s)"), "{stdout}");
    assert!(
        stdout.contains("p50 ") && stdout.contains("frames/s"),
        "{stdout}"
    );
    assert!(stdout.contains("kernel compile time: "), "{stdout}");
    assert!(stdout.contains("MiB (slowest / largest node)"), "{stdout}");
    // AlexNet's 11×11 and 5×5 convolutions take the GEMM, its 3×3 ones (13×13) Winograd.
    assert!(stdout.contains("conv im2col + gemm"), "{stdout}");
    assert!(stdout.contains("conv winograd F(4x4,3x3)"), "{stdout}");
    let (code, stdout, stderr) = adcnn_run(&[
        "bench",
        p,
        "--runs",
        "1",
        "--threads",
        "2",
        "--kernels",
        "reference",
        "--quiet",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.len(), 9, "{stdout}");
    // Reference kernels prepare no weights.
    assert_eq!(fields[5], "0.0", "{stdout}");
    let (code, _, stderr) = adcnn_run(&["bench", p, "--kernels", "fast"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--kernels takes `jit`, `gemm`, `reference`, not `fast`"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&plan);
}

/// A plan on several nodes runs on the in-process cluster, where per-kind profiles cannot be
/// taken: `--profile` says to add `--sequential`, which runs every tile on this thread (and
/// its `--threads`).
#[test]
fn bench_profiles_a_multi_node_plan_only_sequentially() {
    let plan = plan_file(
        "alexnet",
        adcnn_compiler::plan::Strategy::Auto,
        "sequential",
    );
    let p = plan.to_str().expect("utf-8 path");
    let (code, _, stderr) = adcnn_run(&["bench", p, "--runs", "1", "--profile"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("add --sequential"), "{stderr}");
    let (code, stdout, stderr) = adcnn_run(&[
        "bench",
        p,
        "--runs",
        "1",
        "--profile",
        "--sequential",
        "--threads",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("kernels jit, 2 thread(s)"), "{stdout}");
    assert!(stdout.contains("per kind of work"), "{stdout}");
    assert!(stdout.contains("conv winograd"), "{stdout}");
    let (code, stdout, stderr) = adcnn_run(&["bench", p, "--runs", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("threads per node as planned"), "{stdout}");
    let _ = std::fs::remove_file(&plan);
}

#[test]
fn runs_a_classifier_on_an_image_and_prints_top_5() {
    let plan = plan_file("mobilenetv2", adcnn_compiler::plan::Strategy::Auto, "top5");
    let p = plan.to_str().expect("utf-8 path");
    let out = plan.with_extension("out.npy");
    let out_s = out.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = adcnn_run(&[
        p,
        "--local",
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
    let saved = adcnn_core::npy::read_f32_file(&out).expect("output written");
    assert_eq!(saved.shape(), &[1000, 1, 1]);
    // The saved output is a valid input for nothing else: feeding it back is a shape error.
    let (code, _, stderr) = adcnn_run(&[p, "--local", "--input", out_s]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the tensor has shape [1000, 1, 1]; the network takes [3, 224, 224]"),
        "{stderr}"
    );
    for f in [&plan, &out] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_network_file_is_pointed_to_the_compiler() {
    let (code, _, stderr) = adcnn_run(&[
        "dsl-examples/alexnet.yaml",
        "--input",
        "dsl-examples/images/chelsea.jpg",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is a network, not a plan"), "{stderr}");
    assert!(
        stderr.contains("adcnnc build") && stderr.contains("adcnnc run"),
        "{stderr}"
    );
}

#[test]
fn a_stream_reports_and_writes_each_frame_as_it_finishes() {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let plan = plan_file("alexnet", adcnn_compiler::plan::Strategy::Halo, "stream");
    let out = std::env::temp_dir().join(format!("adcnn-run-stream-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_adcnn-run"))
        .args([plan.to_str().expect("utf-8"), "--local", "--input", "-"])
        .args(["--output", out.to_str().expect("utf-8")])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs");
    // Killed whatever happens below.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stdin = child.stdin.take().expect("stdin");
    // Lines through a channel, so that a run that never prints fails the test (after a
    // generous bound, a fail-safe against hanging, not a timing) rather than hanging it.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let child = Kill(child);
    let hang = std::time::Duration::from_secs(300);
    let frame = |v: f32| {
        let x = ndarray::Array3::<f32>::from_elem((3, 224, 224), v);
        adcnn_core::npy::write_f32(&x.into_dyn())
    };
    // One frame, stdin still open: its line and its output file come before the next frame
    // is even sent (a run that held them to the end would never print it).
    stdin.write_all(&frame(0.1)).expect("writes");
    stdin.flush().expect("flushes");
    let first = std::iter::from_fn(|| lines.recv_timeout(hang).ok())
        .find(|l| l.starts_with("000000"))
        .expect("frame 0 reported while the stream is open");
    assert!(first.contains(" ms"), "{first}");
    assert!(out.join("000000.npy").is_file(), "frame 0 written");
    assert!(!out.join("000001.npy").exists());
    stdin.write_all(&frame(0.2)).expect("writes");
    drop(stdin);
    let rest: Vec<String> = std::iter::from_fn(|| lines.recv_timeout(hang).ok()).collect();
    assert!(rest.iter().any(|l| l.starts_with("000001")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("2 frames in")), "{rest:?}");
    assert!(out.join("000001.npy").is_file(), "frame 1 written");
    drop(child);
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&plan);
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

/// Every input that once broke a decoder (the fuzzers' regressions: damaged plans, arrays of
/// absurd shapes or the wrong dtype, truncated or oversized images), given to `adcnn-run`:
/// exit code 1, one `error:` message, no panic, and no output file begun.
#[test]
fn malformed_plans_and_inputs_are_errors_and_write_nothing() {
    let plan = plan_file(
        "alexnet",
        adcnn_compiler::plan::Strategy::Single,
        "malformed",
    );
    let p = plan.to_str().expect("utf-8");
    let out = plan.with_extension("out.npy");
    let o = out.to_str().expect("utf-8");
    let image = "dsl-examples/images/chelsea.jpg";
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    for bad in regressions("plan") {
        let b = bad.to_str().expect("utf-8").to_string();
        cases.push((
            b.clone(),
            vec![b, "--local".into(), "--input".into(), image.into()],
        ));
    }
    for bad in regressions("npy").into_iter().chain(regressions("image")) {
        let b = bad.to_str().expect("utf-8").to_string();
        cases.push((
            b.clone(),
            vec![p.into(), "--local".into(), "--input".into(), b],
        ));
    }
    for (what, mut args) in cases {
        args.extend(["--output".to_string(), o.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = adcnn_run(&args);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(!out.exists(), "{what}: an output was written");
    }
    let _ = std::fs::remove_file(&plan);
}

#[test]
fn calibrate_writes_a_cluster_file_that_plans_with_the_measured_speeds() {
    let plan = plan_file("alexnet", adcnn_compiler::plan::Strategy::Auto, "calibrate");
    let out = plan.with_extension("cluster.yaml");
    let (code, stdout, stderr) = adcnn_run(&[
        "calibrate",
        plan.to_str().expect("utf-8"),
        "--local",
        "--frames",
        "2",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("2 frames of alexnet (auto plan) on edge4 in process"),
        "{stdout}"
    );
    // In process no time is on a wire: the links stay as the file says, and it says so.
    assert!(
        stdout.contains("link as the file says: no time on a wire"),
        "{stdout}"
    );
    // The file is a cluster file: a plan built with it carries its speeds.
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let built = adcnn_compiler::build::build(
        &root.join("dsl-examples/alexnet.yaml"),
        Some(&out),
        &adcnn_compiler::plan::Options::default(),
        2,
    )
    .expect("builds with the calibrated cluster");
    let cluster = adcnn_core::format::decode(&built.bytes)
        .expect("decodes")
        .header
        .plan
        .cluster;
    let text = std::fs::read_to_string(&out).expect("written");
    let names = ["gateway", "edge1", "edge2", "edge3", "edge4"];
    for (node, name) in cluster.nodes.iter().zip(names) {
        assert_eq!(node.name, name);
        let line = text
            .lines()
            .find(|l| l.contains(&format!("- {{ name: \"{name}\"")))
            .expect("a line per node");
        assert!(
            line.contains(&format!("gflops: {:.3}", node.gflops)),
            "{name}: {line} vs {}",
            node.gflops
        );
        assert!(node.gflops > 0.0);
    }
    // Measured, not copied: the workers' speeds are not all the file's 44 and 22.
    assert!(
        cluster.nodes[1..]
            .iter()
            .any(|n| n.gflops != 44.0 && n.gflops != 22.0)
    );
    assert_eq!(cluster.nodes[1].mbps, Some(100.0));
    // Bad arguments are clear errors.
    let (code, _, stderr) = adcnn_run(&[
        "calibrate",
        plan.to_str().expect("utf-8"),
        "--local",
        "--frames",
        "0",
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--frames takes 1 to 100000"), "{stderr}");
    let _ = std::fs::remove_file(&plan);
    let _ = std::fs::remove_file(&out);
}
