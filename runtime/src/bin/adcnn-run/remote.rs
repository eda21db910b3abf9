//! How `adcnn-run` reaches a plan's workers: the options `run` and `bench` share, and
//! connecting with them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use adcnn_core::format::{PlanFile, PlanHeader};
use adcnn_runtime::coordinator::{Coordinator, Deadlines};
use adcnn_runtime::net::auth::Token;
use adcnn_runtime::net::client::{ConnectOptions, GrpcTransport};
use adcnn_runtime::net::cluster_file;
use adcnn_runtime::net::codec::Coder;
use adcnn_runtime::worker::Kernels;

/// Where the workers are and how to talk to them.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// A cluster file whose nodes give the workers' addresses, by the plan's node names
    /// (default: the addresses the plan was built with).
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// One worker's address, overriding the rest: NAME=HOST:PORT (repeatable).
    #[arg(long = "worker", value_name = "NAME=HOST:PORT")]
    pub workers: Vec<String>,
    /// The cluster token, shared with every worker (or set ADCNN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster's certificates (`adcnn-run certs`): mutual TLS with every worker.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Talk to workers that are not on this machine in plain text (no TLS).
    #[arg(long)]
    pub insecure: bool,
    /// Lossless coder for tensors on the wire: none, zstd, lz4, or auto (zstd when some
    /// worker's link is under 1 Gbit/s, where its smaller messages save more time than its
    /// extra CPU costs; lz4 on faster links).
    #[arg(long, default_value = "auto")]
    pub coder: String,
    /// Seconds to wait for each worker to accept a connection.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds between tries to bring back a lost worker during the run (0: never; it stays
    /// lost). A worker that answers is set up again (its plan sections shipped if it lost
    /// them) and gets its tiles back; the coordinator keeps the workers' plan sections in
    /// memory for this.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub rejoin_every: f64,
    /// A tile not back after FACTOR times what its segment's tiles took on that worker (the
    /// plan's prediction until one came back), and at least --deadline-floor-ms, is sent to
    /// another worker of its segment as well; the first result wins, and the late worker
    /// gets no new tiles until it answers (0: wait for every tile however long it takes).
    /// Runs on workers only; --local has no deadlines.
    #[arg(long, default_value_t = 4.0, value_name = "FACTOR")]
    pub deadline: f64,
    /// The least time a tile is given before it counts as late.
    #[arg(long, default_value_t = 2000.0, value_name = "MS")]
    pub deadline_floor_ms: f64,
}

