//! The coordinator: runs frames through a plan over any [`Transport`]. Per segment it
//! scatters each tile's input region to the tile's node, stitches the tiles that come back
//! (decoding q8/q4 straight into place), and moves on to the next segment; after the last,
//! it runs the tail itself. Several frames may be in flight at once: while one frame's tail
//! runs here, the next frame's tiles are already on the workers. Frames come out in order.
//!
//! A worker that is lost (its connection drops, a job cannot reach it) costs no frame: its
//! outstanding tiles are sent again to the other workers that hold the same segment, and
//! later frames route its tiles there too (the book: "When a worker is lost or late"). The
//! first result of a tile wins; a late duplicate is dropped. A worker that comes back (the
//! transport reports [`Event::Rejoined`]) gets the plan's tiles again from the next segment
//! on. With [`Deadlines`], a tile that is late is sent to another worker of its segment as
//! well, and its node gets no new tiles until it answers.
//!
//! With re-planning on ([`Coordinator::set_replan`]), the tiles themselves follow the nodes'
//! measured speeds: when a node drifts from what the running *layout* assumed (see
//! [`crate::replan`]), or is lost, or comes back, the coordinator re-balances the plan's
//! segments ([`adcnn_core::rebalance`]), sends the new layout to the workers, and once every
//! one has prepared it, frames admitted from then on use it; frames already out finish on
//! theirs. No frame is dropped or run twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use adcnn_core::eval::EvalError;
use adcnn_core::format::{PlanHeader, ProgramLayers};
use adcnn_core::input::Frame;
use adcnn_core::net::LayerId;
use adcnn_core::plan::{Compression, Segment, Tile};
use adcnn_core::program::Program;
use adcnn_core::rebalance::{SegmentLayers, rebalance, shares};
use adcnn_core::tensor::region_mut;
use adcnn_kernels::wire::{self, QuantError, WireError, WireTile};
use adcnn_kernels::{CompileError, CompileOptions, CompiledProgram};
use ndarray::Array3;

use crate::replan::{Drift, Link, ReplanConfig};
use crate::telemetry::Telemetry;
use crate::trace::{Event as Span, Flow, Trace};
use crate::transport::{Event, TileDone, TileInput, TileJob, Transport, TransportError};
use crate::worker::{tile_input, tile_pixels};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the input has shape {found:?}; the plan's network takes {expected}")]
    InputShape { found: [usize; 3], expected: String },
    #[error("node {node}: {message}")]
    Kernel { node: String, message: String },
    #[error("the coordinator's tail: {0}")]
    Tail(#[from] EvalError),
    /// A node was lost and no other worker holds a segment it computed tiles of.
    #[error(
        "node {node} was lost ({reason}) and no other worker holds segment {segment}; \
         a plan that gives every segment's tiles to several workers (e.g. `auto`, `fdsp`, \
         `halo`) survives a lost worker"
    )]
    WorkerLost {
        node: String,
        reason: String,
        segment: usize,
    },
    #[error("tile from node {node}: {source}")]
    Wire { node: String, source: WireError },
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A frame could not be read (the message says which and why).
    #[error("{0}")]
    Input(String),
    /// A finished frame could not be delivered: the consumer of [`Coordinator::run_stream`]
    /// failed (the message says why), and the stream stops.
    #[error("{0}")]
    Output(String),
}

/// What one frame produced and measured.
#[derive(Debug)]
pub struct RunReport {
    /// The frame's number, from 0 in the order frames went in.
    pub frame: u64,
    pub output: Array3<f32>,
    pub measured_ms: f64,
    /// Per node: busy milliseconds (tiles for workers; scatter, stitch and tail for the
    /// coordinator).
    pub node_busy_ms: Vec<f64>,
    /// Bytes of tile outputs that crossed the wire.
    pub wire_bytes: u64,
    /// Relative L2 error that compression added to what crossed the wire: tile outputs and
    /// later segments' inputs (0 without compression).
    pub compression_error: f64,
    pub trace: Trace,
    /// What was measured of the nodes while the frame ran.
    pub telemetry: Vec<Telemetry>,
    /// Tiles of this frame sent again: their node was lost, or they were late.
    pub redispatched: Vec<Redispatch>,
}

/// A tile sent to another node: because its node was lost, or (`late`) missed its
/// deadline there (then both may answer; the first result wins).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Redispatch {
    pub segment: u32,
    pub tile: u32,
    pub from: usize,
    pub to: usize,
    pub late: bool,
}

/// When a tile is late: not back `factor` times the time tiles of its segment took on its
/// node (smoothed; the plan's prediction until one came back), and never before `floor`.
/// A late tile is sent once more, to the holder of its segment with the fewest tiles out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deadlines {
    pub factor: f64,
    pub floor: std::time::Duration,
}

/// A frame on its way through the plan.
struct InFlight {
    id: u64,
    /// The tile layout it runs on (index into the coordinator's layouts).
    layout: usize,
    /// The input image's pixels, which the first segment's tiles travel as.
    pixels: Option<Array3<u8>>,
    /// The segment whose tiles are out.
    segment: usize,
    /// That segment's input, whole.
    current: Array3<f32>,
    /// Its output, being stitched.
    out: Array3<f32>,
    /// Per tile of the segment: the copies out, each its node and when it was sent (the
    /// first is the one deadlines count from); cleared once stitched.
    copies: Vec<Vec<(usize, f64)>>,
    /// Per tile: stitched (a later result is a duplicate); when it is late (µs, infinite
    /// without deadlines or once sent again as late).
    stitched: Vec<bool>,
    due: Vec<f64>,
    pending: usize,
    /// Work stealing: tiles of the segment not sent yet, in the order they go out, each
    /// with the node it was on when that node was lost (then it counts as re-dispatched).
    queue: VecDeque<(usize, Option<usize>)>,
    start_us: f64,
    busy: Vec<f64>,
    wire: u64,
    quant: QuantError,
    trace: Trace,
    telemetry: Vec<Telemetry>,
    redispatched: Vec<Redispatch>,
}

impl InFlight {
    /// Notes a tile sent again, in the report and the telemetry.
    fn redispatch(&mut self, r: Redispatch) {
        self.telemetry.push(Telemetry::Redispatch {
            frame: self.id,
            segment: r.segment,
            tile: r.tile,
            from: r.from,
            to: r.to,
            late: r.late,
        });
        self.redispatched.push(r);
    }
}

/// Where [`Coordinator::advance`] left a frame.
#[allow(
    clippy::large_enum_variant,
    reason = "one per segment of a frame, moved once into the map of frames in flight"
)]
enum Step {
    /// Tiles are out.
    Waiting(InFlight),
    Done(RunReport),
}

