//! The coordinator's gRPC transport: connects to every worker of a plan (mutual TLS with the
//! cluster's certificates, or plain text on loopback / with `--insecure`), authenticates
//! with the cluster token, ships the plan sections each worker lacks, has it compile its
//! kernels, then keeps one bidirectional stream of tiles per worker. Messages move between
//! the coordinator's thread and the network through channels; a dropped stream is reported
//! as the node's loss, never a hang. A lost worker is tried again in the background (when
//! `rejoin_every` is set): once it answers, it is taken through the same set-up and reported
//! as [`Event::Rejoined`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adcnn_core::format::{PlanFile, PlanHeader, SectionKind};
use adcnn_core::plan::Segment;
use adcnn_kernels::wire::QuantError;
use crossbeam::channel::{Receiver, Sender, unbounded};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::auth::{self, Role, Token};
use super::codec::{self, Coder};
use super::emulate;
use super::proto::{self, from_worker, to_worker, worker_client::WorkerClient};
use super::server::{CHUNK_BYTES, MAX_MESSAGE_BYTES, SESSION_KEY};
use super::{PROTOCOL_VERSION, tls};
use crate::transport::{Event, TileDone, TileJob, Transport, TransportError};
use crate::worker::Kernels;

/// How the coordinator reaches its workers.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Per node of the plan's cluster: the worker's `host:port` (`None` for nodes that only
    /// coordinate).
    pub addresses: Vec<Option<String>>,
    pub token: Token,
    /// The cluster's certificates (`adcnn-run certs`); `None`: plain text.
    pub tls: Option<PathBuf>,
    pub kernels: Kernels,
    pub coder: Coder,
    pub connect_timeout: Duration,
    /// How often each worker is pinged (round-trip telemetry and liveness).
    pub ping_every: Duration,
    /// How often a lost worker is tried again (`None`: never; it stays lost for the run).
    /// The coordinator keeps the plan sections workers need in memory for this.
    pub rejoin_every: Option<Duration>,
}

/// What connecting to one worker did.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLink {
    pub node: usize,
    pub name: String,
    pub address: String,
    /// Plan sections shipped to it (0 when it held them all) and their bytes.
    pub shipped_sections: u32,
    pub shipped_bytes: u64,
    pub compile_ms: f64,
    pub weight_bytes: u64,
    /// Its kernels were already compiled (the same plan ran there before).
    pub cached: bool,
    pub threads: u32,
    /// One-way latency the coordinator adds towards it (the testbed's emulation; 0 on real
    /// links).
    pub emulated_latency_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach worker `{node}` at {address}: {reason}\n  start one there: adcnn-run worker --listen {address} --token-file TOKEN{tls}\n  (or run the plan in this process with --local)"
    )]
    Unreachable {
        node: String,
        address: String,
        reason: String,
        tls: &'static str,
    },
    #[error("cannot talk to worker `{node}` at {address}: {reason}\n  {advice}")]
    Handshake {
        node: String,
        address: String,
        reason: String,
        advice: &'static str,
    },
    #[error("worker `{node}` at {address} refused the session: {reason}")]
    Refused {
        node: String,
        address: String,
        reason: String,
    },
    #[error(
        "worker `{node}` at {address} does not hold this cluster's token (its proof does not match ours)"
    )]
    WrongToken { node: String, address: String },
    #[error("node `{0}` has no address: give the plan's cluster one, or pass --cluster FILE")]
    NoAddress(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read the plan: {0}")]
    Plan(String),
    #[error("cannot start the network runtime: {0}")]
    Runtime(String),
}

/// Jobs on their way, by (frame, segment, tile, node): when each was sent and its bytes (a
/// tile sent again goes to another node and has an entry of its own).
type Sent = HashMap<(u64, u32, u32, usize), (f64, usize)>;

