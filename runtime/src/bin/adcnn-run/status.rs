//! The live status line of long runs (`adcnn-run` on a folder or stream, `bench`): frames
//! done, their rate, the re-plans so far, and each working node's share of the running tiles,
//! achieved GFLOP/s and link rate, from the run's telemetry. Drawn on stderr only when it is
//! a terminal.

use adcnn_core::rebalance::shares;
use adcnn_runtime::coordinator::{Coordinator, RunReport};
use adcnn_runtime::telemetry::{Figures, Telemetry};
use adcnn_runtime::transport::Transport;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Status {
    bar: ProgressBar,
    pub figures: Figures,
    /// Frames seen.
    pub frames: u64,
    /// Per node, its share of the running tiles' FLOPs (empty: not shown, e.g. with work
    /// stealing, where shares are not planned).
    shares: Vec<f64>,
    replans: usize,
}

impl Status {
    /// A status line over `coordinator`'s nodes (hidden when `show` is false).
    pub fn of<T: Transport>(coordinator: &Coordinator<T>, show: bool) -> Status {
        let nodes = &coordinator.header().plan.cluster.nodes;
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        let shares = match coordinator.stealing() {
            Some(_) => Vec::new(),
            None => shares(coordinator.layout(), nodes.len()),
        };
        Status::new(&names, shares, show)
    }

    /// A status line over the nodes `names` (hidden when `show` is false), whose shares of
    /// the work are `shares` to begin with.
    fn new(names: &[String], shares: Vec<f64>, show: bool) -> Status {
        let bar = if show {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {pos} frames, {per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Status {
            bar,
            figures: Figures::new(names, 0.2),
            frames: 0,
            shares,
            replans: 0,
        }
    }

    /// Takes a finished frame's telemetry into the figures and the line.
    pub fn frame(&mut self, r: &RunReport) {
        for e in &r.telemetry {
            self.figures.add(e);
            if let Telemetry::Replan { after, .. } = e {
                self.replans += 1;
                if !self.shares.is_empty() {
                    self.shares.clone_from(after);
                }
            }
        }
        self.bar.inc(1);
        self.frames += 1;
        let nodes: Vec<String> = self
            .figures
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.tiles > 0 || n.lost)
            .map(|(i, n)| {
                if n.lost {
                    return format!("{} lost", n.name);
                }
                let share = match self.shares.get(i) {
                    Some(s) => format!(" {:.0}%", 100.0 * s),
                    None => String::new(),
                };
                let link = if n.link_bytes_per_s > 0.0 {
                    format!(" {:.0} Mbit/s", n.link_bytes_per_s * 8.0 / 1e6)
                } else {
                    String::new()
                };
                format!("{}{share} {:.1} GFLOP/s{link}", n.name, n.gflops)
            })
            .collect();
        let replans = match self.replans {
            0 => String::new(),
            1 => "re-planned once | ".to_string(),
            n => format!("re-planned {n}x | "),
        };
        self.bar.set_message(format!(
            "{:.1} ms | {replans}{}",
            r.measured_ms,
            nodes.join(", ")
        ));
    }

    /// Runs `f` (which prints) with the line cleared, then draws it again.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Bytes that crossed the wire per frame (tile inputs and outputs, as sent).
    pub fn bytes_per_frame(&self) -> f64 {
        let total: u64 = self
            .figures
            .nodes
            .iter()
            .map(|n| n.bytes_in + n.bytes_out)
            .sum();
        total as f64 / self.frames.max(1) as f64
    }
}
