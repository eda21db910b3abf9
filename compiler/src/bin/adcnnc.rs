//! `adcnnc`: the adcnn compiler's command line.

use std::path::{Path, PathBuf};
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
    /// Import an ONNX model (e.g. exported from PyTorch) into a DSL file and its weights.
    ///
    /// Writes OUTPUT (default: the model's name with `.yaml`) and the weights as a
    /// `.safetensors` file beside it. With `--check`, only lists the model's operators and
    /// whether each is supported.
    Import {
        /// The `.onnx` file.
        model: PathBuf,
        /// The DSL file to write; the weights go beside it with the extension `.safetensors`.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// List the operators and whether each is supported; write nothing.
        #[arg(long)]
        check: bool,
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
        Command::Import {
            model,
            output,
            check,
        } => match import(&model, output, check) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}: {e}", model.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn import(
    model: &Path,
    output: Option<PathBuf>,
    check: bool,
) -> Result<ExitCode, adcnn_compiler::onnx::ImportError> {
    use adcnn_compiler::onnx;
    if check {
        let bytes = std::fs::read(model).map_err(|source| onnx::ImportError::Io {
            path: model.to_path_buf(),
            source,
        })?;
        let ops = onnx::inventory(&bytes)?;
        let mut all = true;
        for o in &ops {
            let domain = if o.domain.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.domain)
            };
            let status = match (o.supported, o.constant_only) {
                (true, false) => "supported",
                (true, true) => "supported on constant inputs (folded)",
                (false, _) => "NOT SUPPORTED",
            };
            println!(
                "{:<24} {:>5}  {status}",
                format!("{}{domain}", o.op_type),
                o.count
            );
            all &= o.supported;
        }
        if all {
            println!("all {} operator types are supported", ops.len());
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "some operators are not supported; supported: {} (and on constants only: {})",
            onnx::SUPPORTED_OPS.join(", "),
            onnx::CONSTANT_ONLY_OPS.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    let yaml = output.unwrap_or_else(|| {
        PathBuf::from(model.file_name().unwrap_or(model.as_os_str())).with_extension("yaml")
    });
    let written = onnx::import_file(model, &yaml)?;
    println!("{}", written.summary());
    Ok(ExitCode::SUCCESS)
}
