//! The emulated cluster script, `tests/testbed/run.sh`, without root or network: its
//! `--dry-run` listing for both example clusters is snapshotted in `snapshots/testbed/` (every
//! namespace, veth, qdisc, cgroup and process it would create, in order), and malformed cluster
//! files and command lines are refused with located messages and exit status 2 before
//! anything is touched. (Running it for real needs root; the book's "Emulated cluster" page
//! shows how it was checked.)

use std::path::Path;
use std::process::{Command, Output};

use adcnn_tests::repo_root;

const SCRIPT: &str = "tests/testbed/run.sh";

/// `bash tests/testbed/run.sh ARGS` in `dir`, with a clean environment for the script.
fn testbed(dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join(SCRIPT))
        .args(args)
        .current_dir(dir)
        .env_remove("ADCNN_RUN")
        // Copied into the workers' .start scripts when set.
        .env_remove("ADCNN_LOG")
        .env_remove("RUST_BACKTRACE")
        .env("LC_ALL", "C")
        .output()
        .expect("bash runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

fn dry_run_snapshot(name: &str, args: &[&str]) {
    let out = testbed(repo_root(), args);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "", "a dry run prints only its listing");
    // Placeholders, never this run's values: no temp dir, no pid, no absolute repo path.
    let root = repo_root().display().to_string();
    assert!(!stdout.contains(&root), "the listing leaks {root}");
    assert!(!stdout.contains("/tmp/"), "the listing leaks a temp dir");
    insta::with_settings!({
        snapshot_path => "../snapshots/testbed",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("{SCRIPT} {}", args.join(" ")),
    }, {
        insta::assert_snapshot!(name, stdout);
    });
}

#[test]
fn dry_run_of_edge4_lists_every_command() {
    let args = [
        "--dry-run",
        "dsl-examples/edge4.yaml",
        "--",
        "bench",
        "plan.bin",
    ];
    dry_run_snapshot("edge4-dry-run", &args);
    let out = text(&testbed(repo_root(), &args).stdout);
    // Both directions of every worker's link are shaped; the coordinator's is not.
    for (i, ip) in [(2, "10.77.0.11"), (3, "10.77.0.12")] {
        assert!(out.contains(&format!("addr add {ip}/24 dev adv{i}")));
        assert!(out.contains(&format!("dev adv{i} root tbf rate 100mbit")));
        assert!(out.contains(&format!("dev adb{i} root tbf rate 100mbit")));
    }
    assert!(
        !out.contains("dev adv1 root tbf"),
        "the gateway's link is shaped"
    );
    // The scale: 44 GFLOP/s at 88 per core is half a core, 22 a quarter.
    assert!(
        out.contains("echo 50000 > /sys/fs/cgroup/cpu/adcnn-testbed/edge4/edge1/cpu.cfs_quota_us")
    );
    assert!(
        out.contains("echo 25000 > /sys/fs/cgroup/cpu/adcnn-testbed/edge4/edge3/cpu.cfs_quota_us")
    );
    // Each worker's .start script starts it exactly as the testbed did, appending to its log.
    let started: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with(".log 2>&1 < /dev/null &") && l.contains(" > <rundir>/"))
        .collect();
    assert_eq!(started.len(), 4, "one start per worker");
    for line in started {
        let again = line.replace(" > <rundir>/", " >> <rundir>/");
        let node = line
            .split("ADCNN_TESTBED_NODE=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no node in {line}"));
        let script = out
            .split(&format!("cat > <rundir>/{node}.start <<'EOF'\n"))
            .nth(1)
            .and_then(|s| s.split("\nEOF\n").next())
            .unwrap_or_else(|| panic!("no <rundir>/{node}.start"));
        assert!(script.lines().any(|l| l == again), "{node}.start: {script}");
        assert!(script.contains(&format!("echo $! > <rundir>/{node}.pid")));
        assert!(out.contains(&format!("{line}\necho $! > <rundir>/{node}.pid\n")));
    }
    assert!(
        out.contains("'dir <rundir>'"),
        "the state file names the run directory"
    );
    // The same listing is stable from run to run.
    assert_eq!(out, text(&testbed(repo_root(), &args).stdout));
}