/// Runs frames through a plan over a transport.
pub struct Coordinator<T: Transport> {
    header: Arc<PlanHeader>,
    tail: Arc<Program>,
    /// The tail on compiled kernels (unless set, on the plain operators).
    tail_kernels: Option<CompiledProgram>,
    transport: T,
    next_frame: u64,
    /// Measurements that belong to no frame (pings, losses), for the next frame's report.
    pending: Vec<Telemetry>,
    /// Spans that belong to no frame (a re-plan), for the next frame's trace.
    pending_spans: Vec<Span>,
    /// Per segment, per tile: the node its jobs go to (the plan's, until a node is lost).
    routes: Vec<Vec<usize>>,
    /// Per segment: the nodes that hold it (the plan gave them tiles of it), in order.
    holders: Vec<Vec<usize>>,
    /// Per node: lost (no job goes to it any more).
    lost: Vec<bool>,
    /// Nodes found unreachable while sending, with why, not yet handled.
    unreachable: Vec<(usize, String)>,
    /// Re-dispatching late tiles (off unless set).
    deadlines: Option<Deadlines>,
    /// Work stealing: at most this many tiles out per node, the rest queued until a holder
    /// of their segment has room (off unless set: every tile goes out at once, to its node).
    steal: Option<usize>,
    /// Per node: a tile of it was late (which, and when) and has not come back; it gets no
    /// new tiles (where others hold the segment) until that tile, or one sent after, does.
    suspect: Vec<Option<(TileKey, f64)>>,
    /// By (layout, segment, node): how long its tiles took, sent to received (µs, smoothed).
    took_us: HashMap<(usize, usize, usize), f64>,
    /// Tile layouts: the plan's (0), then one per re-plan. Frames keep the one they were
    /// admitted with.
    layouts: Vec<Arc<Vec<Segment>>>,
    /// The layout new frames take.
    current: usize,
    /// Re-planning (off unless set).
    replan: Option<Replanner>,
    /// Per node: a node that came back while a later layout than the plan's runs is given
    /// that layout (index) before it gets tiles again.
    rejoining: Vec<Option<usize>>,
    /// Per node: the layouts it holds (said ready), as it keeps them; no job of another
    /// layout goes to it.
    has: Vec<Vec<usize>>,
    /// By (node, layout) sent to it: the layouts it was told to keep besides.
    keeps: HashMap<(usize, usize), Vec<usize>>,
}

/// Frames a new layout may take to be ready on every worker before it is given up (a
/// worker that never answers).
const PENDING_FRAMES: usize = 50;

/// What re-planning keeps.
struct Replanner {
    drift: Drift,
    /// Per segment: its layers and their FLOPs.
    layers: Vec<(ProgramLayers, Vec<u64>)>,
    /// A layout sent to the workers, not yet ready on all of them.
    pending: Option<PendingLayout>,
    /// A re-plan wanted whatever the drift (a node lost or back), and why.
    wanted: Option<String>,
    /// Layouts switched to.
    replans: usize,
}

struct PendingLayout {
    layout: usize,
    /// Frames finished since it was sent (it is given up after [`PENDING_FRAMES`]).
    frames: usize,
    /// Workers that have not said it is ready.
    waiting: Vec<usize>,
    reason: String,
    speeds: Vec<f64>,
    links: Vec<f64>,
    predicted_ms: f64,
    current_ms: f64,
}

impl<T: Transport> std::fmt::Debug for Coordinator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("network", &self.header.plan.network)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Coordinator<T> {
    pub fn new(header: Arc<PlanHeader>, tail: Arc<Program>, transport: T) -> Self {
        let layout0 = Arc::new(header.plan.segments.clone());
        let routes = layout_routes(&layout0);
        let holders = routes
            .iter()
            .map(|r| {
                let mut h = r.clone();
                h.sort_unstable();
                h.dedup();
                h
            })
            .collect();
        let n_nodes = header.plan.cluster.nodes.len();
        let lost = vec![false; n_nodes];
        Coordinator {
            header,
            tail,
            tail_kernels: None,
            transport,
            next_frame: 0,
            pending: Vec::new(),
            pending_spans: Vec::new(),
            routes,
            holders,
            lost,
            unreachable: Vec::new(),
            deadlines: None,
            steal: None,
            suspect: vec![None; n_nodes],
            took_us: HashMap::new(),
            layouts: vec![layout0],
            current: 0,
            replan: None,
            rejoining: vec![None; n_nodes],
            has: vec![vec![0]; n_nodes],
            keeps: HashMap::new(),
        }
    }

