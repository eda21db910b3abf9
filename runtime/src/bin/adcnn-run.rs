//! `adcnn-run`: run a plan (or a network directly) on an input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use adcnn_compiler::check::check;
use adcnn_compiler::graph::LayerGraph;
use adcnn_compiler::plan::Compression;
use adcnn_compiler::plan::format::{self, MAGIC};
use adcnn_compiler::{npy, reference};
use adcnn_runtime::exec::Executor;
use adcnn_runtime::{input, report};
use clap::Parser;
use ndarray::Array3;

/// Run a plan built by `adcnnc build` on the in-process cluster (a coordinator and one
/// thread per cluster node), or a network (YAML) directly on the reference interpreter.
///
/// The input is a .npy float32 tensor ([C, H, W] or [1, C, H, W]) or an image (PNG, JPEG),
/// resized and normalised as the network's `input.image` section says.
#[derive(Debug, Parser)]
#[command(name = "adcnn-run", version, about)]
struct Cli {
    /// plan.bin, or a network (YAML).
    plan: PathBuf,
    /// The input: .npy tensor or image.
    #[arg(long)]
    input: PathBuf,
    /// Write the output tensor here (.npy).
    #[arg(long)]
    output: Option<PathBuf>,
    /// How many classes to print for a classifier.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Write a Chrome trace-event JSON of the run (one track per node; open in Perfetto).
    #[arg(long)]
    trace: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn is_plan(path: &Path) -> Result<bool, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    let mut head = [0u8; 8];
    let n = f
        .read(&mut head)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    Ok(n == 8 && &head == MAGIC)
}

fn run(cli: &Cli) -> Result<(), String> {
    if is_plan(&cli.plan)? {
        run_plan(cli)
    } else {
        run_network(cli)
    }
}

fn print_top_k(graph: &LayerGraph, out: &Array3<f32>, k: usize) {
    match report::top_k(out, k) {
        Some(top) => {
            println!("top-{}:", top.len());
            for (rank, (class, p)) in top.iter().enumerate() {
                println!("  {:>2}. class {class:>4}  p = {p:.4}", rank + 1);
            }
        }
        None => println!("output {}", graph.output_shape()),
    }
}

fn write_output(cli: &Cli, out: &Array3<f32>) -> Result<(), String> {
    if let Some(path) = &cli.output {
        npy::write_f32_file(path, &out.clone().into_dyn())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn run_plan(cli: &Cli) -> Result<(), String> {
    let bytes = std::fs::read(&cli.plan)
        .map_err(|e| format!("error: cannot read {}: {e}", cli.plan.display()))?;
    let loaded =
        format::decode(&bytes).map_err(|e| format!("error: {}: {e}", cli.plan.display()))?;
    let x = input::load(&cli.input, &loaded.graph.input).map_err(|e| format!("error: {e}"))?;
    let exec = Executor::new(loaded);
    // One warm-up run: first-touch allocations and thread start-up are not the plan's cost.
    exec.run(&x).map_err(|e| format!("error: {e}"))?;
    let r = exec.run(&x).map_err(|e| format!("error: {e}"))?;
    let lp = exec.plan();
    let (plan, graph) = (&lp.plan, &lp.graph);
    println!(
        "{} on {} (in-process, strategy {}, compression {})",
        plan.network,
        plan.cluster.name,
        plan.strategy.name(),
        plan.compression.name()
    );
    print_top_k(graph, &r.output, cli.top_k);
    println!("per node: busy measured / predicted");
    for (i, n) in plan.cluster.nodes.iter().enumerate() {
        println!(
            "  {:<10} {:>9.2} ms / {:>9.2} ms",
            n.name, r.node_busy_ms[i], plan.node_busy_ms[i]
        );
    }
    println!(
        "latency: measured {:.2} ms (in-process, links not emulated), predicted {:.2} ms on {}",
        r.measured_ms, plan.predicted_ms, plan.cluster.name
    );
    println!(
        "tile outputs on the wire: {:.1} KiB",
        r.wire_bytes as f64 / 1024.0
    );
    if plan.compression != Compression::None {
        println!(
            "{} compression error on tile outputs: relative L2 {:.2e}",
            plan.compression.name(),
            r.compression_error
        );
    }
    if !plan.is_exact() || plan.compression != Compression::None {
        let exact = reference::run(graph, &lp.weights, &x).map_err(|e| format!("error: {e}"))?;
        let dev = relative_l2(&r.output, &exact);
        println!("deviation of the output from the exact network: relative L2 {dev:.2e}");
    }
    if let Some(path) = &cli.trace {
        std::fs::write(path, r.trace.to_json())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        println!("wrote trace {}", path.display());
    }
    write_output(cli, &r.output)
}

fn relative_l2(a: &Array3<f32>, b: &Array3<f32>) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn run_network(cli: &Cli) -> Result<(), String> {
    let checked = check(&cli.plan, None);
    if !checked.is_ok() {
        return Err(checked.render().trim_end().to_string());
    }
    let (graph, weights) = checked
        .network
        .as_ref()
        .ok_or_else(|| format!("error: {} describes no network", cli.plan.display()))?;
    let x = input::load(&cli.input, &graph.input).map_err(|e| format!("error: {e}"))?;
    let started = Instant::now();
    let out = reference::run(graph, weights, &x).map_err(|e| format!("error: {e}"))?;
    let elapsed = started.elapsed();
    println!("{}", graph.summary());
    println!(
        "ran on the reference interpreter in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    print_top_k(graph, &out, cli.top_k);
    write_output(cli, &out)
}