#[test]
fn dry_run_of_lan8_insecure_lists_every_command() {
    dry_run_snapshot(
        "lan8-insecure-dry-run",
        &[
            "--dry-run",
            "--insecure",
            "--adcnn-run",
            "/opt/adcnn/bin/adcnn-run",
            "dsl-examples/lan8.yaml",
            "--",
            "bench",
            "plan.bin",
            "--runs",
            "5",
        ],
    );
}

#[test]
fn the_cpu_scale_is_an_option() {
    let out = testbed(
        repo_root(),
        &[
            "--dry-run",
            "--gflops-per-core",
            "44",
            "dsl-examples/edge4.yaml",
            "--",
            "bench",
            "plan.bin",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    // 44 GFLOP/s = one full core: 1 thread; 22 = half.
    assert!(
        stdout.contains(
            "echo 100000 > /sys/fs/cgroup/cpu/adcnn-testbed/edge4/edge1/cpu.cfs_quota_us"
        )
    );
    assert!(
        stdout
            .contains("echo 50000 > /sys/fs/cgroup/cpu/adcnn-testbed/edge4/edge3/cpu.cfs_quota_us")
    );
}

#[test]
fn the_cpu_period_is_an_option() {
    let out = testbed(
        repo_root(),
        &[
            "--dry-run",
            "--cpu-period-us",
            "10000",
            "dsl-examples/edge4.yaml",
            "--",
            "bench",
            "plan.bin",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Half a core of a 10 ms period; a quarter; one thread each.
    for (v, file) in [
        (10000, "edge1/cpu.cfs_period_us"),
        (5000, "edge1/cpu.cfs_quota_us"),
        (2500, "edge3/cpu.cfs_quota_us"),
    ] {
        let line = format!("echo {v} > /sys/fs/cgroup/cpu/adcnn-testbed/edge4/{file}");
        assert!(stdout.contains(&line), "no `{line}` in\n{stdout}");
    }
    assert!(!stdout.contains("100000"), "{stdout}");
}

/// Malformed cluster files, each refused with `FILE:LINE: message` (snapshotted together).
const MALFORMED: &[(&str, &str)] = &[
    ("no-cluster.yaml", "network:\n  name: x\n"),
    (
        "names-another-file.yaml",
        "network:\n  name: x\ncluster: edge4.yaml\n",
    ),
    (
        "bad-nodes.yaml",
        "\
cluster:
  name: bad
  coordinator: gw
  nodes:
    - { name: gw, address: \"10.9.0.1:7070\", gflops: 44, worker: false }
    - { name: a, address: \"10.9.0.2:7070\", gflops: 44, mbps: 100, colour: red }
    - { name: b, address: \"10.9.0.3:7070\", mbps: -5, latency_ms: soon }
    - { name: c, address: \"10.9.0.4:7070\", gflops: 22, mbps: 100, worker: maybe }
    - { name: d, address: \"10.9.0.5:7070\", gflops: 22,
        mbps: 100 }
",
    ),
    (
        "bad-addresses.yaml",
        "\
cluster:
  coordinator: boss
  nodes:
    - { name: gw, address: \"jetson.local:7070\", gflops: 44 }
    - { name: a, address: \"10.9.0.2:7070\", gflops: 44, mbps: 100 }
    - { name: a, address: \"10.9.0.2:7071\", gflops: 44, mbps: 100 }
    - { name: b, address: \"10.9.0.300:7070\", gflops: 44, mbps: 100 }
    - { name: c, address: \"10.9.0.4:99999\", gflops: 44, mbps: 100 }
    - { name: d, address: \"10.9.0.5:7070\", gflops: 44 }
    - { name: e, gflops: 44, mbps: 100 }
",
    ),
    (
        "no-worker.yaml",
        "\
cluster:
  name: two words
  coordinator: gw
  nodes:
    - { name: gw, address: \"10.9.0.1:7070\", gflops: 44, worker: false }
",
    ),
    (
        "empty-nodes.yaml",
        "cluster:\n  name: x\n  coordinator: gw\n  nodes:\n",
    ),
    (
        "flow-list.yaml",
        "cluster:\n  coordinator: gw\n  nodes: [ { name: gw, gflops: 1 } ]\n",
    ),
];

#[test]
fn malformed_cluster_files_are_refused_before_anything_is_touched() {
    let dir = std::env::temp_dir().join(format!("adcnn-testbed-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut report = String::new();
    for (name, yaml) in MALFORMED {
        std::fs::write(dir.join(name), yaml).expect("writes");
        // The same refusal with and without --dry-run: the file is read before the
        // prerequisites (root, ip, cgroups, the binary) are checked.
        for dry in [true, false] {
            let mut args = vec![name, "--", "bench", "plan.bin"];
            if dry {
                args.insert(0, "--dry-run");
            }
            let out = testbed(&dir, &args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
            assert_eq!(text(&out.stdout), "", "{name}: nothing is listed");
            assert!(
                stderr.contains(&format!("{name}:")),
                "{name}: the message names the file: {stderr}"
            );
            assert!(
                stderr.contains("is not a cluster file the testbed can run"),
                "{name}: {stderr}"
            );
            if dry {
                report.push_str(&format!(
                    "$ run.sh --dry-run {name} -- bench plan.bin\n{stderr}\n"
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    insta::with_settings!({
        snapshot_path => "../snapshots/testbed",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => "tests/testbed/run.sh on the malformed cluster files of tests/testbed.rs",
    }, {
        insta::assert_snapshot!("malformed-cluster-files", report);
    });
}

#[test]
fn command_line_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "no cluster file"),
        (&["dsl-examples/edge4.yaml"], "no coordinator command"),
        (&["dsl-examples/edge4.yaml", "--"], "no coordinator command"),
        (
            &[
                "dsl-examples/edge4.yaml",
                "--",
                "bench",
                "--cluster",
                "x.yaml",
            ],
            "do not pass --cluster",
        ),
        (&["--frobnicate"], "unknown option --frobnicate"),
        (
            &["--gflops-per-core", "0", "x.yaml", "--", "bench"],
            "--gflops-per-core",
        ),
        (
            &["--cpu-period-us", "500", "x.yaml", "--", "bench"],
            "--cpu-period-us must be a whole number from 1000 to 1000000",
        ),
        (
            &["no/such.yaml", "--", "bench"],
            "no/such.yaml: no such file",
        ),
        (
            &["--cleanup", "--", "bench"],
            "--cleanup takes no coordinator command",
        ),
    ];
    for (args, message) in cases {
        let out = testbed(repo_root(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: `{message}` not in {stderr}"
        );
    }
}

#[test]
fn help_documents_every_option() {
    let out = testbed(repo_root(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    let script = std::fs::read_to_string(repo_root().join(SCRIPT)).expect("script");
    // Every `--option)` the parser accepts appears in --help.
    for line in script.lines() {
        let line = line.trim();
        if let Some(opt) = line.strip_suffix(')')
            && opt.starts_with('-')
            && !opt.contains('*')
        {
            for o in opt
                .split(" | ")
                .filter(|o| o.starts_with("--") && *o != "--")
            {
                assert!(help.contains(o), "--help does not mention {o}");
            }
        }
    }
    for word in [
        "ADCNN_EMULATED_LATENCY_MS",
        "netem",
        "--gflops-per-core",
        "cfs_quota_us",
    ] {
        assert!(help.contains(word), "--help does not mention {word}");
    }
}

#[cfg(unix)]
#[test]
fn the_script_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    for f in [SCRIPT, "tests/testbed/standin.py"] {
        let mode = std::fs::metadata(repo_root().join(f))
            .expect("exists")
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{f} is not executable");
    }
}
