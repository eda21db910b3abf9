//! The cluster a plan targets: its nodes, their speed and their link to the coordinator.

/// A validated cluster description.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Node>,
    /// Index into `nodes` of the coordinator (it scatters, stitches and runs the tail).
    pub coordinator: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    /// `host:port` of the node's worker, for distributed runs.
    pub address: Option<String>,
    /// Sustained compute speed in GFLOP/s (FLOP = 2 × multiply-accumulate).
    pub gflops: f64,
    /// Link bandwidth to the coordinator in Mbit/s (unused for the coordinator itself).
    pub mbps: f64,
    /// One-way latency to the coordinator in milliseconds.
    pub latency_ms: f64,
    /// Whether the node processes tiles (a coordinator may only coordinate).
    pub worker: bool,
}

impl Cluster {
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.worker)
    }

    /// Sum of the workers' speeds in GFLOP/s.
    pub fn total_gflops(&self) -> f64 {
        self.workers().map(|n| n.gflops).sum()
    }

    /// One line: `edge4: 5 nodes (4 workers, 132.0 GFLOP/s), coordinator gw`.
    pub fn summary(&self) -> String {
        format!(
            "cluster {}: {} nodes ({} workers, {:.1} GFLOP/s), coordinator {}",
            self.name,
            self.nodes.len(),
            self.workers().count(),
            self.total_gflops(),
            self.nodes[self.coordinator].name
        )
    }
}
