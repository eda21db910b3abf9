//! The worker daemon (`adcnn-run worker`): serves one coordinator session at a time over
//! gRPC. A session authenticates (the cluster token, by HMAC of fresh nonces), names the
//! plan and the node this worker is, receives the plan sections the worker does not hold yet
//! (kept across sessions by their hash, so a second run ships nothing), compiles the node's
//! kernels (kept while the same plan runs), and then streams tiles through
//! [`crate::worker::Worker`]: one tile at a time, its layers split over `--threads` kernel
//! threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adcnn_core::format::{self, SectionKind, decode_header, decode_program};
use adcnn_core::plan::Segment;
use adcnn_core::program::Program;
use crossbeam::channel::{Receiver, unbounded};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::PROTOCOL_VERSION;
use super::admit;
use super::auth::{self, Role, Token};
use super::codec::{self, Coder};
use super::proto::{self, from_worker, to_worker};
use crate::transport::TileJob;
use crate::worker::{Fault, Kernels, Worker, guarded};

/// Largest gRPC message either side decodes (a tile's input or output; sections travel in
/// chunks of [`CHUNK_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Bytes of plan section per shipped chunk.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Largest plan section a worker accepts.
pub const MAX_SECTION_BYTES: u64 = 1 << 30;
/// Handshakes (Hello without Open yet) a worker keeps at once, and for how long; one peer
/// address may hold [`MAX_HANDSHAKES_PER_PEER`] of them, so that a host sending Hellos cannot
/// lock out the coordinator.
pub const MAX_HANDSHAKES: usize = 16;
pub const MAX_HANDSHAKES_PER_PEER: usize = 4;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake not finished in this long is dropped (a stalled one holds a connection).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session that authenticated but has not started running tiles blocks other
/// coordinators for this long.
pub const SESSION_IDLE: Duration = Duration::from_secs(30);
/// How long Open waits for a running session to end before refusing.
pub const OPEN_WAIT: Duration = Duration::from_secs(5);
/// The metadata key that carries the session id.
pub const SESSION_KEY: &str = "adcnn-session";

/// How a worker daemon runs.
#[derive(Debug)]
pub struct DaemonConfig {
    pub token: Token,
    /// Threads that compute tiles: each tile's layers are split over as many kernel threads,
    /// one tile at a time.
    pub threads: usize,
    /// Bytes of plan sections kept between sessions.
    pub cache_bytes: usize,
    /// An emulated one-way latency added to every message this worker sends (the testbed's,
    /// see [`super::emulate`]); `None` on real links.
    pub latency: Option<Duration>,
}

/// The gRPC service of a worker.
#[derive(Debug, Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: DaemonConfig,
    state: Mutex<State>,
    epoch: Instant,
    /// Set when the daemon is stopping: running sessions end.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Told whenever a session ends.
    ended: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    handshakes: HashMap<String, Handshake>,
    session: Option<Session>,
    /// Plan sections by hash, oldest first for eviction.
    sections: Vec<(u64, Arc<Vec<u8>>)>,
    /// The last worker loaded, kept (with its compiled kernels) for the next session of the
    /// same plan.
    loaded: Option<(LoadKey, Arc<Worker>)>,
}

type LoadKey = (u64, u32, Kernels);

#[derive(Debug)]
struct Handshake {
    coordinator_nonce: Vec<u8>,
    worker_nonce: Vec<u8>,
    started: Instant,
    /// The address the Hello came from.
    peer: Option<std::net::IpAddr>,
}

#[derive(Debug)]
struct Session {
    id: String,
    plan_hash: u64,
    node: u32,
    node_name: String,
    /// The coordinator's address, as this worker sees it (for "busy" messages).
    coordinator: Option<std::net::SocketAddr>,
    sections: Vec<proto::SectionRef>,
    worker: Option<Arc<Worker>>,
    coder: Coder,
    running: bool,
    active: Instant,
}

