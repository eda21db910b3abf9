//! The live status line of long runs (`adcnn-run` on a folder or stream, `bench`): frames
//! done, their rate, and each working node's achieved GFLOP/s and link rate, from the run's
//! telemetry. Drawn on stderr only when it is a terminal.

use adcnn_runtime::coordinator::RunReport;
use adcnn_runtime::telemetry::Figures;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Status {
    bar: ProgressBar,
    pub figures: Figures,
    /// Frames seen.
    pub frames: u64,
}

impl Status {
    /// A status line over the nodes `names` (hidden when `show` is false).
    pub fn new(names: &[String], show: bool) -> Status {
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
        }
    }

    /// Takes a finished frame's telemetry into the figures and the line.
    pub fn frame(&mut self, r: &RunReport) {
        for e in &r.telemetry {
            self.figures.add(e);
        }
        self.bar.inc(1);
        self.frames += 1;
        let nodes: Vec<String> = self
            .figures
            .nodes
            .iter()
            .filter(|n| n.tiles > 0 || n.lost)
            .map(|n| {
                if n.lost {
                    return format!("{} lost", n.name);
                }
                let link = if n.link_bytes_per_s > 0.0 {
                    format!(" {:.0} Mbit/s", n.link_bytes_per_s * 8.0 / 1e6)
                } else {
                    String::new()
                };
                format!("{} {:.1} GFLOP/s{link}", n.name, n.gflops)
            })
            .collect();
        self.bar
            .set_message(format!("{:.1} ms | {}", r.measured_ms, nodes.join(", ")));
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