    /// Runs the tail on kernels compiled with `opts` (its convolutions as a segment's,
    /// fully connected layers on the GEMV) instead of the plain operators; returns how long
    /// compiling took (ms).
    pub fn compile_tail(&mut self, opts: &CompileOptions) -> Result<f64, CompileError> {
        let t0 = std::time::Instant::now();
        self.tail_kernels = Some(CompiledProgram::compile(&self.tail, opts)?);
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// Re-plans when the nodes drift from what the running layout assumed, or one is lost
    /// or back (see [`ReplanConfig`]); `None` (the default) keeps the plan's tiles.
    /// `layers` describes every segment of the plan, in order (its program's layers).
    pub fn set_replan(
        &mut self,
        config: Option<ReplanConfig>,
        layers: Vec<ProgramLayers>,
    ) -> Result<(), String> {
        let Some(config) = config else {
            self.replan = None;
            return Ok(());
        };
        let plan = &self.header.plan;
        if layers.len() != plan.segments.len() {
            return Err(format!(
                "{} segments described, the plan has {}",
                layers.len(),
                plan.segments.len()
            ));
        }
        let mut described = Vec::with_capacity(layers.len());
        for (i, (l, seg)) in layers.into_iter().zip(&plan.segments).enumerate() {
            if (l.first, LayerId(l.first.0 + l.layers.len() as u32)) != (seg.first, seg.end) {
                return Err(format!("segment {i}: its layers do not match the plan's"));
            }
            let flops = seg
                .layers()
                .map(|id| {
                    self.header
                        .network
                        .layers
                        .get(id.index())
                        .map_or(0, |x| x.flops)
                })
                .collect();
            described.push((l, flops));
        }
        let assumed = (0..plan.cluster.nodes.len())
            .map(|n| {
                let node = &plan.cluster.nodes[n];
                if node.worker {
                    node.speed().max(1e-3)
                } else {
                    0.0
                }
            })
            .collect();
        let links = (0..plan.cluster.nodes.len())
            .map(|n| {
                let node = &plan.cluster.nodes[n];
                let mbps = node.mbps.filter(|_| n != plan.cluster.coordinator)?;
                Some(Link {
                    mbps,
                    latency_ms: node.latency_ms,
                })
            })
            .collect();
        self.replan = Some(Replanner {
            drift: Drift::new(config, assumed, links),
            layers: described,
            pending: None,
            wanted: None,
            replans: 0,
        });
        Ok(())
    }

    /// Work stealing (DeepThings-style): a segment's tiles are not sent to the nodes the
    /// plan put them on but queued, and each node that holds the segment takes the next
    /// one (largest first, oldest frame first) whenever it has fewer than `depth` out, so
    /// faster nodes take more. `None` (the default) sends every tile to its node at once.
    pub fn set_stealing(&mut self, depth: Option<usize>) {
        self.steal = depth.map(|d| d.max(1));
    }

    /// Whether the tiles are re-planned (see [`Self::set_replan`]).
    pub fn replanning(&self) -> bool {
        self.replan.is_some()
    }

    /// Tiles out per node with work stealing (`None`: every tile goes to its node).
    pub fn stealing(&self) -> Option<usize> {
        self.steal
    }

    /// The tiles new frames run on now: the plan's, or the last re-plan's.
    pub fn layout(&self) -> &[Segment] {
        &self.layouts[self.current]
    }

    /// How many times the tiles were re-planned.
    pub fn replans(&self) -> usize {
        self.replan.as_ref().map_or(0, |r| r.replans)
    }

    /// Sends late tiles again (see [`Deadlines`]); `None` (the default) waits for every
    /// tile however long it takes.
    pub fn set_deadlines(&mut self, deadlines: Option<Deadlines>) {
        self.deadlines = deadlines;
    }

    /// Per node: whether it was lost (it gets no more tiles).
    pub fn lost_nodes(&self) -> &[bool] {
        &self.lost
    }

    /// The node that computes each tile of each segment now: the plan's assignment, with
    /// lost nodes' tiles moved to others.
    pub fn routes(&self) -> &[Vec<usize>] {
        &self.routes
    }

    pub fn header(&self) -> &PlanHeader {
        &self.header
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Runs one frame.
    pub fn run(&mut self, input: &Array3<f32>) -> Result<RunReport, RunError> {
        self.run_frame(Frame::from(input.clone()))
    }

    /// Runs one frame, its first segment's tiles as pixels when it has them.
    pub fn run_frame(&mut self, input: Frame) -> Result<RunReport, RunError> {
        let mut result = None;
        self.run_stream(std::iter::once(Ok(input)), 1, |r| {
            result = Some(r);
            Ok(())
        })?;
        result.ok_or(RunError::Transport(TransportError::Closed))
    }

    /// Runs `inputs` with at most `in_flight` frames on their way at once, handing each
    /// frame's report to `done` in input order. Stops at the first error (of an input, a
    /// node, or `done`).
    pub fn run_stream<I, F>(
        &mut self,
        inputs: I,
        in_flight: usize,
        mut done: impl FnMut(RunReport) -> Result<(), RunError>,
    ) -> Result<(), RunError>
    where
        I: IntoIterator<Item = Result<F, RunError>>,
        F: Into<Frame>,
    {
        let mut inputs = inputs.into_iter();
        let mut frames: HashMap<u64, InFlight> = HashMap::new();
        let mut finished: BTreeMap<u64, RunReport> = BTreeMap::new();
        let mut next_out = self.next_frame;
        let mut exhausted = false;
        loop {
            while !exhausted && frames.len() + finished.len() < in_flight.max(1) {
                match inputs.next() {
                    None => exhausted = true,
                    Some(x) => {
                        let frame = self.admit(x?.into())?;
                        match self.advance(frame)? {
                            Step::Waiting(f) => {
                                frames.insert(f.id, f);
                            }
                            Step::Done(report) => {
                                self.consider_replan(Some(&report.telemetry), &frames)?;
                                finished.insert(report.frame, report);
                            }
                        }
                        self.settle(&mut frames)?;
                    }
                }
            }
            while let Some(report) = finished.remove(&next_out) {
                next_out += 1;
                done(report)?;
            }
            if frames.is_empty() && exhausted && finished.is_empty() {
                return Ok(());
            }
            if frames.is_empty() {
                continue;
            }
            let event = match self.next_deadline(&frames) {
                None => self.transport.recv()?,
                // Late already (events kept coming): chase before taking the next one.
                Some(at) if at <= self.transport.now_us() => {
                    self.chase(&mut frames)?;
                    continue;
                }
                Some(at) => {
                    let wait = (at - self.transport.now_us()).min(3.6e9);
                    match self
                        .transport
                        .recv_timeout(Duration::from_secs_f64(wait / 1e6))?
                    {
                        Some(e) => e,
                        None => {
                            self.chase(&mut frames)?;
                            continue;
                        }
                    }
                }
            };
            match event {
                Event::Done(d) => {
                    self.heard(&frames, &d)?;
                    let Some(mut frame) = frames.remove(&d.frame) else {
                        continue; // a frame that already failed or finished
                    };
                    self.stitch(&mut frame, d)?;
                    if frame.pending > 0 {
                        frames.insert(frame.id, frame);
                        // A node has room again.
                        self.feed(&mut frames)?;
                        continue;
                    }
                    frame.current = std::mem::replace(&mut frame.out, Array3::zeros((0, 0, 0)));
                    frame.segment += 1;
                    match self.advance(frame)? {
                        Step::Waiting(f) => {
                            frames.insert(f.id, f);
                        }
                        Step::Done(report) => {
                            self.consider_replan(Some(&report.telemetry), &frames)?;
                            finished.insert(report.frame, report);
                        }
                    }
                    self.settle(&mut frames)?;
                }
                Event::Lost { node, reason } => {
                    self.unreachable.push((node, reason));
                    self.settle(&mut frames)?;
                }
                Event::Rejoined { node } => {
                    self.rejoined(node)?;
                    self.settle(&mut frames)?;
                }
                Event::Retiled {
                    node,
                    layout,
                    result,
                } => {
                    self.retiled(node, layout as usize, result)?;
                    self.consider_replan(None, &frames)?;
                    self.settle(&mut frames)?;
                }
                Event::Rtt { node, rtt_us } => self.pending.push(Telemetry::Rtt { node, rtt_us }),
            }
        }
    }

    fn node_name(&self, node: usize) -> String {
        node_name(&self.header, node)
    }

    /// A new frame for `input`, checked against the network's input shape.
    fn admit(&mut self, input: Frame) -> Result<InFlight, RunError> {
        let s = self.header.network.input.shape;
        let Frame {
            tensor: input,
            pixels,
        } = input;
        let pixels = pixels.filter(|p| p.dim() == input.dim());
        if input.dim() != (s.c, s.h, s.w) {
            let (c, h, w) = input.dim();
            return Err(RunError::InputShape {
                found: [c, h, w],
                expected: s.to_string(),
            });
        }
        let id = self.next_frame;
        self.next_frame += 1;
        let cluster = &self.header.plan.cluster;
        Ok(InFlight {
            id,
            layout: self.current,
            pixels,
            segment: 0,
            current: input,
            out: Array3::zeros((0, 0, 0)),
            copies: Vec::new(),
            stitched: Vec::new(),
            due: Vec::new(),
            pending: 0,
            queue: VecDeque::new(),
            start_us: self.transport.now_us(),
            busy: vec![0.0; cluster.nodes.len()],
            wire: 0,
            quant: QuantError::default(),
            trace: Trace::new(cluster.nodes.iter().map(|n| n.name.clone()).collect()),
            telemetry: Vec::new(),
            redispatched: Vec::new(),
        })
    }

    /// Scatters the frame's current segment, or — past the last — runs the tail and returns
    /// the frame's report.
    fn advance(&mut self, mut frame: InFlight) -> Result<Step, RunError> {
        let header = Arc::clone(&self.header);
        let plan = &header.plan;
        let coord = plan.cluster.coordinator;
        let layout = Arc::clone(&self.layouts[frame.layout]);
        if let Some(seg) = layout.get(frame.segment) {
            let t0 = self.transport.now_us();
            let si = frame.segment;
            frame.copies = vec![Vec::new(); seg.tiles.len()];
            frame.stitched = vec![false; seg.tiles.len()];
            frame.due = vec![f64::INFINITY; seg.tiles.len()];
            let s = self.header.network.layers[seg.output().index()].shape;
            frame.out = Array3::zeros((s.c, s.h, s.w));
            frame.pending = seg.tiles.len();
            if self.steal.is_some() {
                // Queued, largest first; [`Self::feed`] sends them as nodes have room.
                let mut order: Vec<usize> = (0..seg.tiles.len()).collect();
                order.sort_by_key(|&t| (std::cmp::Reverse(seg.tiles[t].flops), t));
                frame.queue = order.into_iter().map(|t| (t, None)).collect();
                return Ok(Step::Waiting(frame));
            }
            for (ti, tile) in seg.tiles.iter().enumerate() {
                let (input, e) = job_input(&frame, si, tile, plan.compression);
                frame.quant.add(e);
                let job = TileJob {
                    frame: frame.id,
                    layout: frame.layout as u32,
                    segment: si as u32,
                    tile: ti as u32,
                    input,
                };
                let node = self.route(frame.layout, si, ti);
                self.send(node, job)?;
                let now = self.transport.now_us();
                frame.copies[ti] = vec![(node, now)];
                frame.due[ti] = now + self.allowance_us(frame.layout, si, ti, node);
            }
            let t1 = self.transport.now_us();
            frame.trace.push(Span {
                node: coord,
                name: format!("scatter segment {si}"),
                start_us: t0,
                dur_us: t1 - t0,
            });
            frame.busy[coord] += (t1 - t0) / 1e3;
            return Ok(Step::Waiting(frame));
        }
        // The tail, on the coordinator.
        let t0 = self.transport.now_us();
        let output = match &self.tail_kernels {
            Some(k) => k.run(&self.tail, &frame.current)?,
            None => self.tail.run(&frame.current)?,
        };
        if !self.tail.layers().is_empty() {
            let t1 = self.transport.now_us();
            frame.trace.push(Span {
                node: coord,
                name: "tail".into(),
                start_us: t0,
                dur_us: t1 - t0,
            });
            frame.busy[coord] += (t1 - t0) / 1e3;
        }
        let measured_ms = (self.transport.now_us() - frame.start_us) / 1e3;
        let q = frame.quant;
        frame.trace.events.append(&mut self.pending_spans);
        let mut telemetry = std::mem::take(&mut self.pending);
        telemetry.extend(frame.telemetry);
        Ok(Step::Done(RunReport {
            frame: frame.id,
            output,
            measured_ms,
            node_busy_ms: frame.busy,
            wire_bytes: frame.wire,
            compression_error: if q.sq > 0.0 {
                (q.err / q.sq).sqrt()
            } else {
                0.0
            },
            trace: frame.trace,
            telemetry,
            redispatched: frame.redispatched,
        }))
    }

    /// Sends `job` to `node`. A node the job cannot reach is noted as lost (handled by
    /// [`Self::settle`]), and the job counts as out on it until then.
    fn send(&mut self, node: usize, job: TileJob) -> Result<(), RunError> {
        match self.transport.send(node, job) {
            Ok(()) => Ok(()),
            Err(TransportError::Unreachable { reason, .. }) => {
                self.unreachable.push((node, reason));
                Ok(())
            }
            Err(e) => Err(RunError::Transport(e)),
        }
    }

    /// Handles the nodes found lost: each one's tiles are routed to the other workers of
    /// their segments (from now on), and its outstanding tiles of every frame in flight are
    /// sent there again.
    fn settle(&mut self, frames: &mut HashMap<u64, InFlight>) -> Result<(), RunError> {
        while let Some((node, reason)) = self.unreachable.pop() {
            if self.lost.get(node).copied().unwrap_or(true) {
                continue;
            }
            self.lost[node] = true;
            tracing::warn!(node = %self.node_name(node), %reason, "worker lost; its tiles go to the others");
            self.reroute(node, &reason)?;
            self.want_replan(format!("node {} was lost", self.node_name(node)));
            // A layout waiting for this node's answer waits no more.
            self.switch_if_ready()?;
            let now = self.transport.now_us();
            self.pending.push(Telemetry::Lost {
                node,
                reason: reason.clone(),
            });
            let mut ids: Vec<u64> = frames.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let Some(frame) = frames.get_mut(&id) else {
                    continue;
                };
                frame.trace.push(Span {
                    node,
                    name: format!("lost: {reason}"),
                    start_us: now,
                    dur_us: 0.0,
                });
                // Tiles whose every copy was on the lost node (a copy elsewhere, sent as
                // late, may still answer).
                let mut orphans = Vec::new();
                for (ti, copies) in frame.copies.iter_mut().enumerate() {
                    let had = copies.len();
                    copies.retain(|&(n, _)| n != node);
                    if copies.is_empty() && had > 0 && !frame.stitched[ti] {
                        orphans.push(ti);
                    }
                }
                if self.steal.is_some() {
                    // Back to the front of the queue: the next node with room takes them.
                    for &ti in orphans.iter().rev() {
                        frame.due[ti] = f64::INFINITY;
                        frame.queue.push_front((ti, Some(node)));
                    }
                    continue;
                }
                let si = frame.segment;
                let layout = Arc::clone(&self.layouts[frame.layout]);
                for ti in orphans {
                    let to = self.route(frame.layout, si, ti);
                    let tile = &layout[si].tiles[ti];
                    // Quantised as before: the same codes, their error counted once.
                    let (input, _) = job_input(frame, si, tile, self.header.plan.compression);
                    let job = TileJob {
                        frame: id,
                        layout: frame.layout as u32,
                        segment: si as u32,
                        tile: ti as u32,
                        input,
                    };
                    frame.copies[ti] = vec![(to, now)];
                    frame.due[ti] = now + self.allowance_us(frame.layout, si, ti, to);
                    frame.redispatch(Redispatch {
                        segment: si as u32,
                        tile: ti as u32,
                        from: node,
                        to,
                        late: false,
                    });
                    self.send(to, job)?;
                }
            }
        }
        self.feed(frames)
    }

    /// Work stealing: sends queued tiles, oldest frame first, each to the live, trusted
    /// holder of its segment with the fewest tiles out (below the depth; the fastest of
    /// those by the speeds assumed, then the first), until no such node is left. Nothing
    /// without stealing.
    fn feed(&mut self, frames: &mut HashMap<u64, InFlight>) -> Result<(), RunError> {
        let Some(depth) = self.steal else {
            return Ok(());
        };
        if self.unreachable.is_empty() && frames.values().all(|f| f.queue.is_empty()) {
            return Ok(());
        }
        let mut out = tiles_out(frames, self.lost.len());
        let compression = self.header.plan.compression;
        let coord = self.header.plan.cluster.coordinator;
        let mut ids: Vec<u64> = frames.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(frame) = frames.get_mut(&id) else {
                continue;
            };
            let si = frame.segment;
            let layout = Arc::clone(&self.layouts[frame.layout]);
            while let Some(&(ti, from)) = frame.queue.front() {
                let to = self.holders[si]
                    .iter()
                    .copied()
                    .filter(|&n| out[n] < depth && self.available(n, frame.layout))
                    .min_by(|&a, &b| {
                        out[a]
                            .cmp(&out[b])
                            .then(self.speed(b).total_cmp(&self.speed(a)))
                            .then(a.cmp(&b))
                    });
                let Some(to) = to else {
                    break;
                };
                frame.queue.pop_front();
                out[to] += 1;
                let t0 = self.transport.now_us();
                let (input, e) = job_input(frame, si, &layout[si].tiles[ti], compression);
                match from {
                    // Quantised as before: its error counted once.
                    Some(from) => frame.redispatch(Redispatch {
                        segment: si as u32,
                        tile: ti as u32,
                        from,
                        to,
                        late: false,
                    }),
                    None => frame.quant.add(e),
                }
                let job = TileJob {
                    frame: id,
                    layout: frame.layout as u32,
                    segment: si as u32,
                    tile: ti as u32,
                    input,
                };
                self.send(to, job)?;
                let now = self.transport.now_us();
                frame.copies[ti] = vec![(to, now)];
                frame.due[ti] = now + self.allowance_us(frame.layout, si, ti, to);
                frame.busy[coord] += (now - t0) / 1e3;
                frame.trace.push(Span {
                    node: coord,
                    name: format!("send segment {si} tile {ti}"),
                    start_us: t0,
                    dur_us: now - t0,
                });
            }
        }
        Ok(())
    }

