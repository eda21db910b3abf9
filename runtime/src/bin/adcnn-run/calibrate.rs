//! `adcnn-run calibrate`: runs a plan's frames on its cluster and writes a cluster file with
//! what was measured — each node's speed, each link's rate and latency, the coordinator's
//! speed on the tail — for `adcnnc build --cluster` to plan with (book: "The cost model").

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use adcnn_core::cluster::Cluster;
use adcnn_core::format::{PlanHeader, decode};
use adcnn_core::outln;
use adcnn_core::weights::SplitMix64;
use adcnn_runtime::coordinator::{Coordinator, RunReport};
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::telemetry::Telemetry;
use adcnn_runtime::transport::Transport;
use ndarray::Array3;

use crate::remote::{self, Remote, open_plan, plan_error};
use crate::run::kernels;

/// `adcnn-run calibrate PLAN -o CLUSTER.yaml`: measures the plan's cluster running the plan
/// (a seeded random input, FRAMES frames after two warm-up ones, one at a time, the plan's
/// tiles held) and writes the cluster file again with the measured figures: `gflops` of a
/// worker is its tiles' FLOPs over their compute time, the coordinator's the tail's FLOPs
/// over its time; `mbps` and `latency_ms` of a link are fitted to its tiles' time on the
/// wire against the bytes the plan counts for them (over gRPC; in process no time is on a
/// wire and the links stay as they were). Build plans with it: `adcnnc build NET.yaml
/// --cluster CLUSTER.yaml`. The speeds hold for this network's kernels on these tiles: a
/// network with other layers wants its own calibration.
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run calibrate")]
pub struct CalibrateCli {
    /// plan.bin
    plan: PathBuf,
    /// The calibrated cluster file to write (YAML).
    #[arg(short, long)]
    output: PathBuf,
    /// Frames measured, after two warm-up ones.
    #[arg(long, default_value_t = 20)]
    frames: usize,
    /// `jit`, `gemm` (compiled without Winograd) or `reference`: the kernels the plans will
    /// run on.
    #[arg(long, default_value = "jit")]
    kernels: String,
    /// Measure the in-process cluster (threads) instead of the plan's workers.
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    net: Remote,
}

/// What the frames showed of one node.
#[derive(Clone, Debug, Default)]
struct Samples {
    flops: f64,
    compute_us: f64,
    /// Per tile: (the plan's bytes for its input and output, its time on the wire in ms).
    wire: Vec<(f64, f64)>,
}

/// A link's fit: (Mbit/s, one-way latency in ms), or why there is none.
fn fit_link(samples: &[(f64, f64)], latency_ms: f64) -> Result<(f64, f64), &'static str> {
    let n = samples.len() as f64;
    if samples.is_empty() || samples.iter().all(|s| s.1 <= 0.0) {
        return Err("no time on a wire");
    }
    let (mx, my) = (
        samples.iter().map(|s| s.0).sum::<f64>() / n,
        samples.iter().map(|s| s.1).sum::<f64>() / n,
    );
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    // Time = 2 × latency (the job, then its result) + bytes at the rate. Tiles of several
    // sizes separate the two; tiles all of one size keep the file's latency.
    if sxx > 0.0 && mx > 0.0 && (sxx / n).sqrt() > 0.05 * mx {
        let slope = sxy / sxx; // ms per byte
        let intercept = my - slope * mx;
        if slope > 0.0 && intercept >= 0.0 {
            return Ok((8.0 / slope / 1e3, intercept / 2.0));
        }
    }
    let bytes: f64 = samples.iter().map(|s| s.0).sum();
    let ms: f64 = samples.iter().map(|s| s.1 - 2.0 * latency_ms).sum();
    if bytes > 0.0 && ms > 0.0 {
        Ok((bytes * 8.0 / ms / 1e3, latency_ms))
    } else {
        Err("too little time on the wire to tell its rate from its latency")
    }
}

