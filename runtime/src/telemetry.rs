//! Telemetry: what the coordinator learns of its nodes while frames run, as a typed event
//! stream, and per node figures smoothed from it (exponentially weighted moving averages).
//! The trace, the metrics file, the status line and the re-planner read these, not log
//! text.

use serde::Serialize;

/// One thing measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Telemetry {
    /// A tile came back.
    Tile {
        frame: u64,
        node: usize,
        segment: u32,
        tile: u32,
        /// The node's compute time for it.
        compute_us: f64,
        /// When the job was sent (µs, the coordinator's clock).
        sent_us: f64,
        /// From sending the job to receiving the result (compute, queueing and both
        /// transfers).
        round_trip_us: f64,
        /// Of the round trip, the time on the wire: both transfers, without the node's
        /// queueing and compute (0 in process).
        wire_us: f64,
        /// Bytes of its input and output on the wire.
        bytes_in: u64,
        bytes_out: u64,
        /// Its FLOPs (as the plan counts them).
        flops: u64,
    },
    /// A ping's round trip to a node.
    Rtt { node: usize, rtt_us: f64 },
    /// A node was lost: it gets no more tiles.
    Lost { node: usize, reason: String },
    /// A lost node is back and gets its tiles again.
    Rejoined { node: usize },
    /// The tiles were re-planned: frames from `frame` on take layout `layout`. `before` and
    /// `after`: per node, its share of the head's tile FLOPs; `speeds`: per node, the GFLOP/s
    /// planned with (measured; 0 for a node left out); `links`: per node, how many times
    /// slower than the cluster file says its link was planned (1: as it says); the
    /// predicted head times at those speeds with the old tiles (`current_ms`) and the new
    /// (`predicted_ms`).
    Replan {
        frame: u64,
        layout: u32,
        reason: String,
        speeds: Vec<f64>,
        links: Vec<f64>,
        predicted_ms: f64,
        current_ms: f64,
        before: Vec<f64>,
        after: Vec<f64>,
    },
    /// A tile sent to another node: its node was lost, or (`late`) it missed its deadline.
    Redispatch {
        frame: u64,
        segment: u32,
        tile: u32,
        from: usize,
        to: usize,
        late: bool,
    },
}

/// Smoothed figures of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeFigures {
    pub name: String,
    pub tiles: u64,
    /// Sum of compute time (µs).
    pub busy_us: f64,
    pub flops: u64,
    /// Achieved GFLOP/s per tile, smoothed.
    pub gflops: f64,
    /// Bytes per second on the node's link while its tiles travelled, smoothed (0 until
    /// measured).
    pub link_bytes_per_s: f64,
    /// Ping round trip, smoothed (µs; 0 until measured).
    pub rtt_us: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whether the node is lost (it was, and has not come back).
    pub lost: bool,
    /// Times it came back after being lost.
    pub rejoined: u64,
    /// Its tiles that missed their deadline and were sent to another node as well.
    pub late: u64,
    /// Its tiles sent to other nodes after it was lost.
    pub redispatched: u64,
}

/// Per node figures, updated event by event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    /// Weight of the newest sample in each moving average.
    pub alpha: f64,
    pub nodes: Vec<NodeFigures>,
}

fn ewma(old: f64, new: f64, alpha: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old + alpha * (new - old)
    }
}

impl Figures {
    /// Figures for nodes named `names`, smoothing with weight `alpha` (0 < α ≤ 1).
    pub fn new(names: &[String], alpha: f64) -> Figures {
        Figures {
            alpha,
            nodes: names
                .iter()
                .map(|n| NodeFigures {
                    name: n.clone(),
                    ..NodeFigures::default()
                })
                .collect(),
        }
    }

    /// Takes one event into the figures.
    pub fn add(&mut self, e: &Telemetry) {
        let a = self.alpha;
        match *e {
            Telemetry::Tile {
                node,
                compute_us,
                wire_us,
                bytes_in,
                bytes_out,
                flops,
                ..
            } => {
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                n.tiles += 1;
                n.busy_us += compute_us;
                n.flops += flops;
                n.bytes_in += bytes_in;
                n.bytes_out += bytes_out;
                if compute_us > 0.0 {
                    n.gflops = ewma(n.gflops, flops as f64 / compute_us / 1e3, a);
                }
                if wire_us > 0.0 && bytes_in + bytes_out > 0 {
                    let rate = (bytes_in + bytes_out) as f64 / (wire_us / 1e6);
                    n.link_bytes_per_s = ewma(n.link_bytes_per_s, rate, a);
                }
            }
            Telemetry::Rtt { node, rtt_us } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.rtt_us = ewma(n.rtt_us, rtt_us, a);
                }
            }
            Telemetry::Lost { node, .. } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.lost = true;
                }
            }
            Telemetry::Rejoined { node } => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.lost = false;
                    n.rejoined += 1;
                }
            }
            Telemetry::Replan { .. } => {}
            Telemetry::Redispatch { from, late, .. } => {
                if let Some(n) = self.nodes.get_mut(from) {
                    if late {
                        n.late += 1;
                    } else {
                        n.redispatched += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_smooth_per_node() {
        let mut f = Figures::new(&["a".into(), "b".into()], 0.5);
        let tile = |node, compute_us, round_trip_us: f64| Telemetry::Tile {
            frame: 0,
            node,
            segment: 0,
            tile: 0,
            compute_us,
            sent_us: 0.0,
            round_trip_us,
            wire_us: round_trip_us - compute_us,
            bytes_in: 1000,
            bytes_out: 1000,
            flops: 2_000_000,
        };
        f.add(&tile(1, 100.0, 300.0));
        // 2 MFLOP in 100 µs: 20 GFLOP/s; 2000 bytes in 200 µs on the wire: 10 MB/s.
        assert_eq!(f.nodes[1].gflops, 20.0);
        assert_eq!(f.nodes[1].link_bytes_per_s, 1e7);
        f.add(&tile(1, 200.0, 400.0));
        assert_eq!(f.nodes[1].gflops, 15.0);
        assert_eq!(f.nodes[1].tiles, 2);
        assert_eq!(f.nodes[0].tiles, 0);
        f.add(&Telemetry::Rtt {
            node: 0,
            rtt_us: 80.0,
        });
        f.add(&Telemetry::Rtt {
            node: 0,
            rtt_us: 40.0,
        });
        assert_eq!(f.nodes[0].rtt_us, 60.0);
        // Events for nodes that do not exist change nothing.
        f.add(&Telemetry::Rtt {
            node: 9,
            rtt_us: 1.0,
        });
    }
}
