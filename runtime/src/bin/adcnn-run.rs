//! `adcnn-run`: run a plan built by `adcnnc build`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use adcnn_core::format::{self, DecodedPlan};
use adcnn_core::plan::Compression;
use adcnn_core::program::run_segments;
use adcnn_core::tensor::rel_l2;
use adcnn_core::weights::SplitMix64;
use adcnn_core::{input, npy, outln, report};
use adcnn_kernels::{CompiledKernels, Profile};
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::worker::Kernels;
use clap::Parser;
use ndarray::Array3;

/// Run a plan built by `adcnnc build` on the in-process cluster: a coordinator and a worker
/// per cluster node, each node's tiles on threads of its own, in this process.
///
/// The input is a .npy float32 tensor ([C, H, W] or [1, C, H, W]) or an image (PNG, JPEG),
/// resized and normalised as the network's `input.image` section says. (A network file runs
/// on the reference interpreter with `adcnnc run`.)
#[derive(Debug, Parser)]
#[command(name = "adcnn-run", version, about)]
struct Cli {
    /// plan.bin
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
    /// or `reference` (the plain operators).
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
    let result = if std::env::args().nth(1).as_deref() == Some("bench") {
        bench(&BenchCli::parse_from(std::env::args().skip(1)))
    } else {
        run(&Cli::parse())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<DecodedPlan, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    format::decode(&bytes).map_err(|e| {
        let yaml = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"));
        match e {
            format::FormatError::NotAPlan if yaml => format!(
                "error: {} is a network, not a plan: build a plan with `adcnnc build {0}`, or run \
                 the network on the reference interpreter with `adcnnc run {0} --input …`",
                path.display()
            ),
            e => format!("error: {}: {e}", path.display()),
        }
    })
}

fn kernels(name: &str) -> Result<Kernels, String> {
    Kernels::from_name(name).ok_or_else(|| {
        let names = Kernels::NAMES.map(|n| format!("`{n}`")).join(", ");
        format!("error: --kernels takes {names}, not `{name}`")
    })
}

/// The network the plan computes, whole (every segment's program on whole tensors, then the
/// tail): what an approximate plan or a compressed wire deviates from.
fn exact(cluster: &LocalCluster, x: &Array3<f32>) -> Result<Array3<f32>, String> {
    let mut current = x.clone();
    for p in cluster.segments() {
        current = p.run(&current).map_err(|e| format!("error: {e}"))?;
    }
    cluster
        .tail()
        .run(&current)
        .map_err(|e| format!("error: {e}"))
}

fn run(cli: &Cli) -> Result<(), String> {
    let plan = load(&cli.plan)?;
    let x =
        input::load(&cli.input, &plan.header.network.input).map_err(|e| format!("error: {e}"))?;
    let mut cluster = LocalCluster::with_kernels(plan, kernels(&cli.kernels)?, 1);
    if let Some(e) = cluster.compile_error() {
        eprintln!("warning: {e}; that node runs the reference kernels");
    }
    // One warm-up run: first-touch allocations and thread start-up are not the plan's cost.
    cluster.run(&x).map_err(|e| format!("error: {e}"))?;
    let r = cluster.run(&x).map_err(|e| format!("error: {e}"))?;
    let plan = &cluster.header().plan;
    outln!(
        "{} on {} (in-process, strategy {}, compression {})",
        plan.network,
        plan.cluster.name,
        plan.strategy.name(),
        plan.compression.name()
    );
    report::print_top_k(&r.output, cli.top_k);
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
        let want = exact(&cluster, &x)?;
        let dev = rel_l2(r.output.iter(), want.iter());
        outln!("deviation of the output from the exact network: relative L2 {dev:.2e}");
    }
    if let Some(path) = &cli.trace {
        std::fs::write(path, r.trace.to_json())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote trace {}", path.display());
    }
    if let Some(path) = &cli.output {
        npy::write_f32_file(path, &r.output.clone().into_dyn())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote {}", path.display());
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn bench(cli: &BenchCli) -> Result<(), String> {
    let lp = load(&cli.plan)?;
    let which = kernels(&cli.kernels)?;
    let s = lp.header.network.input.shape;
    let mut rng = SplitMix64::new(1);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
    let runs = cli.runs.max(1);
    let mut times = Vec::with_capacity(runs);
    let mut profile = Profile::new();
    let compile_ms;
    let weight_bytes;
    let gflop = lp.header.network.flops() as f64 / 1e9;
    let header = lp.header.clone();
    if cli.threads <= 1 {
        let parts: Vec<_> = header.plan.segments.iter().zip(&lp.segments).collect();
        let compiled = match which.compile_options() {
            Some(opts) => Some(
                CompiledKernels::compile(&parts, |_| true, &opts)
                    .map_err(|e| format!("error: {e}"))?,
            ),
            None => None,
        };
        compile_ms = compiled.as_ref().map_or(0.0, |k| k.compile_ms);
        weight_bytes = compiled.as_ref().map_or(0, CompiledKernels::weight_bytes);
        let once =
            |mut profile: Option<&mut Profile>| -> Result<Array3<f32>, String> {
                let head = run_segments(&header.plan, &lp.segments, &x, |prog, seg, tile, t| {
                    match &compiled {
                        Some(k) => k.run_tile_profiled(prog, seg, tile, t, profile.as_deref_mut()),
                        None => prog.run_tile(seg, tile, t),
                    }
                })
                .map_err(|e| format!("error: {e}"))?;
                match &compiled {
                    Some(_) => CompiledKernels::run_tail(&lp.tail, &head, profile),
                    None => lp.tail.run(&head),
                }
                .map_err(|e| format!("error: {e}"))
            };
        for _ in 0..2 {
            once(None)?;
        }
        for _ in 0..runs {
            let t = Instant::now();
            once(cli.profile.then_some(&mut profile))?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    } else {
        let mut cluster = LocalCluster::with_kernels(lp.clone(), which, 1);
        if let Some(e) = cluster.compile_error() {
            return Err(format!("error: {e}"));
        }
        compile_ms = cluster.compile_ms().iter().copied().fold(0.0, f64::max);
        weight_bytes = cluster.weight_bytes().iter().copied().max().unwrap_or(0);
        for _ in 0..2 {
            cluster.run(&x).map_err(|e| format!("error: {e}"))?;
        }
        for _ in 0..runs {
            times.push(
                cluster
                    .run(&x)
                    .map_err(|e| format!("error: {e}"))?
                    .measured_ms,
            );
        }
    }
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    if cli.quiet {
        let mib = weight_bytes as f64 / (1 << 20) as f64;
        outln!("bench {p50:.3} {p99:.3} {compile_ms:.1} {gflop:.4} {mib:.1}");
        return Ok(());
    }
    let plan = &header.plan;
    outln!(
        "{} plan {} ({} segment(s)), kernels {}, {} thread(s), {runs} runs after 2 warm-up",
        plan.network,
        plan.strategy.name(),
        plan.segments.len(),
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
