//! `adcnn-run`: run a plan (or a network directly) on an input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use adcnn_compiler::check::check;
use adcnn_compiler::codegen::{CompiledKernels, Profile};
use adcnn_compiler::graph::LayerGraph;
use adcnn_compiler::plan::Compression;
use adcnn_compiler::plan::format::{self, MAGIC};
use adcnn_compiler::reference::tile::run_plan as reference_run_plan;
use adcnn_compiler::{npy, outln, reference};
use adcnn_runtime::exec::{Executor, Kernels};
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
    /// Tile kernels: `jit` (compiled: host GEMM, Winograd for 3×3 convolutions, Cranelift),
    /// `gemm` (compiled, no Winograd: a quarter of the 3×3 layers' prepared weight memory)
    /// or `reference` (the interpreter).
    #[arg(long, default_value = "jit")]
    kernels: String,
}

/// `adcnn-run bench PLAN`: latency of a plan on a seeded random input (a benchmark: it
/// measures and prints; nothing is asserted).
#[derive(Debug, Parser)]
#[command(name = "adcnn-run bench")]
struct BenchCli {
    /// plan.bin
    plan: PathBuf,
    /// 1: every tile on the calling thread, one after another (no worker threads);
    /// more: the in-process cluster, one thread per node.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed runs after two warm-up runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// `jit`, `gemm` (compiled without Winograd) or `reference`.
    #[arg(long, default_value = "jit")]
    kernels: String,
    /// Print milliseconds per kind of layer work (one thread, JIT kernels).
    #[arg(long)]
    profile: bool,
    /// Print one machine-readable line: `bench <p50 ms> <p99 ms> <compile ms> <GFLOP> <prepared weights MiB>`.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("bench") {
        let cli = BenchCli::parse_from(std::env::args().skip(1));
        return match bench(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{message}");
                ExitCode::FAILURE
            }
        };
    }
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
            outln!("top-{}:", top.len());
            for (rank, (class, p)) in top.iter().enumerate() {
                outln!("  {:>2}. class {class:>4}  p = {p:.4}", rank + 1);
            }
        }
        None => outln!("output {}", graph.output_shape()),
    }
}

