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
    /// Sustained compute speed of one of its threads in GFLOP/s (FLOP = 2 ×
    /// multiply-accumulate); the node's is [`Node::speed`].
    pub gflops: f64,
    /// Link bandwidth to the coordinator in Mbit/s (`None` for the coordinator itself).
    pub mbps: Option<f64>,
    /// One-way latency to the coordinator in milliseconds.
    pub latency_ms: f64,
    /// Whether the node processes tiles (a coordinator may only coordinate).
    pub worker: bool,
    /// Threads its worker splits each tile's layers over (its cores; 1 when the cluster
    /// file says nothing, and then absent from `plan.bin`'s JSON).
    #[serde(default = "one_thread", skip_serializing_if = "is_one_thread")]
    pub threads: usize,
}

/// What each of a node's threads past the first adds to its speed, as a fraction of one
/// thread's: two threads measured 1.6–1.8× one on VGG16 and YOLOv2-tiny (the book's
/// "Performance" chapter, "Every core of a node"), where memory-bound layers and the parts
/// each thread repeats take the rest.
pub const THREAD_EFFICIENCY: f64 = 0.8;

/// The most threads a node may have (the cluster file's and `plan.bin`'s limit).
pub const MAX_THREADS: usize = 1024;

fn one_thread() -> usize {
    1
}

fn is_one_thread(t: &usize) -> bool {
    *t == 1
}

impl Node {
    /// The node's speed in GFLOP/s: a worker's `gflops` per thread, each thread past the
    /// first adding [`THREAD_EFFICIENCY`] of one; a node that only coordinates runs the
    /// tail on one thread, at `gflops`.
    pub fn speed(&self) -> f64 {
        self.gflops * self.thread_factor()
    }

    /// Sets `gflops` so that [`Node::speed`] is `speed` (a measured node speed).
    pub fn set_speed(&mut self, speed: f64) {
        self.gflops = speed / self.thread_factor();
    }

    fn thread_factor(&self) -> f64 {
        let threads = if self.worker { self.threads } else { 1 };
        1.0 + THREAD_EFFICIENCY * threads.saturating_sub(1) as f64
    }
}

impl Cluster {
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.worker)
    }

    /// Sum of the workers' speeds in GFLOP/s.
    pub fn total_gflops(&self) -> f64 {
        self.workers().map(Node::speed).sum()
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
                threads: 1,
            })
            .collect();
        Cluster {
            name: format!("local{}", cores.max(1)),
            nodes,
            coordinator: 0,
        }
    }
}