impl Daemon {
    pub fn new(config: DaemonConfig) -> Daemon {
        Daemon {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                epoch: Instant::now(),
                stopping: tokio::sync::watch::channel(false).0,
                ended: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Ends every running session (its coordinator is told the worker is shutting down) and
    /// refuses new ones.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session a call belongs to: its id from the metadata, checked against the open
    /// session.
    fn session_id<T>(req: &Request<T>) -> Result<String, Status> {
        req.metadata()
            .get(SESSION_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Status::unauthenticated("no session: call Hello and Open first"))
    }

    fn with_session<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Session, &mut Vec<(u64, Arc<Vec<u8>>)>) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let mut state = self.state();
        let State {
            session, sections, ..
        } = &mut *state;
        match session.as_mut().filter(|s| s.id == id) {
            Some(s) => {
                s.active = Instant::now();
                f(s, sections)
            }
            None => Err(Status::unauthenticated(
                "this session is not open on this worker (another coordinator's, or ended)",
            )),
        }
    }

    /// Ends the session `id` (its tile stream ended, or the coordinator closed it).
    fn end(&self, id: &str) {
        let mut state = self.state();
        if state.session.as_ref().is_some_and(|s| s.id == id) {
            state.session = None;
            tracing::info!(session = id, "session ended");
        }
        drop(state);
        self.inner.ended.notify_waiters();
    }

    /// Whether a session other than a new one holds the worker: running tiles, or opened
    /// and still setting up.
    fn busy(&self) -> Option<String> {
        let state = self.state();
        state
            .session
            .as_ref()
            .filter(|s| s.running || s.active.elapsed() < SESSION_IDLE)
            .map(|s| s.node_name.clone())
    }
}

fn has_section(sections: &[(u64, Arc<Vec<u8>>)], hash: u64) -> bool {
    sections.iter().any(|(h, _)| *h == hash)
}

fn section(sections: &[(u64, Arc<Vec<u8>>)], hash: u64) -> Option<Arc<Vec<u8>>> {
    sections
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, b)| Arc::clone(b))
}

/// Keeps `bytes` under `hash`, evicting the oldest sections beyond `budget` (but never the
/// ones `keep` names: the open session's).
fn store(
    sections: &mut Vec<(u64, Arc<Vec<u8>>)>,
    hash: u64,
    bytes: Vec<u8>,
    budget: usize,
    keep: &[u64],
) {
    if has_section(sections, hash) {
        return;
    }
    sections.push((hash, Arc::new(bytes)));
    let mut total: usize = sections.iter().map(|(_, b)| b.len()).sum();
    let mut i = 0;
    while total > budget && i < sections.len() {
        if keep.contains(&sections[i].0) {
            i += 1;
            continue;
        }
        total -= sections[i].1.len();
        sections.remove(i);
    }
}

