//! Workers for the runtime's tests: gRPC worker daemons served from this process on loopback
//! ports the OS picks, each stopped (and its port freed) when the test drops them, and plans
//! built for the `loopback3` cluster.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Compression, Options, Strategy};
use adcnn_core::format::{PlanFile, decode};
use adcnn_core::program::Program;
use adcnn_core::weights::SplitMix64;
use adcnn_runtime::coordinator::Coordinator;
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::net::auth::Token;
use adcnn_runtime::net::client::{ConnectError, ConnectOptions, GrpcTransport};
use adcnn_runtime::net::codec::Coder;
use adcnn_runtime::net::server::{self, Daemon, DaemonConfig};
use adcnn_runtime::net::tls;
use adcnn_runtime::worker::Kernels;
use ndarray::Array3;

pub const TOKEN: &[u8] = b"the loopback test cluster's token";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh temporary folder, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("adcnn-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plan of `net` for `loopback3`, its bytes.
pub fn plan_bytes(net: &str, strategy: Strategy, compression: Compression) -> Vec<u8> {
    let opts = Options {
        strategy,
        compression,
        ..Options::default()
    };
    let root = root();
    build(
        &root.join(format!("dsl-examples/{net}.yaml")),
        Some(&root.join("dsl-examples/loopback3.yaml")),
        &opts,
        2,
    )
    .unwrap_or_else(|e| panic!("{net} {}: {e}", strategy.name()))
    .bytes
}

/// A seeded input for the plan.
pub fn input(bytes: &[u8], seed: u64) -> Array3<f32> {
    let header = PlanFile::parse(bytes)
        .and_then(|f| f.header())
        .expect("plan");
    let s = header.network.input.shape;
    let mut rng = SplitMix64::new(seed);
    Array3::from_shape_simple_fn((s.c, s.h, s.w), || rng.uniform(-1.5, 1.5))
}

/// Worker daemons served from this process, each on a runtime of its own, so that stopping
/// one drops its connections like a crashed process would.
#[derive(Debug)]
pub struct Workers {
    pub addresses: Vec<String>,
    runtimes: Vec<Option<tokio::runtime::Runtime>>,
}

impl Workers {
    /// `n` workers with `token`, each with TLS from `tls` (its folder and the worker's name)
    /// or plain text.
    pub fn start(n: usize, token: &[u8], tls: Option<(&Path, &[&str])>) -> Workers {
        let mut w = Workers {
            addresses: Vec::new(),
            runtimes: Vec::new(),
        };
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            let tls = tls.map(|(dir, names)| tls::server(dir, names[i]).expect("certificates"));
            let daemon = Daemon::new(DaemonConfig {
                token: Token::new(token),
                threads: 1,
                cache_bytes: 1 << 30,
                latency: None,
            });
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("binds");
            w.addresses
                .push(listener.local_addr().expect("an address").to_string());
            runtime.spawn(async move {
                let _ = server::serve(listener, daemon, tls, std::future::pending()).await;
            });
            w.runtimes.push(Some(runtime));
        }
        w
    }

    /// A runtime to run client code on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtimes
            .iter()
            .flatten()
            .next()
            .expect("a running worker")
    }

    /// Stops worker `i` abruptly: its port closes and its connections drop.
    pub fn stop(&mut self, i: usize) {
        if let Some(rt) = self.runtimes[i].take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }

    /// Connection options for a plan on `loopback3` (coordinator, w1, w2, w3), with these
    /// workers' addresses.
    pub fn options(&self, token: &[u8], tls: Option<&Path>) -> ConnectOptions {
        let mut addresses = vec![None];
        addresses.extend(self.addresses.iter().cloned().map(Some));
        ConnectOptions {
            addresses,
            token: Token::new(token),
            tls: tls.map(Path::to_path_buf),
            kernels: Kernels::Jit,
            coder: Coder::Lz4,
            connect_timeout: Duration::from_secs(10),
            ping_every: Duration::from_secs(3600),
            rejoin_every: None,
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for i in 0..self.runtimes.len() {
            self.stop(i);
        }
    }
}

/// A coordinator over gRPC for the plan `bytes`.
pub fn grpc(
    bytes: &[u8],
    opts: &ConnectOptions,
) -> Result<Coordinator<GrpcTransport>, ConnectError> {
    let file = PlanFile::parse(bytes).expect("plan");
    let header = file.header().expect("header");
    let tail: Program = file.tail(&header).expect("tail");
    let transport = GrpcTransport::connect(&file, &header, opts)?;
    let mut c = Coordinator::new(Arc::new(header), Arc::new(tail), transport);
    // As `adcnn-run` does, and as the in-process cluster does with compiled kernels.
    if let Some(o) = opts.kernels.compile_options() {
        c.compile_tail(&o).expect("the tail compiles");
    }
    Ok(c)
}

/// The same plan in this process.
pub fn local(bytes: &[u8]) -> LocalCluster {
    LocalCluster::new(decode(bytes).expect("plan"))
}

/// Certificates for `loopback3`'s nodes (and, with `tag`, of another cluster).
pub fn certificates(dir: &Path) {
    let nodes: Vec<(String, Option<String>)> = ["coordinator", "w1", "w2", "w3"]
        .iter()
        .map(|n| (n.to_string(), Some("127.0.0.1:0".to_string())))
        .collect();
    tls::generate(&nodes, dir).expect("certificates");
}
