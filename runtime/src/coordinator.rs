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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use adcnn_core::eval::EvalError;
use adcnn_core::format::PlanHeader;
use adcnn_core::input::Frame;
use adcnn_core::plan::{Compression, Tile};
use adcnn_core::program::Program;
use adcnn_core::tensor::region_mut;
use adcnn_kernels::wire::{self, QuantError, WireError, WireTile};
use ndarray::Array3;

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
    transport: T,
    next_frame: u64,
    /// Measurements that belong to no frame (pings, losses), for the next frame's report.
    pending: Vec<Telemetry>,
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
    /// Per node: a tile of it was late (which, and when) and has not come back; it gets no
    /// new tiles (where others hold the segment) until that tile, or one sent after, does.
    suspect: Vec<Option<(TileKey, f64)>>,
    /// By (segment, node): how long its tiles took, sent to received (µs, smoothed).
    took_us: HashMap<(usize, usize), f64>,
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
        let routes = plan_routes(&header);
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
            transport,
            next_frame: 0,
            pending: Vec::new(),
            routes,
            holders,
            lost,
            unreachable: Vec::new(),
            deadlines: None,
            suspect: vec![None; n_nodes],
            took_us: HashMap::new(),
        }
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
                        continue;
                    }
                    frame.current = std::mem::replace(&mut frame.out, Array3::zeros((0, 0, 0)));
                    frame.segment += 1;
                    match self.advance(frame)? {
                        Step::Waiting(f) => {
                            frames.insert(f.id, f);
                        }
                        Step::Done(report) => {
                            finished.insert(report.frame, report);
                        }
                    }
                    self.settle(&mut frames)?;
                }
                Event::Lost { node, reason } => {
                    self.unreachable.push((node, reason));
                    self.settle(&mut frames)?;
                }
                Event::Rejoined { node } => self.readmit(node)?,
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
            pixels,
            segment: 0,
            current: input,
            out: Array3::zeros((0, 0, 0)),
            copies: Vec::new(),
            stitched: Vec::new(),
            due: Vec::new(),
            pending: 0,
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
        if let Some(seg) = plan.segments.get(frame.segment) {
            let t0 = self.transport.now_us();
            let si = frame.segment;
            frame.copies = vec![Vec::new(); seg.tiles.len()];
            frame.stitched = vec![false; seg.tiles.len()];
            frame.due = vec![f64::INFINITY; seg.tiles.len()];
            for (ti, tile) in seg.tiles.iter().enumerate() {
                let (input, e) = job_input(&frame, si, tile, plan.compression);
                frame.quant.add(e);
                let job = TileJob {
                    frame: frame.id,
                    segment: si as u32,
                    tile: ti as u32,
                    input,
                };
                let node = self.routes[si][ti];
                self.send(node, job)?;
                let now = self.transport.now_us();
                frame.copies[ti] = vec![(node, now)];
                frame.due[ti] = now + self.allowance_us(si, ti, node);
            }
            let t1 = self.transport.now_us();
            frame.trace.push(Span {
                node: coord,
                name: format!("scatter segment {si}"),
                start_us: t0,
                dur_us: t1 - t0,
            });
            frame.busy[coord] += (t1 - t0) / 1e3;
            let s = self.header.network.layers[seg.output().index()].shape;
            frame.out = Array3::zeros((s.c, s.h, s.w));
            frame.pending = seg.tiles.len();
            return Ok(Step::Waiting(frame));
        }
        // The tail, on the coordinator.
        let t0 = self.transport.now_us();
        let output = self.tail.run(&frame.current)?;
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
                let si = frame.segment;
                for ti in orphans {
                    let to = self.routes[si][ti];
                    let tile = &self.header.plan.segments[si].tiles[ti];
                    // Quantised as before: the same codes, their error counted once.
                    let (input, _) = job_input(frame, si, tile, self.header.plan.compression);
                    let job = TileJob {
                        frame: id,
                        segment: si as u32,
                        tile: ti as u32,
                        input,
                    };
                    frame.copies[ti] = vec![(to, now)];
                    frame.due[ti] = now + self.allowance_us(si, ti, to);
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
        if took > 0.0 {
            let e = self
                .took_us
                .entry((d.segment as usize, d.node))
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
    fn allowance_us(&self, si: usize, ti: usize, node: usize) -> f64 {
        let Some(d) = self.deadlines else {
            return f64::INFINITY;
        };
        let expected = self.took_us.get(&(si, node)).copied().unwrap_or_else(|| {
            self.header.plan.segments[si].tiles[ti].flops as f64
                / (gflops(&self.header, node) * 1e3)
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
        let mut out: Vec<usize> = vec![0; self.lost.len()];
        for f in frames.values() {
            for (n, _) in f.copies.iter().flatten() {
                out[*n] += 1;
            }
        }
        let header = Arc::clone(&self.header);
        let mut newly_suspect = Vec::new();
        let mut ids: Vec<u64> = frames.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(frame) = frames.get_mut(&id) else {
                continue;
            };
            let si = frame.segment;
            let seg = &header.plan.segments[si];
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
                    .filter(|&n| {
                        n != node
                            && !self.lost[n]
                            && self.suspect[n].is_none()
                            && !self.unreachable.iter().any(|u| u.0 == n)
                    })
                    .min_by_key(|&n| (out[n], n));
                let Some(to) = to else {
                    // No one else can take it now: look again after another allowance.
                    frame.due[ti] = now + self.allowance_us(si, ti, node);
                    continue;
                };
                frame.due[ti] = f64::INFINITY;
                out[to] += 1;
                frame.copies[ti].push((to, now));
                let (input, _) = job_input(frame, si, &seg.tiles[ti], header.plan.compression);
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
        Ok(())
    }

    /// The plan's assignment with the tiles of lost and suspect nodes moved to others.
    fn recompute_routes(&mut self) -> Result<(), RunError> {
        self.routes = plan_routes(&self.header);
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
        let plan = &self.header.plan;
        // A suspect node (a late tile still out) keeps the segments no one else holds.
        let lost = self.lost.get(node).copied().unwrap_or(true);
        for (si, seg) in plan.segments.iter().enumerate() {
            let routes = &mut self.routes[si];
            let mut orphans: Vec<usize> =
                (0..routes.len()).filter(|&t| routes[t] == node).collect();
            if orphans.is_empty() {
                continue;
            }
            let mut holders = self.holders[si].clone();
            holders.retain(|&n| !self.lost[n]);
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
            let speed = |n: usize| gflops(&self.header, n);
            // Seconds of work each holder has in this segment already.
            let mut load: Vec<f64> = vec![0.0; plan.cluster.nodes.len()];
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
        let tile = plan
            .segments
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
            round_trip_us: d.received_us - d.sent_us,
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
        .map_or(1.0, |n| n.gflops.max(1e-3))
}

/// A tile of a frame: (frame, segment, tile).
type TileKey = (u64, u32, u32);

/// Per segment, per tile: the node the plan gave it.
fn plan_routes(header: &PlanHeader) -> Vec<Vec<usize>> {
    header
        .plan
        .segments
        .iter()
        .map(|s| s.tiles.iter().map(|t| t.node).collect())
        .collect()
}