fn is_loopback(address: &str) -> bool {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Remote {
    /// The deadlines late tiles are sent again by (`None` with `--deadline 0`).
    pub fn deadlines(&self) -> Result<Option<Deadlines>, String> {
        let bad = |what: &str, v: f64, most: f64| {
            (!v.is_finite() || !(0.0..=most).contains(&v))
                .then(|| format!("error: {what} takes a number from 0 to {most}, not {v}"))
        };
        if let Some(e) = bad("--deadline", self.deadline, 1e6)
            .or_else(|| bad("--deadline-floor-ms", self.deadline_floor_ms, 3.6e6))
        {
            return Err(e);
        }
        Ok((self.deadline > 0.0).then(|| Deadlines {
            factor: self.deadline,
            floor: Duration::from_secs_f64(self.deadline_floor_ms / 1e3),
        }))
    }

    pub fn coder(&self, header: &PlanHeader) -> Result<Coder, String> {
        if self.coder == "auto" {
            let cluster = &header.plan.cluster;
            let slow = cluster
                .nodes
                .iter()
                .filter(|n| n.worker)
                .any(|n| n.mbps.is_some_and(|m| m < 1000.0));
            return Ok(if slow { Coder::Zstd } else { Coder::Lz4 });
        }
        Coder::from_name(&self.coder).ok_or_else(|| {
            format!(
                "error: --coder takes auto, {}, not `{}`",
                Coder::NAMES.join(", "),
                self.coder
            )
        })
    }

    /// Per node of the plan's cluster: its worker's address.
    fn addresses(&self, header: &PlanHeader) -> Result<Vec<Option<String>>, String> {
        let nodes = &header.plan.cluster.nodes;
        let mut addresses: Vec<Option<String>> = nodes.iter().map(|n| n.address.clone()).collect();
        let index = |name: &str| {
            nodes.iter().position(|n| n.name == name).ok_or_else(|| {
                let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "error: the plan's cluster has no node `{name}` (it has {})",
                    names.join(", ")
                )
            })
        };
        if let Some(file) = &self.cluster {
            for n in cluster_file::read(file).map_err(|e| format!("error: {e}"))? {
                if let Ok(i) = index(&n.name) {
                    addresses[i] = n.address;
                }
            }
        }
        for w in &self.workers {
            let (name, address) = w
                .split_once('=')
                .ok_or_else(|| format!("error: --worker takes NAME=HOST:PORT, not `{w}`"))?;
            addresses[index(name)?] = Some(address.to_string());
        }
        Ok(addresses)
    }

    /// Connects to the workers of the plan in `file`.
    pub fn connect(
        &self,
        file: &PlanFile<'_>,
        header: &PlanHeader,
        kernels: Kernels,
    ) -> Result<GrpcTransport, String> {
        let token = Token::load(self.token_file.as_deref()).map_err(|e| format!("error: {e}"))?;
        let addresses = self.addresses(header)?;
        if self.tls_dir.is_none() && !self.insecure {
            let cluster = &header.plan.cluster;
            for (n, a) in cluster.nodes.iter().zip(&addresses) {
                if let Some(a) = a.as_deref().filter(|a| n.worker && !is_loopback(a)) {
                    return Err(format!(
                        "error: worker `{}` at {a} is not on this machine: pass --tls-dir DIR (the cluster's certificates, from `adcnn-run certs`), or --insecure to send plain text",
                        n.name
                    ));
                }
            }
        }
        let opts = ConnectOptions {
            addresses,
            token,
            tls: self.tls_dir.clone(),
            kernels,
            coder: self.coder(header)?,
            connect_timeout: Duration::from_secs_f64(if self.connect_timeout.is_finite() {
                self.connect_timeout.clamp(0.1, 3600.0)
            } else {
                3600.0
            }),
            ping_every: Duration::from_secs(1),
            rejoin_every: (self.rejoin_every > 0.0)
                .then(|| Duration::from_secs_f64(self.rejoin_every.clamp(0.01, 86_400.0))),
        };
        GrpcTransport::connect(file, header, &opts).map_err(|e| format!("error: {e}"))
    }
}

/// Opens a plan file for the coordinator: its index and plan section.
pub fn open_plan(path: &Path) -> Result<(PlanFile<'static>, PlanHeader), String> {
    let file = PlanFile::open(path).map_err(|e| plan_error(path, &e))?;
    let header = file.header().map_err(|e| plan_error(path, &e))?;
    Ok((file, header))
}

/// A plan file's error, pointing a network file at the compiler.
pub fn plan_error(path: &Path, e: &adcnn_core::format::FormatError) -> String {
    let yaml = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"));
    match e {
        adcnn_core::format::FormatError::NotAPlan if yaml => format!(
            "error: {0} is a network, not a plan: build a plan with `adcnnc build {0}`, or run the network on the reference interpreter with `adcnnc run {0} --input …`",
            path.display()
        ),
        e => format!("error: {}: {e}", path.display()),
    }
}

/// The coordinator of a plan over the workers' gRPC links, its tail compiled as `kernels`
/// says.
pub fn coordinator(
    header: PlanHeader,
    tail: std::sync::Arc<adcnn_core::program::Program>,
    transport: GrpcTransport,
    kernels: Kernels,
) -> Result<Coordinator<GrpcTransport>, String> {
    let mut c = Coordinator::new(std::sync::Arc::new(header), tail, transport);
    if let Some(opts) = kernels.compile_options() {
        c.compile_tail(&opts)
            .map_err(|e| format!("error: the coordinator's tail: {e}"))?;
    }
    Ok(c)
}