/// Workers over gRPC.
#[derive(Debug)]
pub struct GrpcTransport {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// Per node: its tile stream (`None` for nodes that only coordinate, and lost workers).
    streams: Vec<Option<Stream>>,
    /// Readers of streams that were lost, still to be awaited when the transport closes.
    ended: Vec<JoinHandle<()>>,
    /// Per node: whether it is a worker of the plan.
    workers: Vec<bool>,
    events: Receiver<Event>,
    epoch: Instant,
    /// Jobs on their way: when each was sent and its bytes.
    sent: Arc<Mutex<Sent>>,
    coder: Coder,
    names: Vec<String>,
    /// What connecting did, per worker (a rejoined worker's latest set-up).
    pub links: Vec<NodeLink>,
    /// Trying lost workers again: what it takes, and the tasks trying, by node.
    rejoin: Option<Arc<Rejoin>>,
    retrying: HashMap<usize, JoinHandle<()>>,
}

/// A worker's open tile stream.
#[derive(Debug)]
struct Stream {
    tx: mpsc::Sender<proto::ToWorker>,
    reader: JoinHandle<()>,
    pinger: JoinHandle<()>,
    link: NodeLink,
}

/// What opening a tile stream needs, shared with the tasks that open streams again.
#[derive(Debug, Clone)]
struct StreamContext {
    events: Sender<Event>,
    sent: Arc<Mutex<Sent>>,
    epoch: Instant,
    ping_every: Duration,
}

/// What re-admitting a lost worker needs: its set-up, the sections it may lack, and where
/// a stream opened again waits for the coordinator's thread to take it.
#[derive(Debug)]
struct Rejoin {
    every: Duration,
    plans: HashMap<usize, NodePlan>,
    payloads: Arc<HashMap<u64, Arc<Vec<u8>>>>,
    plan_hash: u64,
    opts: ConnectOptions,
    cx: StreamContext,
    ready: Mutex<HashMap<usize, Stream>>,
}

/// An error and its causes, each once ("a: b: c"; libraries often repeat a cause's text in
/// their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = join_reasons(&reason, &s.to_string());
        source = s.source();
    }
    reason
}

/// `outer: inner`, said once: nothing added when one holds the other, and where the inner
/// text begins with the end of the outer (`h2 error: reading a body` and `reading a body:
/// broken pipe`), the overlap not repeated.
fn join_reasons(outer: &str, inner: &str) -> String {
    if outer.contains(inner) {
        return outer.to_string();
    }
    if inner.contains(outer) {
        return inner.to_string();
    }
    // The overlap is whole messages: the inner text goes on with `: ` after it.
    let overlap = outer.char_indices().map(|(i, _)| i).find(|&i| {
        let tail = &outer[i..];
        i > 0
            && outer[..i].ends_with(": ")
            && inner.starts_with(tail)
            && inner[tail.len()..].starts_with(": ")
    });
    match overlap {
        Some(i) => format!("{}{inner}", &outer[..i]),
        None => format!("{outer}: {inner}"),
    }
}

/// Whether a connection failed in the TLS handshake (a certificate that does not verify,
/// TLS against plain text).
fn is_tls_failure(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "corrupt message",
        "invalidcontenttype",
    ]
    .iter()
    .any(|k| r.contains(k))
}

fn status_reason(s: &Status) -> String {
    let m = s.message();
    let mut reason = if m.is_empty() {
        format!("{:?}", s.code())
    } else {
        m.to_string()
    };
    if let Some(cause) = std::error::Error::source(s) {
        reason = join_reasons(&reason, &error_chain(cause));
    }
    reason
}

