//! `adcnn-run worker`: the daemon on each device.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use adcnn_runtime::net::auth::Token;
use adcnn_runtime::net::server::{self, Daemon, DaemonConfig};
use adcnn_runtime::net::{emulate, tls};

/// Serve tiles to a coordinator: a long-running worker for one device of the cluster.
///
/// It waits for a coordinator (`adcnn-run PLAN`) to connect, checks the cluster token
/// (never sent in clear: both sides prove they hold it), receives the plan sections it
/// lacks (kept for the next run), compiles its share's kernels, and computes tiles until
/// the coordinator leaves; then it waits for the next. One coordinator at a time. SIGTERM or
/// Ctrl-C stops it cleanly. Logs go to stderr (more with ADCNN_LOG=debug).
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run worker")]
pub struct WorkerCli {
    /// Address to listen on, HOST:PORT (port 0: any free port; the first line printed says
    /// which).
    #[arg(long)]
    pub listen: String,
    /// The cluster token, shared with the coordinator (or set ADCNN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The cluster's certificates (`adcnn-run certs`): serve TLS and accept only
    /// coordinators with a certificate of this cluster.
    #[arg(long, value_name = "DIR", requires = "name")]
    pub tls_dir: Option<PathBuf>,
    /// This node's name in the cluster (its certificate is NAME.pem in --tls-dir).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve plain text on an address that is not loopback (no TLS).
    #[arg(long)]
    pub insecure: bool,
    /// Threads that compute tiles: each tile's layers are split over this many threads,
    /// one tile at a time (default: the cores this process may use).
    #[arg(long)]
    pub threads: Option<usize>,
    /// MiB of plan sections kept between coordinator sessions.
    #[arg(long, default_value_t = 2048)]
    pub cache_mib: usize,
}

/// The worker's log filter when ADCNN_LOG is not set. tonic reports a refused TLS handshake
/// (a coordinator with another cluster's certificate, or plain text) only at debug, in
/// `io_stream`; that one target is kept so the worker's side of the refusal is logged too.
const DEFAULT_LOG: &str = "warn,adcnn_run=info,adcnn_runtime=info,adcnn_kernels=info,\
     adcnn_core=info,tonic::transport::server::io_stream=debug";

pub fn main(cli: &WorkerCli) -> Result<(), String> {
    // adcnn's own events at info; the libraries' (Cranelift logs every function it compiles,
    // h2 and tonic every frame at debug) only when they warn, unless ADCNN_LOG says more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADCNN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let token = Token::load(cli.token_file.as_deref()).map_err(|e| format!("error: {e}"))?;
    let addr: SocketAddr = cli.listen.parse().map_err(|_| {
        format!(
            "error: --listen takes HOST:PORT with a numeric host (e.g. 0.0.0.0:7070), not `{}`",
            cli.listen
        )
    })?;
    let tls = match (&cli.tls_dir, &cli.name) {
        (Some(dir), Some(name)) => Some(tls::server(dir, name).map_err(|e| format!("error: {e}"))?),
        _ => None,
    };
    if tls.is_none() && !addr.ip().is_loopback() && !cli.insecure {
        return Err(format!(
            "error: {addr} is reachable from other hosts: pass --tls-dir DIR --name NODE (the cluster's certificates, from `adcnn-run certs`), or --insecure to serve plain text"
        ));
    }
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let config = DaemonConfig {
        token,
        threads: threads.max(1),
        cache_bytes: cli.cache_mib.saturating_mul(1 << 20),
        latency: emulate::latency("ADCNN_EMULATED_LATENCY_MS"),
    };
    if let Some(d) = config.latency {
        tracing::info!(
            ms = d.as_secs_f64() * 1e3,
            "emulating link latency (ADCNN_EMULATED_LATENCY_MS)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("adcnn-io")
        .enable_all()
        .build()
        .map_err(|e| format!("error: cannot start the network runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("error: cannot listen on {addr}: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("error: {e}"))?;
        // The first line on stdout: what a supervisor (or a test) waits for.
        adcnn_core::outln!(
            "listening on {local} ({}, {} thread(s))",
            if tls.is_some() { "TLS" } else { "plain text" },
            config.threads
        );
        tracing::info!(%local, threads = config.threads, "worker ready");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::info!("shutting down");
        };
        let daemon = Daemon::new(config);
        let stopping = daemon.clone();
        let shutdown = async move {
            shutdown.await;
            // Running sessions end now; the server then stops once their streams close.
            stopping.stop();
        };
        server::serve(listener, daemon, tls, shutdown)
            .await
            .map_err(|e| format!("error: {e}"))
    })
}