    /// Learns from a result, whether it counts or not: how long the node took (from this
    /// copy's sending, or the transport's figures for a frame already out), and that a
    /// suspect node answered its late tile or one sent after it (then it is trusted again).
    fn heard(&mut self, frames: &HashMap<u64, InFlight>, d: &TileDone) -> Result<(), RunError> {
        let now = self.transport.now_us();
        let sent = frames
            .get(&d.frame)
            .filter(|f| f.segment == d.segment as usize)
            .and_then(|f| f.copies.get(d.tile as usize))
            .and_then(|c| c.iter().find(|(n, _)| *n == d.node))
            .map(|&(_, at)| at);
        let took = match sent {
            Some(at) => now - at,
            None => d.received_us - d.sent_us,
        };
        // Tiles of a frame already finished: their layout is not known any more.
        let layout = frames.get(&d.frame).map(|f| f.layout);
        if let Some(layout) = layout.filter(|_| took > 0.0) {
            let e = self
                .took_us
                .entry((layout, d.segment as usize, d.node))
                .or_insert(took);
            *e += 0.2 * (took - *e);
        }
        if let Some(Some((key, since))) = self.suspect.get(d.node).copied() {
            let answered = key == (d.frame, d.segment, d.tile) || sent.unwrap_or(d.sent_us) > since;
            if answered {
                self.suspect[d.node] = None;
                tracing::info!(node = %self.node_name(d.node), "answered; trusted again");
                self.recompute_routes()?;
            }
        }
        Ok(())
    }