impl GrpcTransport {
    /// Connects to the workers of the plan in `file` (whose plan section is `header`).
    pub fn connect(
        file: &PlanFile<'_>,
        header: &PlanHeader,
        opts: &ConnectOptions,
    ) -> Result<GrpcTransport, ConnectError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("adcnn-net")
            .enable_all()
            .build()
            .map_err(|e| ConnectError::Runtime(e.to_string()))?;
        let cluster = &header.plan.cluster;
        let coordinator = cluster.nodes[cluster.coordinator].name.clone();
        let epoch = Instant::now();
        let (event_tx, events) = unbounded::<Event>();
        let sent = Arc::new(Mutex::new(HashMap::new()));
        let mut plans = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            if !node.worker {
                continue;
            }
            let address = opts
                .addresses
                .get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| ConnectError::NoAddress(node.name.clone()))?;
            // The sections this node needs: the plan, and the segments it has tiles in.
            let mut kinds = vec![SectionKind::Plan];
            for (s, seg) in header.plan.segments.iter().enumerate() {
                if seg.tiles.iter().any(|t| t.node == i) {
                    kinds.push(SectionKind::Segment(s as u32));
                }
            }
            let refs = kinds
                .iter()
                .map(|k| {
                    let e = file
                        .entry(*k)
                        .map_err(|e| ConnectError::Plan(e.to_string()))?;
                    let (kind, id) = k.code();
                    Ok(proto::SectionRef {
                        kind: u32::from(kind),
                        id,
                        hash: e.hash,
                        length: e.length,
                    })
                })
                .collect::<Result<Vec<_>, ConnectError>>()?;
            let tls = match &opts.tls {
                Some(dir) => Some(tls::client(dir, &coordinator, &node.name)?),
                None => None,
            };
            plans.push(NodePlan {
                node: i,
                name: node.name.clone(),
                address,
                refs,
                kinds,
                tls,
            });
        }
        // Read what may have to be shipped before going async (the file reader is not Sync).
        let mut payloads: HashMap<u64, Arc<Vec<u8>>> = HashMap::new();
        for p in &plans {
            for (r, k) in p.refs.iter().zip(&p.kinds) {
                if let std::collections::hash_map::Entry::Vacant(e) = payloads.entry(r.hash) {
                    let bytes = file
                        .section(*k)
                        .map_err(|e| ConnectError::Plan(e.to_string()))?;
                    e.insert(Arc::new(bytes));
                }
            }
        }
        let payloads = Arc::new(payloads);
        let hash = file.hash;
        let retained: HashMap<usize, NodePlan> = match opts.rejoin_every {
            Some(_) => plans.iter().map(|p| (p.node, p.clone())).collect(),
            None => HashMap::new(),
        };
        let results = runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for p in plans {
                let (opts, payloads) = (opts.clone(), Arc::clone(&payloads));
                set.spawn(async move { open_node(p, hash, &opts, &payloads).await });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.map_err(|e| ConnectError::Runtime(e.to_string()))?);
            }
            Ok::<_, ConnectError>(out)
        })?;
        let (mut opened, mut failed) = (Vec::new(), Vec::new());
        for r in results {
            match r {
                Ok(o) => opened.push(o),
                Err(e) => failed.push(e),
            }
        }
        opened.sort_by_key(|o| o.link.node);
        if let Some(e) = failed.into_iter().next() {
            // Let the workers that did set up serve the next coordinator at once.
            runtime.block_on(close_all(opened));
            return Err(e);
        }
        let cx = StreamContext {
            events: event_tx,
            sent: Arc::clone(&sent),
            epoch,
            ping_every: opts.ping_every,
        };
        let mut streams: Vec<Option<Stream>> = (0..cluster.nodes.len()).map(|_| None).collect();
        let mut opened = opened.into_iter();
        while let Some(o) = opened.next() {
            let node = o.link.node;
            match runtime.block_on(start_stream(o, &cx)) {
                Ok(stream) => streams[node] = Some(stream),
                Err(e) => {
                    runtime.block_on(close_all(opened.collect()));
                    return Err(e);
                }
            }
        }
        let links = streams.iter().flatten().map(|s| s.link.clone()).collect();
        let rejoin = opts.rejoin_every.map(|every| {
            Arc::new(Rejoin {
                every,
                plans: retained,
                payloads,
                plan_hash: hash,
                opts: opts.clone(),
                cx,
                ready: Mutex::new(HashMap::new()),
            })
        });
        Ok(GrpcTransport {
            runtime: Some(runtime),
            streams,
            ended: Vec::new(),
            workers: cluster.nodes.iter().map(|n| n.worker).collect(),
            events,
            epoch,
            sent,
            coder: opts.coder,
            names: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
            links,
            rejoin,
            retrying: HashMap::new(),
        })
    }

    /// Takes note that `node` is lost: its stream is closed (the worker may end the
    /// session), and trying it again begins.
    fn lose(&mut self, node: usize) {
        let Some(old) = self.streams.get_mut(node).and_then(Option::take) else {
            return;
        };
        old.pinger.abort();
        let Stream { reader, tx, .. } = old;
        drop(tx);
        self.retry(node, reader);
    }

    /// Starts trying `node` again (once its old stream's `reader` has ended), unless
    /// re-admission is off or a try is under way.
    fn retry(&mut self, node: usize, reader: JoinHandle<()>) {
        let (Some(rejoin), Some(runtime)) = (&self.rejoin, &self.runtime) else {
            self.ended.push(reader);
            return;
        };
        if self.retrying.contains_key(&node) {
            self.ended.push(reader);
            return;
        }
        let rejoin = Arc::clone(rejoin);
        let task = runtime.spawn(async move {
            // The old stream's reader reports its loss before the node can be reported back.
            let _ = reader.await;
            rejoin_node(rejoin, node).await;
        });
        self.retrying.insert(node, task);
    }

    /// What the transport does with an event before the coordinator sees it: a loss
    /// closes the stream (and trying again begins), a rejoined worker's stream is taken into
    /// use (`None`: the transport had given up on it, nothing to report).
    fn take(&mut self, e: Event) -> Option<Event> {
        match e {
            Event::Lost { node, .. } => self.lose(node),
            Event::Rejoined { node } if !self.readmit(node) => return None,
            _ => {}
        }
        Some(e)
    }

    /// Takes a re-admitted worker's new stream into use.
    fn readmit(&mut self, node: usize) -> bool {
        self.retrying.remove(&node);
        let stream = self.rejoin.as_ref().and_then(|r| {
            r.ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&node)
        });
        let Some(stream) = stream else {
            return false;
        };
        // It may have broken already (its Lost came first, while the node was still lost,
        // and went unheeded): then it is of no use, and trying begins again.
        if stream.reader.is_finished() {
            stream.pinger.abort();
            self.retry(node, stream.reader);
            return false;
        }
        match self.links.iter_mut().find(|l| l.node == node) {
            Some(l) => *l = stream.link.clone(),
            None => self.links.push(stream.link.clone()),
        }
        if let Some(slot) = self.streams.get_mut(node) {
            *slot = Some(stream);
        }
        true
    }
}

