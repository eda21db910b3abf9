//! `adcnnc build`: check a network, plan it for a cluster, encode the plan.

use std::path::Path;

use adcnn_core::cluster::Cluster;
use adcnn_core::format::{self, FormatError};
use adcnn_core::tensor::rel_l2;

use crate::check::{Checked, check};
use crate::graph::LayerGraph;
use crate::lower::{Fold, LowerError, lower};
use crate::plan::{self, Options, Plan};
use crate::reference;
use crate::weights::{SplitMix64, Weights};

/// Speed assumed per core when a plan targets this machine (FACTS: ~88 GFLOP/s SGEMM peak
/// on one core here; tiled CNN layers reach about half of that).
pub const LOCAL_GFLOPS_PER_CORE: f64 = 40.0;

/// A built plan, its encoding and the checked inputs it came from.
#[derive(Debug)]
pub struct Built {
    pub plan: Plan,
    pub bytes: Vec<u8>,
    pub checked: Checked,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The inputs do not check; the rendered diagnostics.
    #[error("{0}")]
    Check(String),
    #[error("{0} describes no network")]
    NoNetwork(String),
    #[error("cannot plan: {0}")]
    Plan(#[from] plan::PlanError),
    #[error("cannot lower the plan: {0}")]
    Lower(#[from] LowerError),
    #[error("{0}")]
    Encode(#[from] FormatError),
    #[error("cannot evaluate the plan: {0}")]
    Evaluate(String),
}

/// Checks `net` (with `cluster_file` replacing any cluster it names) and plans it. Without any
/// cluster, the plan targets this machine: `local_cores` nodes.
pub fn build(
    net: &Path,
    cluster_file: Option<&Path>,
    opts: &Options,
    local_cores: usize,
) -> Result<Built, BuildError> {
    let checked = check(net, cluster_file);
    if !checked.is_ok() {
        return Err(BuildError::Check(checked.render()));
    }
    let Some((graph, weights)) = &checked.network else {
        return Err(BuildError::NoNetwork(net.display().to_string()));
    };
    let cluster = checked
        .cluster
        .clone()
        .unwrap_or_else(|| Cluster::local(local_cores, LOCAL_GFLOPS_PER_CORE));
    let mut plan = plan::plan(graph, &cluster, opts)?;
    if !plan.is_exact() {
        plan.deviation = Some(measure_deviation(graph, weights, &plan)?);
    }
    let lowered = lower(graph, weights, &plan, Fold::BatchNorms)?;
    let bytes = format::encode(&lowered.header, &lowered.segments, &lowered.tail)?;
    Ok(Built {
        plan,
        bytes,
        checked,
    })
}

/// How far an approximate plan's output is from the exact network's on a seeded random input
/// (uniform, unit variance, like a normalised image): relative L2.
fn measure_deviation(
    graph: &LayerGraph,
    weights: &Weights,
    plan: &Plan,
) -> Result<f64, BuildError> {
    let s = graph.input.shape;
    let mut rng = SplitMix64::new(0x5eed);
    let a = 3f32.sqrt();
    let x = ndarray::Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-a, a));
    let exact =
        reference::run(graph, weights, &x).map_err(|e| BuildError::Evaluate(e.to_string()))?;
    let tiled = reference::run_plan(graph, weights, plan, &x)
        .map_err(|e| BuildError::Evaluate(e.to_string()))?;
    Ok(rel_l2(tiled.iter(), exact.iter()))
}

impl Built {
    /// The one-screen summary `adcnnc build` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let Some((graph, _)) = &self.checked.network else {
            return String::new();
        };
        let p = &self.plan;
        let c = &p.cluster;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} on {} ({} workers): strategy {}, compression {}",
            p.network,
            c.name,
            c.workers().count(),
            p.strategy.name(),
            p.compression.name()
        );
        for (i, s) in p.segments.iter().enumerate() {
            let mode = if s.tiles.len() == 1 {
                "single"
            } else {
                s.mode.name()
            };
            let mut share: Vec<(usize, u64)> = Vec::new();
            for t in &s.tiles {
                match share.iter_mut().find(|(n, _)| *n == t.node) {
                    Some((_, f)) => *f += t.flops,
                    None => share.push((t.node, t.flops)),
                }
            }
            let shares: Vec<String> = share
                .iter()
                .map(|(n, f)| {
                    format!(
                        "{} {:.0}%",
                        c.nodes[*n].name,
                        100.0 * *f as f64 / s.tile_flops.max(1) as f64
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "  segment {i}: {} … {} ({} layers), {mode} {}×{}, {:+.1} % FLOPs, {:.2} ms — {}",
                graph.layer(s.first).name,
                graph.layer(s.output()).name,
                s.end.0 - s.first.0,
                s.grid.0,
                s.grid.1,
                100.0 * s.redundancy(),
                s.predicted_ms,
                shares.join(", ")
            );
        }
        let tail = graph.layers().len() - p.tail_start.index();
        let _ = writeln!(
            o,
            "  tail on {}: {tail} layers, {:.2} ms",
            c.nodes[c.coordinator].name, p.tail_ms
        );
        let busy: Vec<String> = c
            .nodes
            .iter()
            .zip(&p.node_busy_ms)
            .map(|(n, b)| format!("{} {:.1} ms", n.name, b))
            .collect();
        let _ = writeln!(o, "  busy: {}", busy.join(", "));
        let _ = writeln!(
            o,
            "predicted latency {:.2} ms (ideal bound {:.2} ms)",
            p.predicted_ms, p.ideal_ms
        );
        o
    }
}