    /// When the next outstanding tile becomes late (µs, the transport's clock); `None`
    /// without deadlines or when every late tile was already sent again.
    fn next_deadline(&self, frames: &HashMap<u64, InFlight>) -> Option<f64> {
        self.deadlines?;
        frames
            .values()
            .flat_map(|f| {
                (0..f.due.len())
                    .filter(|&t| !f.stitched[t] && !f.copies[t].is_empty())
                    .map(|t| f.due[t])
            })
            .filter(|d| d.is_finite())
            .min_by(f64::total_cmp)
    }

    /// How long tile `ti` of segment `si` may take on `node` before it is late (µs;
    /// infinite without deadlines).
    fn allowance_us(&self, layout: usize, si: usize, ti: usize, node: usize) -> f64 {
        let Some(d) = self.deadlines else {
            return f64::INFINITY;
        };
        let expected = self
            .took_us
            .get(&(layout, si, node))
            .copied()
            .unwrap_or_else(|| {
                self.layouts[layout][si].tiles[ti].flops as f64 / (self.speed(node) * 1e3)
            });
        // At least a millisecond, so that a tile re-armed with no one to take it is not
        // looked at again at once.
        (d.factor * expected)
            .max(d.floor.as_secs_f64() * 1e6)
            .max(1e3)
    }