/// Tries a lost worker every `rejoin.every` until it is set up again, then reports it.
async fn rejoin_node(rejoin: Arc<Rejoin>, node: usize) {
    let Some(plan) = rejoin.plans.get(&node) else {
        return;
    };
    loop {
        // Never faster than every 10 ms, whatever the options say.
        tokio::time::sleep(rejoin.every.max(Duration::from_millis(10))).await;
        let opened = open_node(
            plan.clone(),
            rejoin.plan_hash,
            &rejoin.opts,
            &rejoin.payloads,
        )
        .await;
        let stream = match opened {
            Ok(o) => start_stream(o, &rejoin.cx).await,
            Err(e) => Err(e),
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(node, error = %e, "lost worker not back yet");
                continue;
            }
        };
        rejoin
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, stream);
        let _ = rejoin.cx.events.send(Event::Rejoined { node });
        return;
    }
}

/// Opens the tile stream of a worker that is set up, with its reader and pinger.
async fn start_stream(o: Opened, cx: &StreamContext) -> Result<Stream, ConnectError> {
    let node = o.link.node;
    let (tx, rx) = mpsc::channel::<proto::ToWorker>(1024);
    let mut client = o.client;
    let latency = emulate::latency(&emulate::variable_for(&o.link.name));
    let mut link = o.link;
    link.emulated_latency_ms = latency.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let rx = match latency {
        Some(d) => emulate::delayed(rx, d),
        None => rx,
    };
    let mut req = Request::new(ReceiverStream::new(rx));
    let refused = |s: Status| ConnectError::Refused {
        node: link.name.clone(),
        address: link.address.clone(),
        reason: status_reason(&s),
    };
    set_session(&mut req, &o.session).map_err(refused)?;
    let stream = client.run(req).await.map_err(refused)?;
    let reader = Reader {
        node,
        events: cx.events.clone(),
        sent: Arc::clone(&cx.sent),
        epoch: cx.epoch,
    };
    let reader = tokio::spawn(reader.read(stream.into_inner()));
    let pinger = tokio::spawn(ping(tx.clone(), cx.ping_every, cx.epoch));
    Ok(Stream {
        tx,
        reader,
        pinger,
        link,
    })
}

