//! The coordinator's gRPC transport: connects to every worker of a plan (mutual TLS with the
//! cluster's certificates, or plain text on loopback / with `--insecure`), authenticates
//! with the cluster token, ships the plan sections each worker lacks, has it compile its
//! kernels, then keeps one bidirectional stream of tiles per worker. Messages move between
//! the coordinator's thread and the network through channels; a dropped stream is reported
//! as the node's loss, never a hang.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adcnn_core::format::{PlanFile, PlanHeader, SectionKind};
use adcnn_kernels::wire::QuantError;
use crossbeam::channel::{Receiver, Sender, unbounded};
use tokio::sync::mpsc;
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

/// Jobs on their way, by (frame, segment, tile): when each was sent and its bytes.
type Sent = HashMap<(u64, u32, u32), (f64, usize)>;

/// Workers over gRPC.
#[derive(Debug)]
pub struct GrpcTransport {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// The tasks reading each worker's results, and pinging it.
    readers: Vec<tokio::task::JoinHandle<()>>,
    pingers: Vec<tokio::task::JoinHandle<()>>,
    senders: Vec<Option<mpsc::Sender<proto::ToWorker>>>,
    events: Receiver<Event>,
    epoch: Instant,
    /// Jobs on their way: when each was sent and its bytes.
    sent: Arc<Mutex<Sent>>,
    coder: Coder,
    names: Vec<String>,
    /// What connecting did, per worker.
    pub links: Vec<NodeLink>,
}

/// An error and its causes, each once ("a: b: c"; libraries often repeat a cause's text in
/// their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        source = s.source();
    }
    reason
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
        let cause = error_chain(cause);
        if cause.contains(&reason) {
            reason = cause;
        } else if !reason.contains(&cause) {
            reason = format!("{reason}: {cause}");
        }
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
        let mut senders: Vec<Option<mpsc::Sender<proto::ToWorker>>> =
            vec![None; cluster.nodes.len()];
        let mut links = Vec::new();
        let (mut readers, mut pingers) = (Vec::new(), Vec::new());
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
        let mut opened = opened.into_iter();
        while let Some(o) = opened.next() {
            let node = o.link.node;
            let (tx, rx) = mpsc::channel::<proto::ToWorker>(1024);
            let mut client = o.client;
            let session = o.session;
            let latency = emulate::latency(&emulate::variable_for(&o.link.name));
            let mut link = o.link;
            link.emulated_latency_ms = latency.map_or(0.0, |d| d.as_secs_f64() * 1e3);
            let stream = runtime.block_on(async {
                let rx = match latency {
                    Some(d) => emulate::delayed(rx, d),
                    None => rx,
                };
                let mut req = Request::new(ReceiverStream::new(rx));
                set_session(&mut req, &session)?;
                client.run(req).await
            });
            let stream = match stream {
                Ok(stream) => stream,
                Err(s) => {
                    runtime.block_on(close_all(opened.collect()));
                    return Err(ConnectError::Refused {
                        node: link.name.clone(),
                        address: link.address.clone(),
                        reason: status_reason(&s),
                    });
                }
            };
            let reader = Reader {
                node,
                events: event_tx.clone(),
                sent: Arc::clone(&sent),
                epoch,
            };
            readers.push(runtime.spawn(reader.read(stream.into_inner())));
            pingers.push(runtime.spawn(ping(tx.clone(), opts.ping_every, epoch)));
            senders[node] = Some(tx);
            links.push(link);
        }
        Ok(GrpcTransport {
            runtime: Some(runtime),
            readers,
            pingers,
            senders,
            events,
            epoch,
            sent,
            coder: opts.coder,
            names: cluster.nodes.iter().map(|n| n.name.clone()).collect(),
            links,
        })
    }
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
        let key = (r.frame, r.segment, r.tile);
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
            bytes_in: bytes_in as u64,
            bytes_out: bytes_out as u64,
        })
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, node: usize, job: TileJob) -> Result<(), TransportError> {
        let tx = self
            .senders
            .get(node)
            .and_then(Option::as_ref)
            .ok_or(TransportError::NotAWorker(node))?;
        let input = codec::encode_input(&job.input, self.coder);
        let bytes = codec::wire_bytes(&input);
        let now = self.now_us();
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((job.frame, job.segment, job.tile), (now, bytes));
        let m = to_worker::Message::Job(proto::TileJob {
            frame: job.frame,
            segment: job.segment,
            tile: job.tile,
            input: Some(input),
        });
        tx.blocking_send(proto::ToWorker { message: Some(m) })
            .map_err(|_| TransportError::Unreachable {
                node: self.names.get(node).cloned().unwrap_or_default(),
                reason: "its tile stream is closed".into(),
            })
    }

    fn recv(&mut self) -> Result<Event, TransportError> {
        self.events.recv().map_err(|_| TransportError::Closed)
    }

    fn now_us(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e6
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        // Closing the job streams ends the workers' sessions: each worker finishes its
        // stream, which the readers see before the runtime goes.
        for p in &self.pingers {
            p.abort();
        }
        self.senders.clear();
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let readers = std::mem::take(&mut self.readers);
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
