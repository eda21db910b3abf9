//! `adcnn-run bench`: a plan's latency and throughput on a seeded random input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use adcnn_core::format::{DecodedPlan, ProgramLayers, decode};
use adcnn_core::outln;
use adcnn_core::program::run_segments;
use adcnn_core::weights::SplitMix64;
use adcnn_kernels::par::Pool;
use adcnn_kernels::{CompiledKernels, CompiledProgram, Profile};
use adcnn_runtime::local::LocalCluster;
use ndarray::Array3;

use crate::adapt::{self, Adapt};
use crate::remote::{self, Remote, open_plan, plan_error};
use crate::run::kernels;
use crate::status::Status;

/// `adcnn-run bench PLAN`: latency of a plan on a seeded random input (a benchmark: it
/// measures and prints; nothing is asserted).
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run bench")]
pub struct BenchCli {
    /// plan.bin
    plan: PathBuf,
    /// Threads per node: each tile's layers are split over this many threads (a node's
    /// cores; default: the `threads` the plan's cluster gives each node, 1 unless it says).
    /// A plan whose tiles are all on one node (or with --sequential) runs tile after tile
    /// on them, the tail with them; any other plan, or with --replan or --steal, runs on
    /// the in-process cluster (a thread per node takes its tiles, the coordinator stitches).
    #[arg(long)]
    threads: Option<usize>,
    /// Every tile on this thread (and its --threads), one after another, whatever nodes the
    /// plan names: the plan's compute alone, as --profile splits it.
    #[arg(long, conflicts_with_all = ["replan", "remote", "steal"])]
    sequential: bool,
    /// Timed runs after two warm-up runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// `jit`, `gemm` (compiled without Winograd) or `reference`.
    #[arg(long, default_value = "jit")]
    kernels: String,
    /// Print milliseconds per kind of layer work (JIT kernels; a plan on one node, or
    /// --sequential).
    #[arg(long)]
    profile: bool,
    /// Print one machine-readable line: `bench <p50 ms> <p99 ms> <compile ms> <GFLOP>
    /// <prepared weights MiB> <frames/s> <bytes on the wire per frame> <predicted ms>`.
    #[arg(long)]
    quiet: bool,
    /// Frames on their way at once in the throughput run (with --remote).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Run on the plan's workers over gRPC (see `adcnn-run --help` for the options) instead
    /// of in this process.
    #[arg(long)]
    remote: bool,
    /// Re-plan the tiles when a node's measured speed drifts (see `adcnn-run --help`); by
    /// default a benchmark measures the plan as it was built. On the in-process cluster or
    /// with --remote; not with --steal.
    #[arg(long)]
    replan: bool,
    #[command(flatten)]
    adapt: Adapt,
    #[command(flatten)]
    net: Remote,
}

