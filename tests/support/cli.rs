//! Running adcnn's command-line tools as a user does, from the repository root: exit code,
//! stdout and stderr. One harness for every CLI test, included where needed with
//! `#[path = ".../tests/support/cli.rs"] mod cli;` (a binary's path, `CARGO_BIN_EXE_*`, is
//! known only to the tests of the package that builds it).

use std::process::Command;

/// What a run printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// The exit code (-1 when ended by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `exe` with `args` in the repository root (`root`) and waits for it.
pub fn run(exe: &str, root: &str, args: &[&str]) -> Ran {
    let out = Command::new(exe)
        .args(args)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("{exe} runs: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
