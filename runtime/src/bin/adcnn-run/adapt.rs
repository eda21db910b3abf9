//! Re-planning options that `run` and `bench` share, and turning re-planning on.

use adcnn_core::format::{PlanFile, PlanHeader, ProgramLayers, SectionKind, decode_program_layers};
use adcnn_runtime::coordinator::Coordinator;
use adcnn_runtime::replan::ReplanConfig;
use adcnn_runtime::transport::Transport;

/// When the coordinator re-plans the tiles for the nodes' measured speeds (book:
/// "Adaptivity").
#[derive(Debug, clap::Args)]
pub struct Adapt {
    /// A node drifts when its measured speed, relative to the other nodes', is this many
    /// times off what the running tiles assumed.
    #[arg(long, default_value_t = ReplanConfig::default().threshold, value_name = "FACTOR")]
    pub drift: f64,
    /// A node's link drifts when its tiles' time on the wire, against what the cluster file's
    /// rate and latency predict and relative to the other links, is this many times off
    /// what the running tiles assumed.
    #[arg(long, default_value_t = ReplanConfig::default().link_threshold, value_name = "FACTOR")]
    pub link_drift: f64,
    /// Frames in a row a node must drift the same way before the tiles are re-planned.
    #[arg(long, default_value_t = ReplanConfig::default().window, value_name = "N")]
    pub drift_frames: usize,
    /// Frames after a re-plan (or a decision against one) before drift is looked at again.
    #[arg(long, default_value_t = ReplanConfig::default().cooldown, value_name = "N")]
    pub replan_cooldown: usize,
    /// Take new tiles only when they are predicted this many times faster at the measured
    /// speeds.
    #[arg(long, default_value_t = ReplanConfig::default().min_gain, value_name = "FACTOR")]
    pub replan_min_gain: f64,
    /// Work stealing (DeepThings-style) instead of the plan's assignment: a segment's tiles
    /// wait at the coordinator, and every worker that holds the segment takes the next one
    /// (largest first) whenever it has fewer than DEPTH tiles out (default 1), so faster
    /// workers take more. Re-planning is off with it.
    #[arg(long, value_name = "DEPTH", num_args = 0..=1, default_missing_value = "1")]
    pub steal: Option<usize>,
}

impl Adapt {
    /// The configuration, checked.
    pub fn config(&self) -> Result<ReplanConfig, String> {
        let ok = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        if !ok(self.drift, 1.01, 1e3) {
            return Err(format!(
                "error: --drift takes a factor from 1.01 to 1000, not {}",
                self.drift
            ));
        }
        if !ok(self.link_drift, 1.01, 1e3) {
            return Err(format!(
                "error: --link-drift takes a factor from 1.01 to 1000, not {}",
                self.link_drift
            ));
        }
        if !(1..=10_000).contains(&self.drift_frames) {
            return Err(format!(
                "error: --drift-frames takes 1 to 10000, not {}",
                self.drift_frames
            ));
        }
        if self.replan_cooldown > 1_000_000 {
            return Err(format!(
                "error: --replan-cooldown takes 0 to 1000000, not {}",
                self.replan_cooldown
            ));
        }
        if !ok(self.replan_min_gain, 1.0, 1e3) {
            return Err(format!(
                "error: --replan-min-gain takes a factor from 1 to 1000, not {}",
                self.replan_min_gain
            ));
        }
        Ok(ReplanConfig {
            threshold: self.drift,
            window: self.drift_frames,
            cooldown: self.replan_cooldown,
            min_gain: self.replan_min_gain,
            link_threshold: self.link_drift,
        })
    }
}

impl Adapt {
    /// Tiles out per node with work stealing (`None`: the plan's assignment), checked.
    pub fn stealing(&self) -> Result<Option<usize>, String> {
        match self.steal {
            Some(d) if !(1..=64).contains(&d) => Err(format!(
                "error: --steal takes 1 to 64 tiles out per worker, not {d}"
            )),
            d => Ok(d),
        }
    }
}

/// Every segment's layers, read from the plan file (weights are not decoded).
pub fn layers_of(file: &PlanFile<'_>, header: &PlanHeader) -> Result<Vec<ProgramLayers>, String> {
    (0..header.plan.segments.len())
        .map(|i| {
            let kind = SectionKind::Segment(i as u32);
            let bytes = file.section(kind).map_err(|e| format!("error: {e}"))?;
            decode_program_layers(&bytes, kind).map_err(|e| format!("error: {e}"))
        })
        .collect()
}

/// Turns re-planning on for `coordinator`.
pub fn enable<T: Transport>(
    coordinator: &mut Coordinator<T>,
    config: ReplanConfig,
    layers: Vec<ProgramLayers>,
) -> Result<(), String> {
    coordinator
        .set_replan(Some(config), layers)
        .map_err(|e| format!("error: re-planning: {e}"))
}
