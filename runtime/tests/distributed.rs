//! The distributed runtime as a user runs it: three `adcnn-run worker` processes on loopback
//! ports the OS picks, and `adcnn-run PLAN` as the coordinator in another. Workers are killed
//! when the test ends, pass or fail.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use adcnn_compiler::plan::{Compression, Strategy};
use support::{TempDir, plan_bytes};

const EXE: &str = env!("CARGO_BIN_EXE_adcnn-run");

/// Worker processes, killed on drop.
struct Processes {
    children: Vec<Child>,
    /// `w1=127.0.0.1:PORT`, … for the coordinator's `--worker`.
    overrides: Vec<String>,
}

impl Processes {
    fn start(token: &Path) -> Processes {
        let mut p = Processes {
            children: Vec::new(),
            overrides: Vec::new(),
        };
        for name in ["w1", "w2", "w3"] {
            let address = p.spawn(token, "127.0.0.1:0");
            p.overrides.push(format!("{name}={address}"));
        }
        p
    }

    /// Starts a worker listening on `listen`; its address.
    fn spawn(&mut self, token: &Path, listen: &str) -> String {
        let mut child = Command::new(EXE)
            .args(["worker", "--listen", listen, "--threads", "1"])
            .arg("--token-file")
            .arg(token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("a worker starts");
        let stdout = child.stdout.take().expect("its stdout");
        self.children.push(child);
        // The first line says where it listens.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("it prints where it listens");
        line.strip_prefix("listening on ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(args: &[&str], extra: &[String]) -> (i32, String, String) {
    let out = Command::new(EXE)
        .args(args)
        .args(extra)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("adcnn-run runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `adcnn-run ARGS REMOTE` with frames on stdin and stdout and stderr piped.
fn on_stdin(args: &[&str], remote: &[String]) -> Child {
    Command::new(EXE)
        .args(args)
        .args(remote)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs")
}

fn setup(net: &str, strategy: Strategy) -> (TempDir, Processes) {
    let dir = TempDir::new("distributed");
    let token = dir.0.join("token");
    std::fs::write(&token, "a token for three loopback workers\n").expect("token");
    std::fs::write(
        dir.0.join("plan.bin"),
        plan_bytes(net, strategy, Compression::None),
    )
    .expect("plan");
    let workers = Processes::start(&token);
    (dir, workers)
}

fn remote_args(dir: &TempDir, workers: &Processes) -> Vec<String> {
    // No deadlines: a tile late on a busy machine would be sent to another worker as well,
    // and what these tests check (which worker computed, bits) would depend on timing.
    let mut a = vec![
        "--token-file".to_string(),
        dir.0.join("token").display().to_string(),
        "--deadline".to_string(),
        "0".to_string(),
    ];
    for o in &workers.overrides {
        a.push("--worker".into());
        a.push(o.clone());
    }
    a
}

#[test]
fn three_worker_processes_give_the_in_process_bits_and_cache_the_plan() {
    let (dir, workers) = setup("resnet18", Strategy::Auto);
    let plan = dir.0.join("plan.bin").display().to_string();
    let (grpc_out, local_out) = (dir.0.join("grpc.npy"), dir.0.join("local.npy"));
    let image = "dsl-examples/images/chelsea.jpg";
    let remote = remote_args(&dir, &workers);
    let (code, stdout, stderr) = run(
        &[
            &plan,
            "--input",
            image,
            "--output",
            &grpc_out.display().to_string(),
        ],
        &remote,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(gRPC, strategy auto"), "{stdout}");
    assert_eq!(stdout.matches("section(s)").count(), 3, "{stdout}");
    let (code, _, stderr) = run(
        &[
            &plan,
            "--local",
            "--input",
            image,
            "--output",
            &local_out.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(&grpc_out).expect("gRPC output"),
        std::fs::read(&local_out).expect("local output"),
        "the gRPC run's output differs from the in-process run's"
    );
    // The second run ships nothing and compiles nothing.
    let (code, stdout, stderr) = run(&[&plan, "--input", image], &remote);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.matches("plan cached, kernels cached").count(),
        3,
        "{stdout}"
    );
}

#[test]
fn a_folder_of_frames_and_a_stream_on_stdin_come_back_in_order() {
    let (dir, workers) = setup("mobilenetv2", Strategy::Halo);
    let plan = dir.0.join("plan.bin").display().to_string();
    let frames = dir.0.join("frames");
    std::fs::create_dir_all(&frames).expect("frames");
    let images = support::root().join("dsl-examples/images");
    for (i, name) in ["chelsea.jpg", "coffee.jpg", "chelsea.jpg", "coffee.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(images.join(name), frames.join(format!("{i}-{name}"))).expect("copy");
    }
    let (grpc_dir, local_dir) = (dir.0.join("grpc"), dir.0.join("local"));
    let remote = remote_args(&dir, &workers);
    let frames_s = frames.display().to_string();
    let (code, stdout, stderr) = run(
        &[
            &plan,
            "--input",
            &frames_s,
            "--in-flight",
            "3",
            "--output",
            &grpc_dir.display().to_string(),
        ],
        &remote,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("4 frames in"), "{stdout}");
    let (code, _, stderr) = run(
        &[
            &plan,
            "--local",
            "--input",
            &frames_s,
            "--output",
            &local_dir.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(&grpc_dir)
        .expect("outputs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "0-chelsea.npy",
            "1-coffee.npy",
            "2-chelsea.npy",
            "3-coffee.npy"
        ]
    );
    for n in &names {
        assert_eq!(
            std::fs::read(grpc_dir.join(n)).expect("gRPC"),
            std::fs::read(local_dir.join(n)).expect("local"),
            "{n}"
        );
    }
    // Frames as a stream of .npy arrays on stdin.
    let mut child = on_stdin(
        &[plan.as_str(), "--input", "-", "--in-flight", "2"],
        &remote,
    );
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        // Two frames: the network's input shape, as .npy.
        for seed in [1u32, 2] {
            let x = ndarray::Array3::<f32>::from_elem((3, 224, 224), seed as f32 / 10.0);
            stdin
                .write_all(&adcnn_core::npy::write_f32(&x.into_dyn()))
                .expect("writes");
        }
    }
    let out = child.wait_with_output().expect("ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("000000") && stdout.contains("000001"),
        "{stdout}"
    );
    assert!(stdout.contains("2 frames in"), "{stdout}");
}

#[test]
fn a_worker_that_is_not_running_is_an_error_naming_it() {
    let dir = TempDir::new("unreachable");
    std::fs::write(dir.0.join("token"), "a token for three loopback workers\n").expect("token");
    let plan = dir.0.join("plan.bin");
    std::fs::write(
        &plan,
        plan_bytes("alexnet", Strategy::Halo, Compression::None),
    )
    .expect("plan");
    // Loopback ports where nothing listens.
    let free: Vec<String> = (0..3)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
            l.local_addr().expect("address").to_string()
        })
        .collect();
    let mut args = vec![
        "--token-file".to_string(),
        dir.0.join("token").display().to_string(),
        "--connect-timeout".into(),
        "5".into(),
    ];
    for (n, a) in ["w1", "w2", "w3"].iter().zip(&free) {
        args.push("--worker".into());
        args.push(format!("{n}={a}"));
    }
    let (code, _, stderr) = run(
        &[
            &plan.display().to_string(),
            "--input",
            "dsl-examples/images/chelsea.jpg",
        ],
        &args,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach worker `w"), "{stderr}");
    assert!(
        stderr.contains("adcnn-run worker --listen 127.0.0.1:"),
        "{stderr}"
    );
    // No token at all is refused before connecting.
    let (code, _, stderr) = run(
        &[
            &plan.display().to_string(),
            "--input",
            "dsl-examples/images/chelsea.jpg",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("no cluster token"), "{stderr}");
}

#[test]
fn a_worker_process_killed_mid_stream_costs_no_frame_and_is_readmitted_when_restarted() {
    // alexnet `halo` on loopback3 gives its tiles to w1 and w2. Three frames go in on stdin and
    // come out; w2 is killed (SIGKILL); three more go in and come out. A new w2 is started on
    // the same address, and frames go in one by one until the coordinator says it is back,
    // then two more. Every frame comes out, equal to the run in process, and the new w2 (whose
    // section cache died with the old one: they are shipped again) gets tiles.
    let (dir, mut workers) = setup("alexnet", Strategy::Halo);
    let plan = dir.0.join("plan.bin").display().to_string();
    let (out_dir, metrics) = (dir.0.join("out"), dir.0.join("metrics.json"));
    let bytes = std::fs::read(&plan).expect("plan");
    let frames: Vec<Vec<u8>> = (0..6)
        .map(|s| adcnn_core::npy::write_f32(&support::input(&bytes, s).into_dyn()))
        .collect();
    let (out_s, metrics_s) = (out_dir.display().to_string(), metrics.display().to_string());
    let child = on_stdin(
        &[
            plan.as_str(),
            "--input",
            "-",
            "--rejoin-every",
            "0.05",
            "--output",
            &out_s,
            "--metrics",
            &metrics_s,
        ],
        &remote_args(&dir, &workers),
    );
    // Killed on drop, should the test fail before it ends.
    let mut coordinator = Processes {
        children: vec![child],
        overrides: Vec::new(),
    };
    let child = &mut coordinator.children[0];
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // stderr, line by line, from a thread (the coordinator writes it while we wait on stdout).
    let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let mut errors = Vec::new();
    let mut done = 0usize;
    // Writes frame `i` (of the six, round robin) and waits for its line.
    let mut one_frame = |stdin: &mut std::process::ChildStdin, i: usize| {
        use std::io::Write;
        stdin.write_all(&frames[i % 6]).expect("writes");
        stdin.flush().expect("flushes");
        loop {
            let line = lines
                .next()
                .expect("the coordinator prints a line per frame")
                .expect("reads");
            if line.starts_with(&format!("{i:06}")) {
                break;
            }
        }
    };
    for _ in 0..3 {
        one_frame(&mut stdin, done);
        done += 1;
    }
    let w2_address = workers.overrides[1]
        .split_once('=')
        .expect("NAME=ADDRESS")
        .1
        .to_string();
    let w2 = &mut workers.children[1];
    w2.kill().expect("kills w2");
    w2.wait().expect("w2 ends");
    for _ in 0..3 {
        one_frame(&mut stdin, done);
        done += 1;
    }
    errors.extend(err_rx.try_iter());
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with("warning: node w2 was lost")),
        "{errors:?}"
    );
    // A new w2 on the same address; frames until it is back (at most 2000, 50 ms apart tries).
    workers.spawn(&dir.0.join("token"), &w2_address);
    let mut back = None;
    while back.is_none() && done < 2000 {
        one_frame(&mut stdin, done);
        done += 1;
        errors.extend(err_rx.try_iter());
        back = errors
            .iter()
            .any(|l| l.starts_with("note: node w2 is back"))
            .then_some(done);
    }
    assert!(back.is_some(), "w2 did not come back: {errors:?}");
    // Re-planning is on (the default): w2 gets tiles again once the tiles are re-planned
    // for it, which the coordinator says. Frames until then (at most 2000), then two more.
    let replanned = |errors: &[String]| {
        errors
            .iter()
            .any(|l| l.starts_with("note: re-planned (node w2 is back)"))
    };
    while !replanned(&errors) && done < 2000 {
        one_frame(&mut stdin, done);
        done += 1;
        errors.extend(err_rx.try_iter());
    }
    assert!(replanned(&errors), "no re-plan for w2: {errors:?}");
    for _ in 0..2 {
        one_frame(&mut stdin, done);
        done += 1;
    }
    drop(stdin);
    let out = coordinator
        .children
        .pop()
        .expect("the coordinator")
        .wait_with_output()
        .expect("ends");
    err_reader.join().expect("stderr read");
    assert!(out.status.success(), "{errors:?}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metrics).expect("metrics")).expect("JSON");
    let w2 = &m["nodes"][2];
    assert_eq!(w2["lost"], false, "{m}");
    assert_eq!(w2["rejoined"], 1, "{m}");
    let frames_m = m["frames"].as_array().expect("frames");
    assert_eq!(frames_m.len(), done);
    let last = &frames_m[done - 1];
    assert!(last["node_busy_ms"][2].as_f64() > Some(0.0), "{last}");
    // The same frames in process, without the fault.
    let local_dir = dir.0.join("local");
    let mut local = Command::new(EXE)
        .args([plan.as_str(), "--local", "--input", "-", "--output"])
        .arg(&local_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("runs");
    {
        use std::io::Write;
        let mut stdin = local.stdin.take().expect("stdin");
        for f in &frames {
            stdin.write_all(f).expect("writes");
        }
    }
    assert!(local.wait().expect("ends").success());
    for i in 0..done {
        let read = |d: &Path, name: &str| {
            adcnn_core::npy::read_f32_file(d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let got = read(&out_dir, &format!("{i:06}.npy"));
        let want = read(&local_dir, &format!("{:06}.npy", i % 6));
        let e = adcnn_core::tensor::rel_l2(got.iter(), want.iter());
        assert!(e <= 1e-5, "frame {i}: relative L2 {e:.2e}");
    }
}