    /// Sends every late tile once more, to the live holder of its segment (other than the
    /// node it is on) with the fewest tiles out; the first result wins.
    fn chase(&mut self, frames: &mut HashMap<u64, InFlight>) -> Result<(), RunError> {
        if self.deadlines.is_none() {
            return Ok(());
        }
        let now = self.transport.now_us();
        let mut out = tiles_out(frames, self.lost.len());
        let compression = self.header.plan.compression;
        let mut newly_suspect = Vec::new();
        let mut ids: Vec<u64> = frames.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(frame) = frames.get_mut(&id) else {
                continue;
            };
            let si = frame.segment;
            let layout = Arc::clone(&self.layouts[frame.layout]);
            let seg = &layout[si];
            for ti in 0..frame.copies.len() {
                let Some(&(node, _)) = frame.copies[ti].first() else {
                    continue;
                };
                if frame.stitched[ti] || now < frame.due[ti] {
                    continue;
                }
                newly_suspect.push((node, (id, si as u32, ti as u32)));
                // Another live holder of the segment that is not late itself, the one with
                // the fewest tiles out.
                let to = self.holders[si]
                    .iter()
                    .copied()
                    .filter(|&n| n != node && self.available(n, frame.layout))
                    .min_by_key(|&n| (out[n], n));
                let Some(to) = to else {
                    // No one else can take it now: look again after another allowance.
                    frame.due[ti] = now + self.allowance_us(frame.layout, si, ti, node);
                    continue;
                };
                frame.due[ti] = f64::INFINITY;
                out[to] += 1;
                frame.copies[ti].push((to, now));
                let (input, _) = job_input(frame, si, &seg.tiles[ti], compression);
                frame.redispatch(Redispatch {
                    segment: si as u32,
                    tile: ti as u32,
                    from: node,
                    to,
                    late: true,
                });
                tracing::info!(frame = id, segment = si, tile = ti, from = %self.node_name(node), to = %self.node_name(to), "tile late; sent again");
                let job = TileJob {
                    frame: id,
                    layout: frame.layout as u32,
                    segment: si as u32,
                    tile: ti as u32,
                    input,
                };
                self.send(to, job)?;
            }
        }
        // A node with a late tile gets no new tiles until it answers.
        let mut changed = false;
        for (n, key) in newly_suspect {
            if self.suspect[n].is_none() && !self.lost[n] {
                self.suspect[n] = Some((key, now));
                changed = true;
                tracing::info!(node = %self.node_name(n), "late; no new tiles until it answers");
            }
        }
        if changed {
            self.recompute_routes()?;
        }
        self.settle(frames)
    }

    /// Takes a lost node that is back into the assignment: from the next segment scattered
    /// on, every tile goes where the plan put it unless that node is (still) lost. Tiles
    /// already out stay where they are.
    fn readmit(&mut self, node: usize) -> Result<(), RunError> {
        if !self.lost.get(node).copied().unwrap_or(false) {
            return Ok(());
        }
        self.lost[node] = false;
        self.suspect[node] = None;
        tracing::info!(node = %self.node_name(node), "worker back; it gets its tiles again");
        self.recompute_routes()?;
        self.pending.push(Telemetry::Rejoined { node });
        self.want_replan(format!("node {} is back", self.node_name(node)));
        // New tiles on their way to the others: this node too, so that it holds them when
        // they take over.
        let pending = self
            .replan
            .as_ref()
            .and_then(|r| r.pending.as_ref())
            .map(|p| p.layout);
        if let Some(layout) = pending
            && self.send_layout(node, layout, vec![self.current])?
            && let Some(p) = self.replan.as_mut().and_then(|r| r.pending.as_mut())
        {
            p.waiting.push(node);
        }
        Ok(())
    }

    /// The plan's assignment with the tiles of lost and suspect nodes moved to others.
    fn recompute_routes(&mut self) -> Result<(), RunError> {
        self.routes = layout_routes(&self.layouts[self.current]);
        for n in 0..self.lost.len() {
            if self.lost[n] || self.suspect[n].is_some() {
                self.reroute(n, "still lost")?;
            }
        }
        Ok(())
    }

    /// Moves the tiles routed to `node` (just lost) to the other live workers that hold
    /// their segment, each to the one that would finish its share soonest (by the plan's
    /// speeds), largest tiles first.
    fn reroute(&mut self, node: usize, reason: &str) -> Result<(), RunError> {
        let layout = Arc::clone(&self.layouts[self.current]);
        let speeds: Vec<f64> = (0..self.lost.len()).map(|n| self.speed(n)).collect();
        // A suspect node (a late tile still out) keeps the segments no one else holds.
        let lost = self.lost.get(node).copied().unwrap_or(true);
        for (si, seg) in layout.iter().enumerate() {
            let routes = &mut self.routes[si];
            let mut orphans: Vec<usize> =
                (0..routes.len()).filter(|&t| routes[t] == node).collect();
            if orphans.is_empty() {
                continue;
            }
            let mut holders = self.holders[si].clone();
            let (has, current) = (&self.has, self.current);
            holders.retain(|&n| !self.lost[n] && has[n].contains(&current));
            // Suspect nodes only where no one else is left (a lost node's tiles must go
            // somewhere; a suspect node's stay where they are).
            if holders.iter().any(|&n| self.suspect[n].is_none()) {
                holders.retain(|&n| self.suspect[n].is_none());
            } else if !lost {
                continue;
            }
            if holders.is_empty() {
                return Err(RunError::WorkerLost {
                    node: node_name(&self.header, node),
                    reason: reason.to_string(),
                    segment: si,
                });
            }
            let speed = |n: usize| speeds[n];
            // Seconds of work each holder has in this segment already.
            let mut load: Vec<f64> = vec![0.0; speeds.len()];
            for (t, &n) in routes.iter().enumerate() {
                if n != node {
                    load[n] += seg.tiles[t].flops as f64 / speed(n);
                }
            }
            orphans.sort_by_key(|&t| std::cmp::Reverse(seg.tiles[t].flops));
            for t in orphans {
                let cost = |n: usize| load[n] + seg.tiles[t].flops as f64 / speed(n);
                let best = holders
                    .iter()
                    .copied()
                    .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
                    .unwrap_or(node);
                load[best] = cost(best);
                routes[t] = best;
            }
        }
        Ok(())
    }

    /// The node tile `ti` of segment `si` goes to in a frame of `layout`: the routes of the
    /// running layout; for an older layout's frame, its own assignment while that node is
    /// live, trusted and holds the layout, else the live holder of the segment that holds
    /// the layout and has the most of the running layout's tiles.
    fn route(&self, layout: usize, si: usize, ti: usize) -> usize {
        if layout == self.current {
            return self.routes[si][ti];
        }
        let own = self.layouts[layout][si].tiles[ti].node;
        if !self.lost[own] && self.suspect[own].is_none() && self.holds(own, layout) {
            return own;
        }
        let count = |n: usize| self.routes[si].iter().filter(|&&x| x == n).count();
        self.holders[si]
            .iter()
            .copied()
            .filter(|&n| !self.lost[n] && self.holds(n, layout))
            .max_by_key(|&n| (self.suspect[n].is_none(), count(n), std::cmp::Reverse(n)))
            .unwrap_or(own)
    }

    /// Whether `node` can take a tile of `layout` now: live, trusted (no late tile out),
    /// reachable, and it holds the layout.
    fn available(&self, node: usize, layout: usize) -> bool {
        !self.lost[node]
            && self.suspect[node].is_none()
            && self.holds(node, layout)
            && !self.unreachable.iter().any(|u| u.0 == node)
    }

    /// Whether `node` holds `layout` (it said it is ready).
    fn holds(&self, node: usize, layout: usize) -> bool {
        self.has.get(node).is_some_and(|h| h.contains(&layout))
    }

    /// The speed the running layout assumes of `node` (GFLOP/s, never zero): the plan's,
    /// or what was measured when it was re-planned.
    fn speed(&self, node: usize) -> f64 {
        match &self.replan {
            Some(r) => r
                .drift
                .assumed()
                .get(node)
                .copied()
                .filter(|&s| s > 0.0)
                .unwrap_or_else(|| gflops(&self.header, node)),
            None => gflops(&self.header, node),
        }
        .max(1e-3)
    }

    /// Asks for a re-plan whatever the drift (when re-planning is on).
    fn want_replan(&mut self, why: String) {
        if let Some(r) = self.replan.as_mut() {
            r.wanted = Some(why);
        }
    }

    /// Sends `node` layout `layout` to prepare, telling it to keep `keep` too. A node it
    /// cannot reach is noted as lost.
    fn send_layout(
        &mut self,
        node: usize,
        layout: usize,
        keep: Vec<usize>,
    ) -> Result<bool, RunError> {
        let keep32: Vec<u32> = keep.iter().map(|&k| k as u32).collect();
        let segments = Arc::clone(&self.layouts[layout]);
        match self
            .transport
            .retile(node, layout as u32, segments, &keep32)
        {
            Ok(()) => {
                self.keeps.insert((node, layout), keep);
                Ok(true)
            }
            Err(TransportError::Unreachable { reason, .. }) => {
                self.unreachable.push((node, reason));
                Ok(false)
            }
            Err(e) => Err(RunError::Transport(e)),
        }
    }

    /// A lost node's transport set it up again (a new session: it holds the plan's layout
    /// only). With the plan's layout running it is readmitted at once; with a later one, it
    /// is sent that layout first.
    fn rejoined(&mut self, node: usize) -> Result<(), RunError> {
        if let Some(h) = self.has.get_mut(node) {
            *h = vec![0];
        }
        if self.current == 0 || !self.lost.get(node).copied().unwrap_or(false) {
            return self.readmit(node);
        }
        self.rejoining[node] = Some(self.current);
        if !self.send_layout(node, self.current, Vec::new())? {
            self.rejoining[node] = None;
        }
        Ok(())
    }

    /// A node prepared a layout (or could not).
    fn retiled(
        &mut self,
        node: usize,
        layout: usize,
        result: Result<f64, String>,
    ) -> Result<(), RunError> {
        let keep = self.keeps.remove(&(node, layout)).unwrap_or_default();
        if result.is_ok()
            && let Some(h) = self.has.get_mut(node)
        {
            // As the worker keeps them: the plan's, newer ones, those it was told to keep.
            h.retain(|&l| l == 0 || l > layout || keep.contains(&l));
            h.push(layout);
        }
        if self.rejoining.get(node).copied().flatten() == Some(layout) {
            self.rejoining[node] = None;
            match &result {
                Ok(_) if layout == self.current => self.readmit(node)?,
                // The layout changed meanwhile: the running one, then.
                Ok(_) => self.rejoined_again(node)?,
                Err(e) => {
                    tracing::warn!(node = %self.node_name(node), error = %e, "back, but could not take the running layout; it stays out")
                }
            }
        }
        let Some(r) = self.replan.as_mut() else {
            return Ok(());
        };
        let Some(p) = r
            .pending
            .as_mut()
            .filter(|p| p.layout == layout && p.waiting.contains(&node))
        else {
            return Ok(());
        };
        match result {
            Ok(ms) => {
                tracing::debug!(node, layout, compile_ms = ms, "layout ready");
                p.waiting.retain(|&n| n != node);
            }
            Err(e) => {
                let name = node_name(&self.header, node);
                tracing::warn!(node = %name, error = %e, "could not take the new layout; keeping the running one");
                r.pending = None;
                r.drift.replanned(None);
                return Ok(());
            }
        }
        self.switch_if_ready()
    }

    /// A rejoining node that prepared a layout no longer running: the running one, then.
    fn rejoined_again(&mut self, node: usize) -> Result<(), RunError> {
        self.rejoining[node] = Some(self.current);
        if !self.send_layout(node, self.current, Vec::new())? {
            self.rejoining[node] = None;
        }
        Ok(())
    }

    /// Switches to the pending layout once every worker it went to is ready (or lost).
    fn switch_if_ready(&mut self) -> Result<(), RunError> {
        let Some(r) = self.replan.as_mut() else {
            return Ok(());
        };
        let lost = &self.lost;
        let ready = r.pending.as_mut().is_some_and(|p| {
            p.waiting.retain(|&n| !lost[n]);
            p.waiting.is_empty()
        });
        if !ready {
            return Ok(());
        }
        let Some(p) = r.pending.take() else {
            return Ok(());
        };
        let before = shares(&self.layouts[self.current], self.lost.len());
        let after = shares(&self.layouts[p.layout], self.lost.len());
        let old = self.current;
        self.current = p.layout;
        r.drift.replanned(Some((p.speeds.clone(), p.links.clone())));
        r.replans += 1;
        // Times measured of layouts no frame uses any more.
        self.took_us.retain(|k, _| k.0 == old || k.0 == p.layout);
        let gain = p.current_ms / p.predicted_ms.max(1e-9);
        tracing::info!(
            layout = p.layout,
            reason = %p.reason,
            predicted_gain = gain,
            "re-planned: frames from now on take the new tiles"
        );
        let share = |v: &[f64]| {
            v.iter()
                .map(|s| format!("{:.0}%", 100.0 * s))
                .collect::<Vec<_>>()
                .join(" ")
        };
        self.pending_spans.push(Span {
            node: self.header.plan.cluster.coordinator,
            name: format!(
                "re-plan: {}; shares {} (were {}); predicted gain {gain:.2}x",
                p.reason,
                share(&after),
                share(&before)
            ),
            start_us: self.transport.now_us(),
            dur_us: 0.0,
        });
        self.pending.push(Telemetry::Replan {
            frame: self.next_frame,
            layout: p.layout as u32,
            reason: p.reason,
            speeds: p.speeds,
            links: p.links,
            predicted_ms: p.predicted_ms,
            current_ms: p.current_ms,
            before,
            after,
        });
        self.recompute_routes()
    }

    /// After a frame (its telemetry) or a change of nodes: re-balances the tiles for the
    /// measured speeds and sends the new layout to the workers when drift, a lost node or
    /// a node back asks for it and the gain is worth it. Not while a layout is pending or
    /// frames of a layout older than the running one are out (a worker keeps the running
    /// one and the new one besides the plan's). A layout pending for
    /// [`PENDING_FRAMES`] frames is given up.
    fn consider_replan(
        &mut self,
        telemetry: Option<&[Telemetry]>,
        frames: &HashMap<u64, InFlight>,
    ) -> Result<(), RunError> {
        let header = Arc::clone(&self.header);
        let Some(r) = self.replan.as_mut() else {
            return Ok(());
        };
        let trigger = telemetry.and_then(|t| r.drift.frame(t, |n| node_name(&header, n)));
        if let Some(p) = r.pending.as_mut() {
            p.frames += usize::from(telemetry.is_some());
            if p.frames <= PENDING_FRAMES {
                return Ok(());
            }
            tracing::warn!(layout = p.layout, waiting = ?p.waiting, "new tiles not ready after {PENDING_FRAMES} frames; keeping the running ones");
            r.pending = None;
            r.drift.replanned(None);
            return Ok(());
        }
        if frames.values().any(|f| f.layout != self.current) {
            return Ok(());
        }
        let (reason, mut speeds, links, forced) = match (trigger, r.wanted.take()) {
            (_, Some(why)) => (why, r.drift.current_speeds(), r.drift.current_links(), true),
            (Some(t), None) => (t.reason, t.speeds, t.links, false),
            (None, None) => return Ok(()),
        };
        for (n, s) in speeds.iter_mut().enumerate() {
            if self.lost[n] || self.rejoining[n].is_some() || !self.has[n].contains(&self.current) {
                *s = 0.0;
            }
        }
        let descs: Vec<SegmentLayers<'_>> = r
            .layers
            .iter()
            .map(|(l, f)| SegmentLayers {
                layers: &l.layers,
                flops: f,
                input: l.input,
            })
            .collect();
        let plan = &header.plan;
        // The links as measured: each one's rate divided by how much slower it is.
        let mut cluster = plan.cluster.clone();
        for (node, slow) in cluster.nodes.iter_mut().zip(&links) {
            node.mbps = node.mbps.map(|m| m / slow.max(1.0));
        }
        let current = Arc::clone(&self.layouts[self.current]);
        let result = rebalance(
            &cluster,
            plan.compression,
            &current,
            &self.holders,
            &descs,
            &speeds,
        );
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%reason, error = %e, "no re-plan");
                if let Some(rp) = self.replan.as_mut() {
                    rp.drift.replanned(None);
                }
                return Ok(());
            }
        };
        let min_gain = self
            .replan
            .as_ref()
            .map_or(1.0, |rp| rp.drift.config().min_gain);
        // After a loss the current assignment is the rerouted one, which the gain compares
        // against: a lost node's share always moves.
        if r.gain() < min_gain && !(forced && r.gain() > 1.0 + 1e-9) {
            tracing::info!(%reason, predicted_gain = r.gain(), "re-plan not worth it");
            if let Some(rp) = self.replan.as_mut() {
                rp.drift.replanned(None);
            }
            return Ok(());
        }
        let layout = self.layouts.len();
        let gain = r.gain();
        self.layouts.push(Arc::new(r.segments));
        let mut waiting = Vec::new();
        for n in 0..self.lost.len() {
            let holds = self.holders.iter().any(|h| h.contains(&n));
            if !holds || self.lost[n] || self.rejoining[n].is_some() {
                continue;
            }
            if self.send_layout(n, layout, vec![self.current])? {
                waiting.push(n);
            }
        }
        tracing::info!(%reason, layout, predicted_gain = gain, "re-planning: new tiles sent to the workers");
        if let Some(rp) = self.replan.as_mut() {
            rp.pending = Some(PendingLayout {
                layout,
                frames: 0,
                waiting,
                reason,
                speeds,
                links,
                predicted_ms: r.predicted_ms,
                current_ms: r.current_ms,
            });
        }
        self.switch_if_ready()
    }

    /// Puts a returned tile into its place in the frame's segment output.
    fn stitch(&mut self, frame: &mut InFlight, d: TileDone) -> Result<(), RunError> {
        let plan = &self.header.plan;
        let node = self.node_name(d.node);
        // A tile already stitched (sent again, and both copies came back) or of a segment
        // the frame has passed: the first result won, whatever this one is.
        let stitched = (d.segment as usize) < frame.segment
            || (d.segment as usize == frame.segment
                && frame.stitched.get(d.tile as usize) == Some(&true));
        if stitched {
            return Ok(());
        }
        let t = d.output.map_err(|message| RunError::Kernel {
            node: node.clone(),
            message,
        })?;
        let layout = Arc::clone(&self.layouts[frame.layout]);
        let tile = layout
            .get(d.segment as usize)
            .filter(|_| d.segment as usize == frame.segment)
            .and_then(|s| s.tiles.get(d.tile as usize))
            .ok_or_else(|| RunError::Kernel {
                node: node.clone(),
                message: format!(
                    "returned an unknown tile {} of segment {}",
                    d.tile, d.segment
                ),
            })?;
        // Decoded (q8/q4) or copied into its place.
        t.write_into(region_mut(&mut frame.out, &tile.output))
            .map_err(|source| RunError::Wire { node, source })?;
        frame.wire += t.wire_bytes() as u64;
        frame.quant.add(d.quant_error);
        if let Some(b) = frame.busy.get_mut(d.node) {
            *b += (d.end_us - d.start_us) / 1e3;
        }
        let name = format!("segment {} tile {},{}", d.segment, tile.row, tile.col);
        frame.trace.push(Span {
            node: d.node,
            name: name.clone(),
            start_us: d.start_us,
            dur_us: d.end_us - d.start_us,
        });
        // The transfers, when the tile went to another node over a link.
        let coord = plan.cluster.coordinator;
        if d.node != coord && d.received_us > d.sent_us {
            frame.trace.flows.push(Flow {
                name: format!("{name} in"),
                from_node: coord,
                from_us: d.sent_us,
                to_node: d.node,
                to_us: d.start_us,
            });
            frame.trace.flows.push(Flow {
                name: format!("{name} out"),
                from_node: d.node,
                from_us: d.end_us,
                to_node: coord,
                to_us: d.received_us,
            });
        }
        frame.telemetry.push(Telemetry::Tile {
            frame: d.frame,
            node: d.node,
            segment: d.segment,
            tile: d.tile,
            compute_us: d.end_us - d.start_us,
            sent_us: d.sent_us,
            round_trip_us: d.received_us - d.sent_us,
            wire_us: d.wire_us,
            bytes_in: d.bytes_in,
            bytes_out: d.bytes_out,
            flops: tile.flops,
        });
        frame.stitched[d.tile as usize] = true;
        frame.copies[d.tile as usize].clear();
        frame.due[d.tile as usize] = f64::INFINITY;
        frame.pending -= 1;
        Ok(())
    }
}