/// Closes the sessions of workers that set up when the whole cluster cannot run.
async fn close_all(opened: Vec<Opened>) {
    let mut set = tokio::task::JoinSet::new();
    for mut o in opened {
        set.spawn(async move { close(&mut o.client, &o.session).await });
    }
    while set.join_next().await.is_some() {}
}

fn set_session<T>(req: &mut Request<T>, session: &str) -> Result<(), Status> {
    let v: MetadataValue<_> = session
        .parse()
        .map_err(|_| Status::internal("a session id that is not ASCII"))?;
    req.metadata_mut().insert(SESSION_KEY, v);
    Ok(())
}

#[derive(Debug, Clone)]
struct NodePlan {
    node: usize,
    name: String,
    address: String,
    refs: Vec<proto::SectionRef>,
    kinds: Vec<SectionKind>,
    tls: Option<tonic::transport::ClientTlsConfig>,
}

struct Opened {
    client: WorkerClient<Channel>,
    session: String,
    link: NodeLink,
}

/// Connects to one worker and takes it through Hello, Open, Ship and Load.
async fn open_node(
    p: NodePlan,
    plan_hash: u64,
    opts: &ConnectOptions,
    payloads: &HashMap<u64, Arc<Vec<u8>>>,
) -> Result<Opened, ConnectError> {
    let NodePlan {
        node,
        name,
        address,
        refs,
        tls,
        ..
    } = p;
    let hint = if tls.is_some() {
        " --tls-dir CERTS --name NODE"
    } else {
        ""
    };
    let unreachable = |reason: String| ConnectError::Unreachable {
        node: name.clone(),
        address: address.clone(),
        reason,
        tls: hint,
    };
    let refused = |s: Status| ConnectError::Refused {
        node: name.clone(),
        address: address.clone(),
        reason: status_reason(&s),
    };
    let secure = tls.is_some();
    let scheme = if secure { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| unreachable(format!("not an address: {e}")))?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20);
    if let Some(t) = tls {
        endpoint = endpoint
            .tls_config(t)
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
    }
    let handshake = |reason: String| {
        let r = reason.to_ascii_lowercase();
        let advice = if !secure {
            "the worker serves TLS (it was started with --tls-dir): pass --tls-dir CERTS here too"
        } else if r.contains("invalidcontenttype") || r.contains("corrupt message") {
            "the worker answers in plain text (it was started without --tls-dir): start it with --tls-dir CERTS --name NODE, or leave --tls-dir off here (loopback only)"
        } else {
            "its certificate must come from the same `adcnn-run certs` as --tls-dir's ca.pem, issued for this node's name and address (the worker's --name)"
        };
        ConnectError::Handshake {
            node: name.clone(),
            address: address.clone(),
            reason,
            advice,
        }
    };
    let channel = endpoint.connect().await.map_err(|e| {
        let reason = error_chain(&e);
        if is_tls_failure(&reason) {
            handshake(reason)
        } else {
            unreachable(reason)
        }
    })?;
    let mut client = WorkerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let ours = auth::nonce();
    let hello = client
        .hello(proto::HelloRequest {
            protocol: PROTOCOL_VERSION,
            coordinator_nonce: ours.clone().into(),
        })
        .await
        .map_err(|s| {
            let reason = status_reason(&s);
            match s.code() {
                _ if is_tls_failure(&reason) => handshake(reason),
                // Plain text to a TLS worker: it drops the connection at the HTTP/2 preface.
                tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable
                    if !secure
                        && !reason.contains("tcp connect")
                        && (reason.contains("h2 protocol error")
                            || reason.starts_with("transport error")) =>
                {
                    handshake(reason)
                }
                tonic::Code::Unavailable | tonic::Code::Unknown if reason.contains("connect") => {
                    unreachable(reason)
                }
                _ => refused(s),
            }
        })?
        .into_inner();
    if hello.protocol != PROTOCOL_VERSION {
        return Err(refused(Status::failed_precondition(format!(
            "it speaks protocol version {}, this coordinator {PROTOCOL_VERSION}",
            hello.protocol
        ))));
    }
    if !opts.token.verify(
        Role::Worker,
        &ours,
        &hello.worker_nonce,
        &hello.worker_proof,
    ) {
        return Err(ConnectError::WrongToken {
            node: name,
            address,
        });
    }
    let session = hello.session;
    let proof = opts
        .token
        .prove(Role::Coordinator, &ours, &hello.worker_nonce);
    let mut req = Request::new(proto::OpenRequest {
        coordinator_proof: proof.into(),
        plan_hash,
        node: node as u32,
        node_name: name.clone(),
        sections: refs.clone(),
    });
    set_session(&mut req, &session).map_err(refused)?;
    let missing = client
        .open(req)
        .await
        .map_err(refused)?
        .into_inner()
        .missing;
    // The worker now holds the session for us: release it if the rest fails.
    let link = async {
        let (shipped_bytes, loaded) =
            ship_and_load(&mut client, &session, &refs, &missing, payloads, opts)
                .await
                .map_err(refused)?;
        Ok(NodeLink {
            node,
            name: name.clone(),
            address: address.clone(),
            shipped_sections: missing.len() as u32,
            shipped_bytes,
            compile_ms: loaded.compile_ms,
            weight_bytes: loaded.weight_bytes,
            cached: loaded.cached,
            threads: loaded.threads,
            emulated_latency_ms: 0.0,
        })
    }
    .await;
    match link {
        Ok(link) => Ok(Opened {
            client,
            session,
            link,
        }),
        Err(e) => {
            close(&mut client, &session).await;
            Err(e)
        }
    }
}

