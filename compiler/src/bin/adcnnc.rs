//! `adcnnc`: the adcnn compiler's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Compile CNNs described in adcnn's YAML DSL into partition plans for edge clusters.
#[derive(Debug, Parser)]
#[command(name = "adcnnc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and validate a network and/or cluster file.
    ///
    /// Prints one summary line (layers, parameters, GFLOPs, output shape) and exits 0, or
    /// prints every error with file:line:col and a code frame and exits 1.
    Check {
        /// The YAML file: `network:` and/or `cluster:`.
        file: PathBuf,
        /// A separate cluster file (replaces any `cluster:` in FILE).
        #[arg(long)]
        cluster: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, cluster } => {
            let checked = adcnn_compiler::check::check(&file, cluster.as_deref());
            if checked.is_ok() {
                for line in checked.summary() {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            } else {
                eprint!("{}", checked.render());
                ExitCode::FAILURE
            }
        }
    }
}