/// Per node, the tile copies it has out over `frames`.
fn tiles_out(frames: &HashMap<u64, InFlight>, nodes: usize) -> Vec<usize> {
    let mut out = vec![0; nodes];
    for (n, _) in frames.values().flat_map(|f| f.copies.iter().flatten()) {
        out[*n] += 1;
    }
    out
}

/// The job input of `tile` of segment `si` for `frame`. The first segment reads the input
/// image: its pixels travel when there are. Later segments' inputs are compressed as the
/// plan's outputs are (with the error that added).
fn job_input(
    frame: &InFlight,
    si: usize,
    tile: &Tile,
    how: Compression,
) -> (TileInput, QuantError) {
    let none = QuantError::default();
    match (&frame.pixels, si, how) {
        (Some(p), 0, _) => (TileInput::Pixels(tile_pixels(p, tile)), none),
        (_, 0, _) | (_, _, Compression::None) => {
            (TileInput::Values(tile_input(&frame.current, tile)), none)
        }
        (_, _, how) => match wire::encode(tile_input(&frame.current, tile), how) {
            (WireTile::Quantised(q), e) => (TileInput::Quantised(q), e),
            (WireTile::Exact(a), _) => (TileInput::Values(a), none),
        },
    }
}

/// The name of `node` in the plan's cluster (`#N` if there is none).
fn node_name(header: &PlanHeader, node: usize) -> String {
    header
        .plan
        .cluster
        .nodes
        .get(node)
        .map_or_else(|| format!("#{node}"), |n| n.name.clone())
}

/// The speed the plan assumed for `node`, GFLOP/s (never zero).
fn gflops(header: &PlanHeader, node: usize) -> f64 {
    header
        .plan
        .cluster
        .nodes
        .get(node)
        .map_or(1.0, |n| n.speed().max(1e-3))
}

/// A tile of a frame: (frame, segment, tile).
type TileKey = (u64, u32, u32);

/// Per segment, per tile: the node the layout gives it.
fn layout_routes(layout: &[Segment]) -> Vec<Vec<usize>> {
    layout
        .iter()
        .map(|s| s.tiles.iter().map(|t| t.node).collect())
        .collect()
}