/// Ends a session that will not run (best effort: the worker also lets it go when idle).
async fn close(client: &mut WorkerClient<Channel>, session: &str) {
    let mut req = Request::new(proto::CloseRequest {});
    if set_session(&mut req, session).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.close(req)).await;
    }
}

/// Ships the sections the worker lacks and has it load the plan; returns the bytes shipped.
async fn ship_and_load(
    client: &mut WorkerClient<Channel>,
    session: &str,
    refs: &[proto::SectionRef],
    missing: &[u32],
    payloads: &HashMap<u64, Arc<Vec<u8>>>,
    opts: &ConnectOptions,
) -> Result<(u64, proto::LoadReply), Status> {
    let mut chunks = Vec::new();
    let mut shipped_bytes = 0u64;
    for &m in missing {
        let r = refs
            .get(m as usize)
            .ok_or_else(|| Status::internal("asked for a section that was not offered"))?;
        let bytes = payloads
            .get(&r.hash)
            .ok_or_else(|| Status::internal("a section we do not have"))?;
        shipped_bytes += bytes.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + CHUNK_BYTES).min(bytes.len());
            chunks.push(proto::SectionChunk {
                section: (offset == 0).then_some(*r),
                offset: offset as u64,
                data: bytes[offset..end].to_vec().into(),
            });
            offset = end;
            if offset >= bytes.len() {
                break;
            }
        }
    }
    if !chunks.is_empty() {
        let mut req = Request::new(tokio_stream::iter(chunks));
        set_session(&mut req, session)?;
        client.ship(req).await?;
    }
    let mut req = Request::new(proto::LoadRequest {
        kernels: match opts.kernels {
            Kernels::Jit => "jit",
            Kernels::Gemm => "gemm",
            Kernels::Reference => "reference",
        }
        .into(),
        coder: opts.coder.name().into(),
    });
    set_session(&mut req, session)?;
    let loaded = client.load(req).await?.into_inner();
    Ok((shipped_bytes, loaded))
}