#[tonic::async_trait]
impl proto::worker_server::Worker for Daemon {
    async fn hello(
        &self,
        req: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloReply>, Status> {
        let peer = req.remote_addr();
        let r = req.into_inner();
        if r.protocol != PROTOCOL_VERSION {
            tracing::warn!(?peer, theirs = r.protocol, "refused: protocol version");
            return Err(Status::failed_precondition(format!(
                "protocol version {} refused: this worker (adcnn {}) speaks version {PROTOCOL_VERSION}",
                r.protocol,
                format::COMPILER_VERSION
            )));
        }
        if r.coordinator_nonce.len() != auth::NONCE_BYTES {
            return Err(Status::invalid_argument("a nonce is 32 bytes"));
        }
        let worker_nonce = auth::nonce();
        let proof =
            self.inner
                .config
                .token
                .prove(Role::Worker, &r.coordinator_nonce, &worker_nonce);
        let id = auth::session_id();
        let mut state = self.state();
        let now = Instant::now();
        state
            .handshakes
            .retain(|_, h| now.duration_since(h.started) < HANDSHAKE_TIMEOUT);
        let ip = peer.map(|a| a.ip());
        let theirs = state.handshakes.values().filter(|h| h.peer == ip).count();
        if theirs >= MAX_HANDSHAKES_PER_PEER {
            tracing::warn!(?peer, "refused: too many handshakes from one peer");
            return Err(Status::resource_exhausted(format!(
                "this address has {theirs} handshakes in progress (Hello without Open), the most one peer may; try again shortly"
            )));
        }
        if state.handshakes.len() >= MAX_HANDSHAKES {
            return Err(Status::resource_exhausted(
                "too many handshakes in progress; try again shortly",
            ));
        }
        state.handshakes.insert(
            id.clone(),
            Handshake {
                coordinator_nonce: r.coordinator_nonce.to_vec(),
                worker_nonce: worker_nonce.clone(),
                started: now,
                peer: ip,
            },
        );
        Ok(Response::new(proto::HelloReply {
            protocol: PROTOCOL_VERSION,
            worker_nonce: worker_nonce.into(),
            worker_proof: proof.into(),
            session: id,
        }))
    }

    async fn open(
        &self,
        req: Request<proto::OpenRequest>,
    ) -> Result<Response<proto::OpenReply>, Status> {
        let id = Self::session_id(&req)?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        if *self.inner.stopping.borrow() {
            return Err(Status::unavailable("the worker is shutting down"));
        }
        // A coordinator that just closed its session may reconnect before this worker has
        // seen the close: wait for a running session to end, a little.
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        while self.busy().is_some() {
            let ended = self.inner.ended.notified();
            if self.busy().is_none() || tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        let mut state = self.state();
        let Some(h) = state
            .handshakes
            .remove(&id)
            .filter(|h| h.started.elapsed() < HANDSHAKE_TIMEOUT)
        else {
            return Err(Status::unauthenticated(
                "no handshake for this session (it expired, or Hello was not called)",
            ));
        };
        let token = &self.inner.config.token;
        if !token.verify(
            Role::Coordinator,
            &h.coordinator_nonce,
            &h.worker_nonce,
            &r.coordinator_proof,
        ) {
            tracing::warn!(?peer, "refused: wrong token");
            return Err(Status::unauthenticated(
                "the coordinator's cluster token does not match this worker's",
            ));
        }
        if let Some(s) = &state.session
            && (s.running || s.active.elapsed() < SESSION_IDLE)
        {
            let from = s
                .coordinator
                .map_or_else(String::new, |a| format!(" at {a}"));
            return Err(Status::unavailable(format!(
                "this worker is serving another coordinator{from} (as its node `{}`, {})",
                s.node_name,
                if s.running {
                    "running tiles"
                } else {
                    "setting up"
                }
            )));
        }
        if r.sections.len() > format::MAX_SECTIONS as usize
            || r.sections.iter().any(|s| s.length > MAX_SECTION_BYTES)
        {
            return Err(Status::invalid_argument("too many or too large sections"));
        }
        let missing: Vec<u32> = r
            .sections
            .iter()
            .enumerate()
            .filter(|(_, s)| !has_section(&state.sections, s.hash))
            .map(|(i, _)| i as u32)
            .collect();
        tracing::info!(
            ?peer,
            node = r.node_name,
            plan = format!("{:016x}", r.plan_hash),
            sections = r.sections.len(),
            missing = missing.len(),
            "session opened"
        );
        state.session = Some(Session {
            id,
            plan_hash: r.plan_hash,
            node: r.node,
            node_name: r.node_name,
            coordinator: peer,
            sections: r.sections,
            worker: None,
            coder: Coder::None,
            running: false,
            active: Instant::now(),
        });
        Ok(Response::new(proto::OpenReply { missing }))
    }

    async fn ship(
        &self,
        req: Request<Streaming<proto::SectionChunk>>,
    ) -> Result<Response<proto::ShipReply>, Status> {
        let id = Self::session_id(&req)?;
        let declared = self.with_session(&id, |s, _| Ok(s.sections.clone()))?;
        let mut stream = req.into_inner();
        let (mut sections, mut bytes) = (0u32, 0u64);
        // The section being received: its reference and bytes so far.
        let mut current: Option<(proto::SectionRef, Vec<u8>)> = None;
        let budget = self.inner.config.cache_bytes;
        let finish = |this: &Daemon, r: proto::SectionRef, data: Vec<u8>| -> Result<(), Status> {
            if data.len() as u64 != r.length || format::fnv1a(&data) != r.hash {
                return Err(Status::data_loss(format!(
                    "section {}:{} arrived damaged ({} of {} bytes, hash mismatch)",
                    r.kind,
                    r.id,
                    data.len(),
                    r.length
                )));
            }
            let keep: Vec<u64> = declared.iter().map(|s| s.hash).collect();
            this.with_session(&id, |_, cache| {
                store(cache, r.hash, data, budget, &keep);
                Ok(())
            })
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if let Some(r) = chunk.section {
                if let Some((prev, data)) = current.take() {
                    finish(self, prev, data)?;
                    sections += 1;
                }
                if !declared
                    .iter()
                    .any(|d| (d.kind, d.id, d.hash, d.length) == (r.kind, r.id, r.hash, r.length))
                {
                    return Err(Status::invalid_argument(
                        "a section this session did not declare",
                    ));
                }
                // Bounded by the declared length, itself bounded in Open.
                current = Some((r, Vec::with_capacity(r.length as usize)));
            }
            let Some((r, data)) = current.as_mut() else {
                return Err(Status::invalid_argument("a chunk before any section"));
            };
            if chunk.offset != data.len() as u64
                || data.len() as u64 + chunk.data.len() as u64 > r.length
            {
                return Err(Status::invalid_argument("a chunk out of place"));
            }
            data.extend_from_slice(&chunk.data);
            bytes += chunk.data.len() as u64;
        }
        if let Some((r, data)) = current.take() {
            finish(self, r, data)?;
            sections += 1;
        }
        tracing::info!(session = id, sections, bytes, "sections received");
        Ok(Response::new(proto::ShipReply { sections, bytes }))
    }

    async fn load(
        &self,
        req: Request<proto::LoadRequest>,
    ) -> Result<Response<proto::LoadReply>, Status> {
        let id = Self::session_id(&req)?;
        let r = req.into_inner();
        let kernels = Kernels::from_name(&r.kernels)
            .ok_or_else(|| Status::invalid_argument(format!("kernels `{}`?", r.kernels)))?;
        let coder = Coder::from_name(&r.coder)
            .ok_or_else(|| Status::invalid_argument(format!("coder `{}`?", r.coder)))?;
        let (key, refs, bytes) = self.with_session(&id, |s, cache| {
            let refs = s.sections.clone();
            let bytes: Option<Vec<Arc<Vec<u8>>>> =
                refs.iter().map(|r| section(cache, r.hash)).collect();
            let bytes = bytes.ok_or_else(|| {
                Status::failed_precondition("sections are missing: ship them first")
            })?;
            s.coder = coder;
            Ok(((s.plan_hash, s.node, kernels), refs, bytes))
        })?;
        let reused = {
            let state = self.state();
            state
                .loaded
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, w)| Arc::clone(w))
        };
        let started = Instant::now();
        let epoch = self.inner.epoch;
        let (worker, cached) = match reused {
            Some(w) => (w, true),
            None => {
                let threads = self.inner.config.threads.max(1);
                let w = tokio::task::spawn_blocking(move || {
                    load_worker(key, &refs, &bytes, epoch, threads)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
                (Arc::new(w), false)
            }
        };
        let threads = self.inner.config.threads.max(1);
        let reply = proto::LoadReply {
            compile_ms: if cached { 0.0 } else { worker.compile_ms },
            weight_bytes: worker.weight_bytes() as u64,
            cached: cached || worker.cached,
            threads: threads as u32,
        };
        self.with_session(&id, |s, _| {
            s.worker = Some(Arc::clone(&worker));
            Ok(())
        })?;
        self.state().loaded = Some((key, worker));
        tracing::info!(
            session = id,
            ms = started.elapsed().as_secs_f64() * 1e3,
            cached,
            "plan loaded"
        );
        Ok(Response::new(reply))
    }

    async fn close(
        &self,
        req: Request<proto::CloseRequest>,
    ) -> Result<Response<proto::CloseReply>, Status> {
        let id = Self::session_id(&req)?;
        self.with_session(&id, |s, _| {
            if s.running {
                Err(Status::failed_precondition(
                    "this session is running: it ends with its tile stream",
                ))
            } else {
                Ok(())
            }
        })?;
        self.end(&id);
        Ok(Response::new(proto::CloseReply {}))
    }

    type RunStream = ReceiverStream<Result<proto::FromWorker, Status>>;

    async fn run(
        &self,
        req: Request<Streaming<proto::ToWorker>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let id = Self::session_id(&req)?;
        let (worker, coder) = self.with_session(&id, |s, _| {
            if s.running {
                return Err(Status::failed_precondition(
                    "this session is already running",
                ));
            }
            let w = s
                .worker
                .clone()
                .ok_or_else(|| Status::failed_precondition("load the plan first"))?;
            s.running = true;
            Ok((w, s.coder))
        })?;
        let mut incoming = req.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<Result<proto::FromWorker, Status>>(256);
        let (job_tx, job_rx) = unbounded::<(TileJob, Instant)>();
        // Tiles one at a time, each split over the worker's kernel threads: a tile's time is
        // then its own (several tile threads on one pool would let a waiting thread start
        // another tile inside the first, whose time would include it).
        let tile_threads = if worker.threads() > 1 {
            1
        } else {
            self.inner.config.threads.max(1)
        };
        for t in 0..tile_threads {
            let (worker, jobs, out) = (Arc::clone(&worker), job_rx.clone(), out_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("adcnn-tiles-{t}"))
                .spawn(move || compute(&worker, &jobs, &out, coder));
            if let Err(e) = spawned {
                return Err(Status::internal(format!("cannot start a thread: {e}")));
            }
        }
        drop(job_rx);
        // A new session starts from the plan's tiles, whatever an earlier one re-planned.
        worker.plan_layout_only();
        let retiler = Arc::clone(&worker);
        let retiling = Arc::new(AtomicBool::new(false));
        let this = self.clone();
        let stopping = stopped(self.inner.stopping.subscribe());
        tokio::spawn(async move {
            tokio::pin!(stopping);
            loop {
                let next = tokio::select! {
                    next = incoming.next() => next,
                    () = &mut stopping => {
                        let _ = out_tx
                            .send(Err(Status::unavailable("the worker is shutting down")))
                            .await;
                        break;
                    }
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(session = id, error = %e, "tile stream broke");
                        break;
                    }
                    None => break,
                };
                match msg.message {
                    Some(to_worker::Message::Job(job)) => {
                        let arrived = Instant::now();
                        let input = job.input.as_ref().ok_or(codec::CodecError::Rank(0));
                        match input.and_then(codec::decode_input) {
                            Ok(input) => {
                                let job = TileJob {
                                    frame: job.frame,
                                    layout: job.layout,
                                    segment: job.segment,
                                    tile: job.tile,
                                    input,
                                };
                                if job_tx.send((job, arrived)).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let result = proto::TileResult {
                                    frame: job.frame,
                                    segment: job.segment,
                                    tile: job.tile,
                                    error: format!("the tile's input: {e}"),
                                    ..Default::default()
                                };
                                let m = from_worker::Message::Result(result);
                                if out_tx
                                    .send(Ok(proto::FromWorker { message: Some(m) }))
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                        }
                    }
                    Some(to_worker::Message::Retile(r)) => {
                        // Compiled beside the tile threads, one re-tile at a time; the answer
                        // follows on the stream.
                        let (worker, out) = (Arc::clone(&retiler), out_tx.clone());
                        let busy = Arc::clone(&retiling);
                        tokio::task::spawn_blocking(move || {
                            let layout = r.layout;
                            let result = if busy.swap(true, Ordering::AcqRel) {
                                Err("another re-tile is being prepared".to_string())
                            } else {
                                let r = serde_json::from_slice::<Vec<Segment>>(&r.segments)
                                    .map_err(|e| format!("the layout: {e}"))
                                    .and_then(|s| guarded(|| worker.retile(layout, &s, &r.keep)));
                                busy.store(false, Ordering::Release);
                                r
                            };
                            let (compile_ms, error) = match result {
                                Ok(ms) => (ms, String::new()),
                                Err(e) => (0.0, e),
                            };
                            let m = from_worker::Message::Retiled(proto::Retiled {
                                layout,
                                compile_ms,
                                error,
                            });
                            let _ = out.blocking_send(Ok(proto::FromWorker { message: Some(m) }));
                        });
                    }
                    Some(to_worker::Message::Ping(p)) => {
                        let m = from_worker::Message::Pong(p);
                        if out_tx
                            .send(Ok(proto::FromWorker { message: Some(m) }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    None => {}
                }
            }
            // The session ends first, so that a coordinator that sees its stream end can
            // open the next one at once; the compute threads end when the job channel
            // closes, and the response stream when they and this task drop their senders.
            this.end(&id);
            drop(job_tx);
            drop(out_tx);
        });
        let out_rx = match self.inner.config.latency {
            Some(d) => super::emulate::delayed(out_rx, d),
            None => out_rx,
        };
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// Resolves once the daemon is stopping.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// A compute thread: tiles from `jobs` through `worker`, results to `out`.
fn compute(
    worker: &Worker,
    jobs: &Receiver<(TileJob, Instant)>,
    out: &mpsc::Sender<Result<proto::FromWorker, Status>>,
    coder: Coder,
) {
    while let Ok((job, arrived)) = jobs.recv() {
        if worker.injected(Fault::Stall, &job) {
            continue; // never answered
        }
        if worker.injected(Fault::Lose, &job) {
            // As a crash looks to the coordinator: the stream breaks.
            let lost = Status::unavailable(format!("failpoint at frame {}", job.frame));
            let _ = out.blocking_send(Err(lost));
            return;
        }
        let started = Instant::now();
        let done = worker.run(&job);
        let (output, error) = match &done.output {
            Ok(t) => (Some(codec::encode_tile(t, coder)), String::new()),
            Err(e) => (None, e.clone()),
        };
        let result = proto::TileResult {
            frame: done.frame,
            segment: done.segment,
            tile: done.tile,
            output,
            error,
            quant_err: done.quant_error.err,
            quant_sq: done.quant_error.sq,
            compute_us: started.elapsed().as_secs_f64() * 1e6,
            queued_us: started.duration_since(arrived).as_secs_f64() * 1e6,
        };
        let m = from_worker::Message::Result(result);
        if out
            .blocking_send(Ok(proto::FromWorker { message: Some(m) }))
            .is_err()
        {
            return;
        }
    }
}

/// Decodes a node's share from its sections and compiles its kernels.
fn load_worker(
    (plan_hash, node, kernels): LoadKey,
    refs: &[proto::SectionRef],
    bytes: &[Arc<Vec<u8>>],
    epoch: Instant,
    threads: usize,
) -> Result<Worker, Status> {
    let bad = |e: String| Status::invalid_argument(format!("the plan sections: {e}"));
    let plan_at = refs
        .iter()
        .position(|r| r.kind == 0)
        .ok_or_else(|| bad("no plan section".into()))?;
    let header = decode_header(&bytes[plan_at]).map_err(|e| bad(e.to_string()))?;
    let node = node as usize;
    if node >= header.plan.cluster.nodes.len() || !header.plan.cluster.nodes[node].worker {
        return Err(bad(format!("node {node} is not a worker of this plan")));
    }
    let mut programs: HashMap<usize, Arc<Program>> = HashMap::new();
    for (r, b) in refs.iter().zip(bytes) {
        let Some(SectionKind::Segment(i)) = SectionKind::from_code(r.kind as u8, r.id) else {
            continue;
        };
        let i = i as usize;
        let seg = header
            .plan
            .segments
            .get(i)
            .ok_or_else(|| bad(format!("no segment {i}")))?;
        let p = decode_program(b, SectionKind::Segment(i as u32))
            .map_err(|e| bad(e.to_string()))?
            .with_id(r.hash);
        p.check_tiles(seg).map_err(bad)?;
        programs.insert(i, Arc::new(p));
    }
    let mut worker = Worker::new(node, &header, plan_hash, &programs, kernels, epoch)
        .map_err(|e| Status::internal(e.to_string()))?;
    worker
        .set_threads(threads)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(worker)
}

/// Serves `daemon` on `listener` (with `tls`, or in plain text) until `shutdown` resolves;
/// also answers the standard gRPC health service.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Daemon,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use proto::worker_server::WorkerServer;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<WorkerServer<Daemon>>().await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let incoming = admit::admitted(incoming, Arc::new(admit::Admission::default()));
    // A plain-text connection must send the whole HTTP/2 preface in time (HTTP/2 would
    // wait for it for ever); a TLS one its first byte (then the handshake timeout holds).
    let first = if tls.is_some() {
        1
    } else {
        admit::H2_PREFACE_BYTES
    };
    let incoming = admit::speaking(incoming, first, admit::FIRST_BYTES_TIMEOUT);
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20)
        .max_concurrent_streams(64);
    if let Some(t) = tls {
        builder = builder.tls_config(t.timeout(TLS_HANDSHAKE_TIMEOUT))?;
    }
    let service = WorkerServer::new(daemon)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    builder
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
