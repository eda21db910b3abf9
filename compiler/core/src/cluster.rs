//! The cluster a plan targets: its nodes, their speed and their link to the coordinator.

/// A validated cluster description.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Node>,
    /// Index into `nodes` of the coordinator (it scatters, stitches and runs the tail).
    pub coordinator: usize,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    /// `host:port` of the node's worker, for distributed runs.
    pub address: Option<String>,
    /// Sustained compute speed in GFLOP/s (FLOP = 2 × multiply-accumulate).
    pub gflops: f64,
    /// Link bandwidth to the coordinator in Mbit/s (`None` for the coordinator itself).
    pub mbps: Option<f64>,
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

/// The planner's cost model, shared by the compiler's search and the runtime's re-planning
/// (book: "The cost model"): a transfer is its bytes at the link's rate plus the link's
/// latency ([`Cluster::transfer_ms`]); a tile is its input's transfer, its FLOPs at the
/// node's speed, and its output's transfer (`Tile::ms_on`).
impl Cluster {
    /// Milliseconds to move `bytes` between the coordinator and `node` (0 on the
    /// coordinator itself).
    pub fn transfer_ms(&self, node: usize, bytes: u64) -> f64 {
        if node == self.coordinator {
            return 0.0;
        }
        let n = &self.nodes[node];
        bytes as f64 * 8.0 / (n.mbps.unwrap_or(f64::INFINITY) * 1e3) + n.latency_ms
    }
}

impl Cluster {
    /// This machine as a cluster: one node per core, `node0` coordinating and working too.
    /// The in-process runtime moves tiles through memory, so links are fast and near-instant.
    pub fn local(cores: usize, gflops_per_core: f64) -> Cluster {
        let nodes = (0..cores.max(1))
            .map(|i| Node {
                name: format!("core{i}"),
                address: None,
                gflops: gflops_per_core,
                mbps: (i > 0).then_some(100_000.0),
                latency_ms: if i > 0 { 0.01 } else { 0.0 },
                worker: true,
            })
            .collect();
        Cluster {
            name: format!("local{}", cores.max(1)),
            nodes,
            coordinator: 0,
        }
    }
}
