//! The coordinator: runs frames through a plan over any [`Transport`]. Per segment it
//! scatters each tile's input region to the tile's node, stitches the tiles that come back
//! (decoding q8/q4 straight into place), and moves on to the next segment; after the last,
//! it runs the tail itself. Several frames may be in flight at once: while one frame's tail
//! runs here, the next frame's tiles are already on the workers. Frames come out in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use adcnn_core::eval::EvalError;
use adcnn_core::format::PlanHeader;
use adcnn_core::input::Frame;
use adcnn_core::plan::Compression;
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
    #[error("node {node} was lost: {reason}")]
    WorkerLost { node: String, reason: String },
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
    pending: usize,
    start_us: f64,
    busy: Vec<f64>,
    wire: u64,
    quant: QuantError,
    trace: Trace,
    telemetry: Vec<Telemetry>,
}

/// Where [`Coordinator::advance`] left a frame.
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
    /// Measurements that belong to no frame (pings), for the next frame's report.
    pending: Vec<Telemetry>,
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
        Coordinator {
            header,
            tail,
            transport,
            next_frame: 0,
            pending: Vec::new(),
        }
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
            match self.transport.recv()? {
                Event::Done(d) => {
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
                }
                Event::Lost { node, reason } => {
                    return Err(RunError::WorkerLost {
                        node: self.node_name(node),
                        reason,
                    });
                }
                Event::Rtt { node, rtt_us } => self.pending.push(Telemetry::Rtt { node, rtt_us }),
            }
        }
    }

    fn node_name(&self, node: usize) -> String {
        self.header
            .plan
            .cluster
            .nodes
            .get(node)
            .map_or_else(|| format!("#{node}"), |n| n.name.clone())
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
            pending: 0,
            start_us: self.transport.now_us(),
            busy: vec![0.0; cluster.nodes.len()],
            wire: 0,
            quant: QuantError::default(),
            trace: Trace::new(cluster.nodes.iter().map(|n| n.name.clone()).collect()),
            telemetry: Vec::new(),
        })
    }

    /// Scatters the frame's current segment, or — past the last — runs the tail and returns
    /// the frame's report.
    fn advance(&mut self, mut frame: InFlight) -> Result<Step, RunError> {
        let plan = &self.header.plan;
        let coord = plan.cluster.coordinator;
        if let Some(seg) = plan.segments.get(frame.segment) {
            let t0 = self.transport.now_us();
            let si = frame.segment;
            for (ti, tile) in seg.tiles.iter().enumerate() {
                // The first segment reads the input image: its pixels travel when there are.
                // Later segments' inputs are compressed as the plan's outputs are.
                let input = match (&frame.pixels, si, plan.compression) {
                    (Some(p), 0, _) => TileInput::Pixels(tile_pixels(p, tile)),
                    (_, 0, _) | (_, _, Compression::None) => {
                        TileInput::Values(tile_input(&frame.current, tile))
                    }
                    (_, _, how) => match wire::encode(tile_input(&frame.current, tile), how) {
                        (WireTile::Quantised(q), e) => {
                            frame.quant.add(e);
                            TileInput::Quantised(q)
                        }
                        (WireTile::Exact(a), _) => TileInput::Values(a),
                    },
                };
                let job = TileJob {
                    frame: frame.id,
                    segment: si as u32,
                    tile: ti as u32,
                    input,
                };
                self.transport.send(tile.node, job).map_err(|e| match e {
                    TransportError::Unreachable { reason, .. } => RunError::WorkerLost {
                        node: self.node_name(tile.node),
                        reason,
                    },
                    e => RunError::Transport(e),
                })?;
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
        }))
    }

    /// Puts a returned tile into its place in the frame's segment output.
    fn stitch(&self, frame: &mut InFlight, d: TileDone) -> Result<(), RunError> {
        let plan = &self.header.plan;
        let node = self.node_name(d.node);
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
        frame.pending -= 1;
        Ok(())
    }
}