pub fn main(cli: &CalibrateCli) -> Result<(), String> {
    if !(1..=100_000).contains(&cli.frames) {
        return Err(format!(
            "error: --frames takes 1 to 100000, not {}",
            cli.frames
        ));
    }
    let which = kernels(&cli.kernels)?;
    let (reports, header, how) = if cli.local {
        let bytes = std::fs::read(&cli.plan)
            .map_err(|e| format!("error: cannot read {}: {e}", cli.plan.display()))?;
        let plan = decode(&bytes).map_err(|e| plan_error(&cli.plan, &e))?;
        let header = plan.header.clone();
        let mut cluster = LocalCluster::with_kernels(plan, which, None);
        if let Some(e) = cluster.compile_error() {
            return Err(format!("error: {e}"));
        }
        let reports = measure(cluster.coordinator(), &header, cli.frames)?;
        (reports, header, "in process")
    } else {
        let (file, header) = open_plan(&cli.plan)?;
        let tail = Arc::new(file.tail(&header).map_err(|e| plan_error(&cli.plan, &e))?);
        let deadlines = cli.net.deadlines()?;
        let transport = cli.net.connect(&file, &header, which)?;
        let mut coordinator = remote::coordinator(header.clone(), tail, transport, which)?;
        coordinator.set_deadlines(deadlines);
        let reports = measure(&mut coordinator, &header, cli.frames)?;
        (reports, header, "over gRPC")
    };
    let (cluster, notes) = calibrated(&header, &reports);
    let yaml = cluster_yaml(&cluster, &header, &notes, cli.frames, how);
    adcnn_core::npy::write_atomically(&cli.output, yaml.as_bytes())
        .map_err(|e| format!("error: cannot write {}: {e}", cli.output.display()))?;
    let plan = &header.plan;
    outln!(
        "{} frames of {} ({} plan) on {} {how}:",
        cli.frames,
        plan.network,
        plan.strategy.name(),
        plan.cluster.name
    );
    for (i, (was, now)) in plan.cluster.nodes.iter().zip(&cluster.nodes).enumerate() {
        let link = match (was.mbps, now.mbps) {
            (Some(a), Some(b)) if i != plan.cluster.coordinator => format!(
                ", link {a:.1} → {b:.1} Mbit/s, latency {:.2} → {:.2} ms",
                was.latency_ms, now.latency_ms
            ),
            _ => String::new(),
        };
        outln!(
            "  {:<10} {:>8.1} → {:>8.1} GFLOP/s{link}{}",
            now.name,
            was.speed(),
            now.speed(),
            notes[i]
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    outln!("wrote {}", cli.output.display());
    Ok(())
}

/// Runs two warm-up frames, then `frames` measured ones, one at a time, on a seeded random
/// input.
fn measure<T: Transport>(
    coordinator: &mut Coordinator<T>,
    header: &PlanHeader,
    frames: usize,
) -> Result<Vec<RunReport>, String> {
    let s = header.network.input.shape;
    let mut rng = SplitMix64::new(1);
    let x = Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.0, 1.0));
    let inputs = |n: usize| std::iter::repeat_n(x.clone(), n).map(Ok);
    coordinator
        .run_stream(inputs(2), 1, |_| Ok(()))
        .map_err(|e| format!("error: {e}"))?;
    let mut reports = Vec::with_capacity(frames);
    coordinator
        .run_stream(inputs(frames), 1, |r| {
            reports.push(r);
            Ok(())
        })
        .map_err(|e| format!("error: {e}"))?;
    Ok(reports)
}