/// Pings a worker every `every` on its tile stream.
async fn ping(tx: mpsc::Sender<proto::ToWorker>, every: Duration, epoch: Instant) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let m = to_worker::Message::Ping(proto::Ping {
            sent_us: epoch.elapsed().as_secs_f64() * 1e6,
        });
        if tx.send(proto::ToWorker { message: Some(m) }).await.is_err() {
            return;
        }
    }
}

/// Reads one worker's results.
struct Reader {
    node: usize,
    events: Sender<Event>,
    sent: Arc<Mutex<Sent>>,
    epoch: Instant,
}

impl Reader {
    async fn read(self, mut stream: tonic::Streaming<proto::FromWorker>) {
        let lost = loop {
            let msg = match stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(s)) => break status_reason(&s),
                None => break "its tile stream ended".to_string(),
            };
            let now_us = self.epoch.elapsed().as_secs_f64() * 1e6;
            let event = match msg.message {
                Some(from_worker::Message::Pong(p)) => Event::Rtt {
                    node: self.node,
                    rtt_us: now_us - p.sent_us,
                },
                Some(from_worker::Message::Result(r)) => self.done(r, now_us),
                Some(from_worker::Message::Retiled(r)) => Event::Retiled {
                    node: self.node,
                    layout: r.layout,
                    result: if r.error.is_empty() {
                        Ok(r.compile_ms)
                    } else {
                        Err(r.error)
                    },
                },
                None => continue,
            };
            if self.events.send(event).is_err() {
                return;
            }
        };
        let _ = self.events.send(Event::Lost {
            node: self.node,
            reason: lost,
        });
    }

    fn done(&self, r: proto::TileResult, received_us: f64) -> Event {
        let key = (r.frame, r.segment, r.tile, self.node);
        let sent = self
            .sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let (sent_us, bytes_in) = sent.unwrap_or((received_us, 0));
        let bytes_out = r.output.as_ref().map_or(0, codec::wire_bytes);
        let output = match (&r.output, r.error.is_empty()) {
            (Some(t), true) => codec::decode_tile(t).map_err(|e| format!("its result: {e}")),
            (None, true) => Err("a result without output".to_string()),
            (_, false) => Err(r.error.clone()),
        };
        // The compute span, placed in our clock: half the time on the wire each way.
        let on_wire = (received_us - sent_us - r.compute_us - r.queued_us).max(0.0);
        let start_us = sent_us + on_wire / 2.0 + r.queued_us;
        Event::Done(TileDone {
            frame: r.frame,
            segment: r.segment,
            tile: r.tile,
            node: self.node,
            output,
            quant_error: QuantError {
                err: r.quant_err,
                sq: r.quant_sq,
            },
            start_us,
            end_us: start_us + r.compute_us,
            sent_us,
            received_us,
            wire_us: on_wire,
            bytes_in: bytes_in as u64,
            bytes_out: bytes_out as u64,
        })
    }
}

impl GrpcTransport {
    /// Puts `m` on `node`'s tile stream (a node whose stream is gone is lost).
    fn put(
        &mut self,
        node: usize,
        name: String,
        m: to_worker::Message,
    ) -> Result<(), TransportError> {
        let tx = &self
            .streams
            .get(node)
            .and_then(Option::as_ref)
            .ok_or_else(|| TransportError::Unreachable {
                node: name.clone(),
                reason: "it was lost".into(),
            })?
            .tx;
        let sent = tx.blocking_send(proto::ToWorker { message: Some(m) });
        sent.map_err(|_| {
            self.lose(node);
            TransportError::Unreachable {
                node: name,
                reason: "its tile stream is closed".into(),
            }
        })
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, node: usize, job: TileJob) -> Result<(), TransportError> {
        if !self.workers.get(node).copied().unwrap_or(false) {
            return Err(TransportError::NotAWorker(node));
        }
        let name = self.names.get(node).cloned().unwrap_or_default();
        if self.streams.get(node).and_then(Option::as_ref).is_none() {
            return Err(TransportError::Unreachable {
                node: name,
                reason: "it was lost".into(),
            });
        }
        let input = codec::encode_input(&job.input, self.coder);
        let bytes = codec::wire_bytes(&input);
        let now = self.now_us();
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((job.frame, job.segment, job.tile, node), (now, bytes));
        let m = to_worker::Message::Job(proto::TileJob {
            frame: job.frame,
            segment: job.segment,
            tile: job.tile,
            input: Some(input),
            layout: job.layout,
        });
        self.put(node, name, m)
    }