fn write_output(cli: &Cli, out: &Array3<f32>) -> Result<(), String> {
    if let Some(path) = &cli.output {
        npy::write_f32_file(path, &out.clone().into_dyn())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

fn run_plan(cli: &Cli) -> Result<(), String> {
    let bytes = std::fs::read(&cli.plan)
        .map_err(|e| format!("error: cannot read {}: {e}", cli.plan.display()))?;
    let loaded =
        format::decode(&bytes).map_err(|e| format!("error: {}: {e}", cli.plan.display()))?;
    let x = input::load(&cli.input, &loaded.graph.input).map_err(|e| format!("error: {e}"))?;
    let exec = Executor::with_kernels(loaded, kernels(&cli.kernels)?);
    if let Some(e) = exec.compile_error() {
        eprintln!("warning: {e}; that node runs the reference kernels");
    }
    // One warm-up run: first-touch allocations and thread start-up are not the plan's cost.
    exec.run(&x).map_err(|e| format!("error: {e}"))?;
    let r = exec.run(&x).map_err(|e| format!("error: {e}"))?;
    let lp = exec.plan();
    let (plan, graph) = (&lp.plan, &lp.graph);
    outln!(
        "{} on {} (in-process, strategy {}, compression {})",
        plan.network,
        plan.cluster.name,
        plan.strategy.name(),
        plan.compression.name()
    );
    print_top_k(graph, &r.output, cli.top_k);
    outln!("per node: busy measured / predicted");
    for (i, n) in plan.cluster.nodes.iter().enumerate() {
        outln!(
            "  {:<10} {:>9.2} ms / {:>9.2} ms",
            n.name,
            r.node_busy_ms[i],
            plan.node_busy_ms[i]
        );
    }
    outln!(
        "latency: measured {:.2} ms (in-process, links not emulated), predicted {:.2} ms on {}",
        r.measured_ms,
        plan.predicted_ms,
        plan.cluster.name
    );
    outln!(
        "tile outputs on the wire: {:.1} KiB",
        r.wire_bytes as f64 / 1024.0
    );
    if plan.compression != Compression::None {
        outln!(
            "{} compression error on tile outputs: relative L2 {:.2e}",
            plan.compression.name(),
            r.compression_error
        );
    }
    if !plan.is_exact() || plan.compression != Compression::None {
        let exact = reference::run(graph, &lp.weights, &x).map_err(|e| format!("error: {e}"))?;
        let dev = relative_l2(&r.output, &exact);
        outln!("deviation of the output from the exact network: relative L2 {dev:.2e}");
    }
    if let Some(path) = &cli.trace {
        std::fs::write(path, r.trace.to_json())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote trace {}", path.display());
    }
    write_output(cli, &r.output)
}

fn kernels(name: &str) -> Result<Kernels, String> {
    Kernels::from_name(name).ok_or_else(|| {
        let names = Kernels::NAMES.map(|n| format!("`{n}`")).join(", ");
        format!("error: --kernels takes {names}, not `{name}`")
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(cli: &BenchCli) -> Result<(), String> {
    let bytes = std::fs::read(&cli.plan)
        .map_err(|e| format!("error: cannot read {}: {e}", cli.plan.display()))?;
    let lp = format::decode(&bytes).map_err(|e| format!("error: {}: {e}", cli.plan.display()))?;
    let which = kernels(&cli.kernels)?;
    let s = lp.graph.input.shape;
    let mut rng = adcnn_compiler::weights::SplitMix64::new(1);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
    let runs = cli.runs.max(1);
    let mut times = Vec::with_capacity(runs);
    let mut profile = Profile::new();
    let compile_ms;
    let weight_bytes;
    if cli.threads <= 1 {
        let compiled = match which.compile_options() {
            Some(opts) => Some(
                CompiledKernels::compile_with(
                    &lp.graph,
                    &lp.weights,
                    &lp.plan.segments,
                    |_| true,
                    &opts,
                )
                .map_err(|e| format!("error: {e}"))?,
            ),
            None => None,
        };
        compile_ms = compiled.as_ref().map_or(0.0, |k| k.compile_ms);
        weight_bytes = compiled.as_ref().map_or(0, CompiledKernels::weight_bytes);
        let once = |profile: Option<&mut Profile>| match &compiled {
            Some(k) => k.run_plan(&lp.graph, &lp.weights, &lp.plan, &x, profile),
            None => reference_run_plan(&lp.graph, &lp.weights, &lp.plan, &x),
        };
        for _ in 0..2 {
            once(None).map_err(|e| format!("error: {e}"))?;
        }
        for _ in 0..runs {
            let t = Instant::now();
            once(cli.profile.then_some(&mut profile)).map_err(|e| format!("error: {e}"))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    } else {
        let exec = Executor::with_kernels(lp.clone(), which);
        if let Some(e) = exec.compile_error() {
            return Err(format!("error: {e}"));
        }
        compile_ms = exec.compile_ms().iter().copied().fold(0.0, f64::max);
        weight_bytes = exec.weight_bytes().iter().copied().max().unwrap_or(0);
        for _ in 0..2 {
            exec.run(&x).map_err(|e| format!("error: {e}"))?;
        }
        for _ in 0..runs {
            times.push(exec.run(&x).map_err(|e| format!("error: {e}"))?.measured_ms);
        }
    }
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let gflop = lp.graph.layers().iter().map(|l| l.stats.flops).sum::<u64>() as f64 / 1e9;
    if cli.quiet {
        let mib = weight_bytes as f64 / (1 << 20) as f64;
        outln!("bench {p50:.3} {p99:.3} {compile_ms:.1} {gflop:.4} {mib:.1}");
        return Ok(());
    }
    outln!(
        "{} plan {} ({} segment(s)), kernels {}, {} thread(s), {runs} runs after 2 warm-up",
        lp.plan.network,
        lp.plan.strategy.name(),
        lp.plan.segments.len(),
        cli.kernels,
        cli.threads.max(1)
    );
    outln!(
        "p50 {p50:.2} ms  p99 {p99:.2} ms  min {:.2} ms  {:.2} frames/s  {:.1} GFLOP/s ({gflop:.2} GFLOP)",
        times[0],
        1e3 / p50,
        gflop / (p50 / 1e3)
    );
    outln!(
        "kernel compile time: {compile_ms:.1} ms, prepared weights {:.1} MiB (slowest / largest node)",
        weight_bytes as f64 / (1 << 20) as f64
    );
    if cli.profile {
        let total: f64 = profile.values().sum();
        outln!("per kind of work (ms per run):");
        for (k, v) in &profile {
            outln!(
                "  {:>9.2}  {:>5.1} %  {k}",
                v / runs as f64,
                100.0 * v / total
            );
        }
    }
    Ok(())
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
    outln!("{}", graph.summary());
    outln!(
        "ran on the reference interpreter in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    print_top_k(graph, &out, cli.top_k);
    write_output(cli, &out)
}