/// `--steal`'s depth, checked; not with `--replan`.
fn stealing(cli: &BenchCli) -> Result<Option<usize>, String> {
    let steal = cli.adapt.stealing()?;
    if steal.is_some() && cli.replan {
        return Err("error: --steal and --replan are two ways to balance; choose one".into());
    }
    Ok(steal)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn main(cli: &BenchCli) -> Result<(), String> {
    if cli.remote {
        return remote(cli);
    }
    let lp = load(&cli.plan)?;
    let which = kernels(&cli.kernels)?;
    let s = lp.header.network.input.shape;
    let mut rng = SplitMix64::new(1);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
    let runs = cli.runs.max(1);
    let steal = stealing(cli)?;
    let mut times = Vec::with_capacity(runs);
    let mut profile = Profile::new();
    let compile_ms;
    let weight_bytes;
    let threads_label;
    // Bytes on the wire per frame (none when every tile runs on this thread).
    let mut bytes = 0.0;
    let gflop = lp.header.network.flops() as f64 / 1e9;
    let header = lp.header.clone();
    let nodes: std::collections::BTreeSet<usize> = header
        .plan
        .segments
        .iter()
        .flat_map(|s| s.tiles.iter().map(|t| t.node))
        .collect();
    let in_process_cluster = !cli.sequential && (nodes.len() > 1 || cli.replan || steal.is_some());
    if in_process_cluster && cli.profile {
        return Err(format!(
            "error: --profile times the tiles on this thread: this plan's tiles are on {} nodes, add --sequential",
            nodes.len()
        ));
    }
    if !in_process_cluster {
        let only = nodes.first().map(|&n| header.plan.cluster.nodes[n].threads);
        let threads = cli.threads.or(only).unwrap_or(1).max(1);
        threads_label = format!("{threads} thread(s)");
        let pool = Pool::new(threads).map_err(|e| format!("error: {e}"))?;
        let parts: Vec<_> = header.plan.segments.iter().zip(&lp.segments).collect();
        let compiled = match which.compile_options() {
            Some(opts) => Some(
                CompiledKernels::compile(&parts, |_| true, &opts)
                    .map_err(|e| format!("error: {e}"))?,
            ),
            None => None,
        };
        let tail = match which.compile_options() {
            Some(opts) => {
                Some(CompiledProgram::compile(&lp.tail, &opts).map_err(|e| format!("error: {e}"))?)
            }
            None => None,
        };
        compile_ms = compiled.as_ref().map_or(0.0, |k| k.compile_ms);
        weight_bytes = compiled.as_ref().map_or(0, CompiledKernels::weight_bytes)
            + tail.as_ref().map_or(0, CompiledProgram::weight_bytes);
        let once =
            |mut profile: Option<&mut Profile>| -> Result<Array3<f32>, String> {
                let head = run_segments(&header.plan, &lp.segments, &x, |prog, seg, tile, t| {
                    match &compiled {
                        Some(k) => k.run_tile_profiled(prog, seg, tile, t, profile.as_deref_mut()),
                        None => prog.run_tile(seg, tile, t),
                    }
                })
                .map_err(|e| format!("error: {e}"))?;
                match &tail {
                    Some(k) => k.run_profiled(&lp.tail, &head, profile),
                    None => lp.tail.run(&head),
                }
                .map_err(|e| format!("error: {e}"))
            };
        let timed = || -> Result<(), String> {
            for _ in 0..2 {
                once(None)?;
            }
            for _ in 0..runs {
                let t = Instant::now();
                once(cli.profile.then_some(&mut profile))?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok(())
        };
        adcnn_kernels::par::install(pool.as_ref(), timed)?;
    } else {
        let replan = cli.replan.then(|| cli.adapt.config()).transpose()?;
        threads_label = match cli.threads {
            Some(t) => format!("{} thread(s) per node", t.max(1)),
            None => "threads per node as planned".into(),
        };
        let mut cluster = LocalCluster::with_kernels(lp, which, cli.threads);
        if let Some(e) = cluster.compile_error() {
            return Err(format!("error: {e}"));
        }
        cluster.coordinator().set_stealing(steal);
        if let Some(config) = replan {
            let layers = cluster
                .segments()
                .iter()
                .map(|p| ProgramLayers::of(p))
                .collect();
            adapt::enable(cluster.coordinator(), config, layers)?;
        }
        compile_ms = cluster.compile_ms().iter().copied().fold(0.0, f64::max);
        weight_bytes = cluster.weight_bytes().iter().copied().max().unwrap_or(0);
        for _ in 0..2 {
            cluster.run(&x).map_err(|e| format!("error: {e}"))?;
        }
        let mut status = Status::of(cluster.coordinator(), !cli.quiet);
        for _ in 0..runs {
            let r = cluster.run(&x).map_err(|e| format!("error: {e}"))?;
            status.frame(&r);
            times.push(r.measured_ms);
        }
        status.finish();
        bytes = status.bytes_per_frame();
    }
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    if cli.quiet {
        let mib = weight_bytes as f64 / (1 << 20) as f64;
        outln!(
            "bench {p50:.3} {p99:.3} {compile_ms:.1} {gflop:.4} {mib:.1} {:.3} {bytes:.0} {:.3}",
            1e3 / p50,
            header.plan.predicted_ms
        );
        return Ok(());
    }
    let plan = &header.plan;
    outln!(
        "{} plan {} ({} segment(s)), kernels {}, {}, {runs} runs after 2 warm-up",
        plan.network,
        plan.strategy.name(),
        plan.segments.len(),
        cli.kernels,
        threads_label
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

fn load(path: &Path) -> Result<DecodedPlan, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| plan_error(path, &e))
}

/// The same input, `runs` frames after two warm-up ones, through the plan's workers: one at a
/// time for latency, then `--in-flight` at once for throughput.
fn remote(cli: &BenchCli) -> Result<(), String> {
    let (file, header) = open_plan(&cli.plan)?;
    let tail = Arc::new(file.tail(&header).map_err(|e| plan_error(&cli.plan, &e))?);
    let which = kernels(&cli.kernels)?;
    // Checked before any worker is reached.
    let deadlines = cli.net.deadlines()?;
    let steal = stealing(cli)?;
    let replan = match cli.replan {
        true => Some((cli.adapt.config()?, adapt::layers_of(&file, &header)?)),
        false => None,
    };
    let transport = cli.net.connect(&file, &header, which)?;
    let compile_ms = transport
        .links
        .iter()
        .map(|l| l.compile_ms)
        .fold(0.0, f64::max);
    let weight_bytes = transport
        .links
        .iter()
        .map(|l| l.weight_bytes)
        .max()
        .unwrap_or(0);
    let s = header.network.input.shape;
    let gflop = header.network.flops() as f64 / 1e9;
    let mut rng = SplitMix64::new(1);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
    let mut coordinator = remote::coordinator(header.clone(), tail, transport, which)?;
    coordinator.set_deadlines(deadlines);
    coordinator.set_stealing(steal);
    if let Some((config, layers)) = replan {
        adapt::enable(&mut coordinator, config, layers)?;
    }
    let runs = cli.runs.max(1);
    let frames = |n: usize| std::iter::repeat_n(x.clone(), n).map(Ok);
    coordinator
        .run_stream(frames(2), 1, |_| Ok(()))
        .map_err(|e| format!("error: {e}"))?;
    let mut times = Vec::with_capacity(runs);
    let mut status = Status::of(&coordinator, !cli.quiet);
    coordinator
        .run_stream(frames(runs), 1, |r| {
            status.frame(&r);
            times.push(r.measured_ms);
            Ok(())
        })
        .map_err(|e| format!("error: {e}"))?;
    let in_flight = cli.in_flight.max(1);
    let t0 = Instant::now();
    coordinator
        .run_stream(frames(runs), in_flight, |r| {
            status.frame(&r);
            Ok(())
        })
        .map_err(|e| format!("error: {e}"))?;
    status.finish();
    let fps = runs as f64 / t0.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    if cli.quiet {
        let mib = weight_bytes as f64 / (1 << 20) as f64;
        let bytes = status.bytes_per_frame();
        let predicted = header.plan.predicted_ms;
        outln!(
            "bench {p50:.3} {p99:.3} {compile_ms:.1} {gflop:.4} {mib:.1} {fps:.3} {bytes:.0} {predicted:.3}"
        );
        return Ok(());
    }
    let plan = &header.plan;
    outln!(
        "{} plan {} ({} segment(s)) on {} over gRPC, kernels {}, {runs} runs after 2 warm-up",
        plan.network,
        plan.strategy.name(),
        plan.segments.len(),
        plan.cluster.name,
        cli.kernels
    );
    outln!(
        "latency (1 in flight): p50 {p50:.2} ms  p99 {p99:.2} ms  min {:.2} ms",
        times[0]
    );
    outln!("throughput ({in_flight} in flight): {fps:.2} frames/s");
    outln!(
        "kernel compile time: {compile_ms:.1} ms, prepared weights {:.1} MiB (slowest / largest worker)",
        weight_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