    fn retile(
        &mut self,
        node: usize,
        layout: u32,
        segments: Arc<Vec<Segment>>,
        keep: &[u32],
    ) -> Result<(), TransportError> {
        if !self.workers.get(node).copied().unwrap_or(false) {
            return Err(TransportError::NotAWorker(node));
        }
        let name = self.names.get(node).cloned().unwrap_or_default();
        let json = serde_json::to_vec(&*segments).map_err(|e| TransportError::Unreachable {
            node: name.clone(),
            reason: format!("cannot encode the layout: {e}"),
        })?;
        let m = to_worker::Message::Retile(proto::Retile {
            layout,
            segments: json.into(),
            keep: keep.to_vec(),
        });
        self.put(node, name, m)
    }

    fn recv(&mut self) -> Result<Event, TransportError> {
        loop {
            let e = self.events.recv().map_err(|_| TransportError::Closed)?;
            if let Some(e) = self.take(e) {
                return Ok(e);
            }
        }
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, TransportError> {
        let Some(until) = Instant::now().checked_add(timeout) else {
            return self.recv().map(Some);
        };
        loop {
            let e = match self.events.recv_deadline(until) {
                Ok(e) => e,
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => return Ok(None),
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                    return Err(TransportError::Closed);
                }
            };
            if let Some(e) = self.take(e) {
                return Ok(Some(e));
            }
        }
    }

    fn now_us(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e6
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        // Closing the job streams ends the workers' sessions: each worker finishes its
        // stream, which the readers see before the runtime goes.
        for (_, task) in self.retrying.drain() {
            task.abort();
        }
        let mut readers = std::mem::take(&mut self.ended);
        for s in self.streams.drain(..).flatten() {
            s.pinger.abort();
            drop(s.tx);
            readers.push(s.reader);
        }
        // Streams opened again that were never taken into use.
        if let Some(r) = &self.rejoin {
            let ready = std::mem::take(&mut *r.ready.lock().unwrap_or_else(|e| e.into_inner()));
            for (_, s) in ready {
                s.pinger.abort();
                readers.push(s.reader);
            }
        }
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        runtime.block_on(async {
            let all = async {
                for r in readers {
                    let _ = r.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), all).await;
        });
        runtime.shutdown_timeout(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::join_reasons;

    #[test]
    fn reasons_are_joined_without_repeating_themselves() {
        assert_eq!(
            join_reasons(
                "h2 protocol error: error reading a body from connection",
                "error reading a body from connection: stream closed because of a broken pipe"
            ),
            "h2 protocol error: error reading a body from connection: stream closed because of \
             a broken pipe"
        );
        assert_eq!(
            join_reasons("transport error", "transport error"),
            "transport error"
        );
        assert_eq!(
            join_reasons("tcp connect error", "Connection refused (os error 111)"),
            "tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(join_reasons("io", "broken pipe: io"), "broken pipe: io");
        // Words that happen to meet are not an overlap: only whole messages are.
        assert_eq!(
            join_reasons("error reading a body from connection", "connection reset"),
            "error reading a body from connection: connection reset"
        );
        assert_eq!(join_reasons("read a", "a thing"), "read a: a thing");
        assert_eq!(
            join_reasons("h2: reading a body", "reading a body: reset: by peer"),
            "h2: reading a body: reset: by peer"
        );
    }
}
