//! `adcnnc`: the adcnn compiler's command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Compression, Options, Strategy, explain};
use adcnn_core::format::PlanFile;
use adcnn_core::{out, outln};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};

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
        /// Also print every layer: operator, inputs, output shape, FLOPs, parameters,
        /// receptive field and cumulative stride.
        #[arg(long)]
        layers: bool,
    },
    /// Plan a network for a cluster and write the plan (plan.bin).
    ///
    /// Without --cluster and without a `cluster:` in the network file, the plan targets this
    /// machine: one node per core.
    Build {
        /// The network (YAML).
        network: PathBuf,
        /// The cluster (YAML); replaces any `cluster:` in the network file.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// How to search for the plan.
        #[arg(long, default_value = "auto", value_parser = strategies())]
        strategy: Strategy,
        /// Force a tile grid ROWSxCOLS on every partitioned segment, e.g. 2x2.
        #[arg(long, value_parser = parse_grid)]
        grid: Option<(usize, usize)>,
        /// Compression of tile outputs on the wire.
        #[arg(long = "compress", default_value = "none", value_parser = compressions())]
        compression: Compression,
        /// Let `auto` choose FDSP segments, which change the output near tile borders.
        #[arg(long)]
        allow_approx: bool,
        /// Where to write the plan.
        #[arg(short, long, default_value = "plan.bin")]
        output: PathBuf,
    },
    /// Show a plan: as text (default), JSON, or an SVG picture of the tiles.
    Explain {
        plan: PathBuf,
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
    },
    /// Run a network (YAML) on the reference interpreter, whole, on one input.
    ///
    /// The input is a .npy float32 tensor ([C, H, W] or [1, C, H, W]) or an image (PNG,
    /// JPEG), resized and normalised as the network's `input.image` section says. Prints the
    /// top classes of a classifier. (Plans run with `adcnn-run`.)
    Run {
        /// The network (YAML).
        network: PathBuf,
        /// The input: .npy tensor or image.
        #[arg(long)]
        input: PathBuf,
        /// Write the output tensor here (.npy).
        #[arg(long)]
        output: Option<PathBuf>,
        /// How many classes to print for a classifier.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExplainFormat {
    Text,
    Json,
    Svg,
}

/// `--strategy`'s values, each with its one-line description.
fn strategies() -> impl TypedValueParser<Value = Strategy> {
    let values = Strategy::ALL.map(|s| PossibleValue::new(s.name()).help(s.help()));
    PossibleValuesParser::new(values).map(|s| s.parse().unwrap_or(Strategy::Auto))
}

/// `--compress`'s values.
fn compressions() -> impl TypedValueParser<Value = Compression> {
    let help = |c: Compression| match c {
        Compression::None => "exact float32",
        Compression::Q8 => "8-bit uniform quantisation, per tile and channel",
        Compression::Q4 => "4-bit, likewise",
    };
    let values = Compression::ALL.map(|c| PossibleValue::new(c.name()).help(help(c)));
    PossibleValuesParser::new(values).map(|s| s.parse().unwrap_or(Compression::None))
}

fn parse_grid(s: &str) -> Result<(usize, usize), String> {
    let (r, c) = s
        .split_once(['x', '×'])
        .ok_or("expected ROWSxCOLS, e.g. 2x2")?;
    let r: usize = r
        .trim()
        .parse()
        .map_err(|_| format!("`{r}` is not a number of rows"))?;
    let c: usize = c
        .trim()
        .parse()
        .map_err(|_| format!("`{c}` is not a number of columns"))?;
    if r == 0 || c == 0 || r * c > 256 {
        return Err("rows and columns must be at least 1, at most 256 tiles".into());
    }
    Ok((r, c))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            file,
            cluster,
            layers,
        } => {
            let checked = adcnn_compiler::check::check(&file, cluster.as_deref());
            if checked.is_ok() {
                for line in checked.summary() {
                    outln!("{line}");
                }
                if let (true, Some((graph, _))) = (layers, &checked.network) {
                    out!("{}", graph.layer_table());
                }
                ExitCode::SUCCESS
            } else {
                eprint!("{}", checked.render());
                ExitCode::FAILURE
            }
        }
        Command::Build {
            network,
            cluster,
            strategy,
            grid,
            compression,
            allow_approx,
            output,
        } => {
            let opts = Options {
                strategy,
                grid,
                compression,
                allow_approx,
            };
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            match build(&network, cluster.as_deref(), &opts, cores) {
                Ok(built) => {
                    if let Err(e) = adcnn_core::npy::write_atomically(&output, &built.bytes) {
                        eprintln!("error: cannot write {}: {e}", output.display());
                        return ExitCode::FAILURE;
                    }
                    out!("{}", built.summary());
                    outln!("wrote {} ({} bytes)", output.display(), built.bytes.len());
                    ExitCode::SUCCESS
                }
                Err(adcnn_compiler::build::BuildError::Check(rendered)) => {
                    eprint!("{rendered}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain { plan, format: how } => {
            // The plan section alone: explaining a plan reads none of its weights.
            match PlanFile::open(&plan).and_then(|f| f.header()) {
                Ok(header) => {
                    let out = match how {
                        ExplainFormat::Text => explain::text(&header),
                        ExplainFormat::Json => explain::json(&header),
                        ExplainFormat::Svg => explain::svg(&header),
                    };
                    out!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", plan.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            network,
            input,
            output,
            top_k,
        } => match run(&network, &input, output.as_deref(), top_k) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        },
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
            outln!(
                "{:<24} {:>5}  {status}",
                format!("{}{domain}", o.op_type),
                o.count
            );
            all &= o.supported;
        }
        if all {
            outln!("all {} operator types are supported", ops.len());
            return Ok(ExitCode::SUCCESS);
        }
        outln!(
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
    outln!("{}", written.summary());
    Ok(ExitCode::SUCCESS)
}

/// `adcnnc run`: the network on the reference interpreter.
fn run(network: &Path, input: &Path, output: Option<&Path>, k: usize) -> Result<(), String> {
    let checked = adcnn_compiler::check::check(network, None);
    if !checked.is_ok() {
        return Err(checked.render().trim_end().to_string());
    }
    let (graph, weights) = checked
        .network
        .as_ref()
        .ok_or_else(|| format!("error: {} describes no network", network.display()))?;
    let x =
        adcnn_core::input::load(input, &graph.input.to_net()).map_err(|e| format!("error: {e}"))?;
    let started = std::time::Instant::now();
    let out =
        adcnn_compiler::reference::run(graph, weights, &x).map_err(|e| format!("error: {e}"))?;
    let elapsed = started.elapsed();
    outln!("{}", graph.summary());
    outln!(
        "ran on the reference interpreter in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    adcnn_core::report::print_top_k(&out, k);
    if let Some(path) = output {
        adcnn_core::npy::write_f32_file(path, &out.into_dyn())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}