/// The plan's cluster with the measured figures, and per node what could not be measured.
fn calibrated(header: &PlanHeader, reports: &[RunReport]) -> (Cluster, Vec<Option<String>>) {
    let plan = &header.plan;
    let mut cluster = plan.cluster.clone();
    let n = cluster.nodes.len();
    let mut samples = vec![Samples::default(); n];
    let mut tail_us = 0.0;
    for r in reports {
        for e in &r.telemetry {
            if let Telemetry::Tile {
                node,
                segment,
                tile,
                compute_us,
                wire_us,
                flops,
                ..
            } = *e
                && let Some(s) = samples.get_mut(node)
            {
                s.flops += flops as f64;
                s.compute_us += compute_us;
                let planned = plan
                    .segments
                    .get(segment as usize)
                    .and_then(|seg| seg.tiles.get(tile as usize))
                    .map(|t| (t.input_bytes + t.output_bytes) as f64);
                if let Some(bytes) = planned {
                    s.wire.push((bytes, wire_us / 1e3));
                }
            }
        }
        tail_us += r
            .trace
            .events
            .iter()
            .filter(|e| e.node == plan.cluster.coordinator && e.name == "tail")
            .map(|e| e.dur_us)
            .sum::<f64>();
    }
    let mut notes = vec![None; n];
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        let s = &samples[i];
        if i == plan.cluster.coordinator && !node.worker {
            if plan.tail_flops > 0 && tail_us > 0.0 {
                node.gflops = plan.tail_flops as f64 * reports.len() as f64 / tail_us / 1e3;
            } else {
                notes[i] = Some("no tail to time: speed as the file says".into());
            }
            continue;
        }
        if s.compute_us > 0.0 {
            node.set_speed(s.flops / s.compute_us / 1e3);
        } else {
            notes[i] = Some("no tile in this plan: speed as the file says".into());
        }
        if i != plan.cluster.coordinator && node.mbps.is_some() {
            match fit_link(&s.wire, node.latency_ms) {
                Ok((mbps, latency_ms)) => {
                    node.mbps = Some(mbps);
                    node.latency_ms = latency_ms;
                }
                Err(why) => {
                    let note = format!("link as the file says: {why}");
                    notes[i] = Some(match notes[i].take() {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                }
            }
        }
    }
    (cluster, notes)
}

/// The cluster file, in the format `adcnnc` reads.
fn cluster_yaml(
    cluster: &Cluster,
    header: &PlanHeader,
    notes: &[Option<String>],
    frames: usize,
    how: &str,
) -> String {
    let plan = &header.plan;
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Calibrated by `adcnn-run calibrate`: {frames} frames of {} ({} plan for {}) {how}.\n\
         # gflops: a worker's tiles' FLOPs over their compute time; the \
         coordinator's: the tail's.\n# mbps, latency_ms: fitted to the tiles' time on the wire \
         against the bytes the plan counts.",
        plan.network,
        plan.strategy.name(),
        plan.cluster.name,
    );
    let _ = writeln!(y, "cluster:");
    let _ = writeln!(y, "  name: {}", yaml_str(&cluster.name));
    let _ = writeln!(
        y,
        "  coordinator: {}",
        yaml_str(&cluster.nodes[cluster.coordinator].name)
    );
    let _ = writeln!(y, "  nodes:");
    for (i, n) in cluster.nodes.iter().enumerate() {
        if let Some(note) = &notes[i] {
            let _ = writeln!(y, "    # {}: {note}", n.name);
        }
        let mut fields = vec![format!("name: {}", yaml_str(&n.name))];
        if let Some(a) = &n.address {
            fields.push(format!("address: {}", yaml_str(a)));
        }
        fields.push(format!("gflops: {:.3}", n.gflops));
        if let Some(m) = n.mbps {
            fields.push(format!("mbps: {m:.3}"));
            fields.push(format!("latency_ms: {:.4}", n.latency_ms));
        }
        if !n.worker {
            fields.push("worker: false".into());
        }
        if n.threads != 1 {
            fields.push(format!("threads: {}", n.threads));
        }
        let _ = writeln!(y, "    - {{ {} }}", fields.join(", "));
    }
    y
}

/// A YAML double-quoted string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
mod tests {
    use super::fit_link;

    #[test]
    fn a_link_is_fitted_to_its_rate_and_latency() {
        // 100 Mbit/s (12.5 bytes per µs) and 2 ms each way.
        let at = |bytes: f64| (bytes, 4.0 + bytes * 8.0 / 100e3);
        let samples: Vec<_> = [10e3, 50e3, 200e3, 400e3].into_iter().map(at).collect();
        let (mbps, latency) = fit_link(&samples, 0.5).expect("fits");
        assert!((mbps - 100.0).abs() < 1e-6, "{mbps}");
        assert!((latency - 2.0).abs() < 1e-9, "{latency}");
        // One size only: the file's latency, the rate from what is left.
        let (mbps, latency) = fit_link(&[at(100e3), at(100e3)], 2.0).expect("fits");
        assert!(
            (mbps - 100.0).abs() < 1e-6 && latency == 2.0,
            "{mbps} {latency}"
        );
        // No time on a wire (in process).
        assert!(fit_link(&[(100e3, 0.0)], 2.0).is_err());
        assert!(fit_link(&[], 2.0).is_err());
    }
}
