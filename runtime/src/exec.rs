//! The in-process cluster: the coordinator (the calling thread) and one worker thread per
//! worker node, connected by crossbeam channels. A segment runs as scatter → tiles →
//! (compressed) gather → stitch; the tail runs on the coordinator. With q8/q4, workers send
//! [`WireTile::Quantised`] tiles (quantised by their kernels' epilogues) and the coordinator
//! decodes them straight into the stitched tensor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use adcnn_compiler::codegen::{CompileError, CompileOptions, CompiledKernels};
use adcnn_compiler::plan::Region;
use adcnn_compiler::plan::format::LoadedPlan;
use adcnn_compiler::reference::EvalError;
use adcnn_compiler::reference::tile::{crop, run_tail, run_tile};
use adcnn_compiler::wire::{self, QuantError, WireError, WireTile};
use crossbeam::channel::{Receiver, Sender, unbounded};
use ndarray::{Array3, s};

use crate::trace::{Event, Trace};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the input has shape {found:?}; the plan's network takes {expected}")]
    InputShape { found: [usize; 3], expected: String },
    #[error("node {node}: {source}")]
    Kernel { node: String, source: EvalError },
    #[error("worker thread of node {0} stopped")]
    WorkerLost(String),
    #[error("tile from node {node}: {source}")]
    Wire { node: String, source: WireError },
}

/// What one run produced and measured.
#[derive(Debug)]
pub struct RunReport {
    pub output: Array3<f32>,
    pub measured_ms: f64,
    /// Per node: busy milliseconds (tiles for workers; scatter, stitch and tail for the
    /// coordinator).
    pub node_busy_ms: Vec<f64>,
    pub wire_bytes: u64,
    /// Relative L2 error that compression added to the tile outputs (0 without compression).
    pub compression_error: f64,
    pub trace: Trace,
}

struct Job {
    segment: usize,
    tile: usize,
    input: Array3<f32>,
}

struct Done {
    node: usize,
    segment: usize,
    tile: usize,
    output: Result<(WireTile, QuantError), EvalError>,
    start_us: f64,
    end_us: f64,
}

/// Which tile kernels the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Compiled kernels (host GEMM, Winograd, Cranelift JIT), compiled per node when the plan
    /// loads.
    #[default]
    Jit,
    /// Compiled kernels without Winograd: every dense convolution on im2col + GEMM (slower
    /// 3×3 layers, a quarter of their prepared weight memory).
    Gemm,
    /// The reference interpreter (the oracle).
    Reference,
}

impl Kernels {
    /// The names `--kernels` takes, in order.
    pub const NAMES: [&str; 3] = ["jit", "gemm", "reference"];

    pub fn from_name(s: &str) -> Option<Kernels> {
        match s {
            "jit" => Some(Kernels::Jit),
            "gemm" => Some(Kernels::Gemm),
            "reference" => Some(Kernels::Reference),
            _ => None,
        }
    }

    /// Compile options for the compiled kinds, `None` for the reference. The executor adds
    /// the plan's wire compression.
    pub fn compile_options(self) -> Option<CompileOptions> {
        match self {
            Kernels::Jit => Some(CompileOptions::default()),
            Kernels::Gemm => Some(CompileOptions {
                winograd: false,
                ..CompileOptions::default()
            }),
            Kernels::Reference => None,
        }
    }
}

/// Compiled kernels by (plan hash, node, options), shared while some executor holds them:
/// loading the same plan again (a re-plan that chose the same plan, a second executor)
/// reuses them instead of compiling. Weak, so they are freed with the last executor.
type KernelCache = HashMap<(u64, usize, CompileOptions), Weak<CompiledKernels>>;

static KERNEL_CACHE: Mutex<Option<KernelCache>> = Mutex::new(None);

/// `node`'s kernels for `plan`: from the cache, or compiled (then `true`).
fn cached_kernels(
    plan: &LoadedPlan,
    node: usize,
    opts: &CompileOptions,
) -> Result<(Arc<CompiledKernels>, bool), CompileError> {
    let key = (plan.hash, node, *opts);
    let hit = {
        let cache = KERNEL_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .and_then(|c| c.get(&key))
            .and_then(Weak::upgrade)
    };
    if let Some(k) = hit {
        return Ok((k, false));
    }
    let k = Arc::new(CompiledKernels::compile_with(
        &plan.graph,
        &plan.weights,
        &plan.plan.segments,
        |t| t.node == node,
        opts,
    )?);
    let mut cache = KERNEL_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.retain(|_, w| w.strong_count() > 0);
    cache.insert(key, Arc::downgrade(&k));
    Ok((k, true))
}

/// A loaded plan with its worker threads running.
pub struct Executor {
    plan: Arc<LoadedPlan>,
    /// Per node: milliseconds spent compiling its kernels (JIT only).
    compile_ms: Vec<f64>,
    weight_bytes: Vec<usize>,
    cached: Vec<bool>,
    /// Why compilation failed on some node, which then runs the reference kernels.
    compile_error: Option<String>,
    senders: Vec<Option<Sender<Job>>>,
    done: Receiver<Done>,
    handles: Vec<JoinHandle<()>>,
    epoch: Instant,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("network", &self.plan.plan.network)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Loads `plan` with compiled kernels.
    pub fn new(plan: LoadedPlan) -> Self {
        Executor::with_kernels(plan, Kernels::Jit)
    }

    pub fn with_kernels(plan: LoadedPlan, kernels: Kernels) -> Self {
        let plan = Arc::new(plan);
        let mut compile_ms = vec![0.0; plan.plan.cluster.nodes.len()];
        let mut weight_bytes = vec![0; plan.plan.cluster.nodes.len()];
        let mut cached = vec![false; plan.plan.cluster.nodes.len()];
        let mut compile_error = None;
        let epoch = Instant::now();
        let (done_tx, done) = unbounded::<Done>();
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (i, node) in plan.plan.cluster.nodes.iter().enumerate() {
            if !node.worker {
                senders.push(None);
                continue;
            }
            let (tx, rx) = unbounded::<Job>();
            senders.push(Some(tx));
            // Each node compiles its own share: one JIT session per node, whose finished code
            // only that node's thread uses.
            let compiled = match kernels.compile_options() {
                None => None,
                Some(opts) => {
                    let opts = CompileOptions {
                        wire: plan.plan.compression,
                        ..opts
                    };
                    match cached_kernels(&plan, i, &opts) {
                        Ok((k, fresh)) => {
                            compile_ms[i] = if fresh { k.compile_ms } else { 0.0 };
                            cached[i] = !fresh;
                            weight_bytes[i] = k.weight_bytes();
                            Some(k)
                        }
                        Err(e) => {
                            compile_error = Some(format!("node {}: {e}", node.name));
                            None
                        }
                    }
                }
            };
            let plan = Arc::clone(&plan);
            let done_tx = done_tx.clone();
            let name = format!("adcnn-{}", node.name);
            let spawned = std::thread::Builder::new()
                .name(name)
                .spawn(move || worker(i, &plan, compiled.as_deref(), &rx, &done_tx, epoch));
            if let Ok(h) = spawned {
                handles.push(h);
            }
        }
        Executor {
            plan,
            compile_ms,
            weight_bytes,
            cached,
            compile_error,
            senders,
            done,
            handles,
            epoch,
        }
    }

    pub fn plan(&self) -> &LoadedPlan {
        &self.plan
    }

    /// Per node: milliseconds its kernels took to compile (0 for reference kernels).
    pub fn compile_ms(&self) -> &[f64] {
        &self.compile_ms
    }

    /// Per node: bytes of weights its compiled kernels prepared (packed, Winograd-transformed;
    /// 0 for reference kernels). Nodes are threads here, but each holds its own, as on a
    /// real cluster.
    pub fn weight_bytes(&self) -> &[usize] {
        &self.weight_bytes
    }

    /// Per node: whether its kernels came from the process's cache (the same plan file,
    /// node and kernel kind loaded before and still in use; `compile_ms` is then 0).
    pub fn kernels_cached(&self) -> &[bool] {
        &self.cached
    }

    /// Set when some node's kernels failed to compile (that node runs the reference).
    pub fn compile_error(&self) -> Option<&str> {
        self.compile_error.as_deref()
    }

    fn now_us(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e6
    }

    /// Runs one input through the plan.
    pub fn run(&self, input: &Array3<f32>) -> Result<RunReport, RunError> {
        let lp = &*self.plan;
        let (graph, plan) = (&lp.graph, &lp.plan);
        let s = graph.input.shape;
        if input.dim() != (s.c, s.h, s.w) {
            let (c, h, w) = input.dim();
            return Err(RunError::InputShape {
                found: [c, h, w],
                expected: s.to_string(),
            });
        }
        let coord = plan.cluster.coordinator;
        let mut trace = Trace::new(plan.cluster.nodes.iter().map(|n| n.name.clone()).collect());
        let mut busy = vec![0.0; plan.cluster.nodes.len()];
        let (mut wire, mut quant_error) = (0u64, QuantError::default());
        let start = Instant::now();
        let mut current = input.clone();
        for (si, seg) in plan.segments.iter().enumerate() {
            let t0 = self.now_us();
            let in_shape = current.dim();
            let full = Region {
                r0: 0,
                r1: in_shape.1,
                c0: 0,
                c1: in_shape.2,
            };
            for (ti, tile) in seg.tiles.iter().enumerate() {
                let job = Job {
                    segment: si,
                    tile: ti,
                    input: crop(&current, &full, &tile.input),
                };
                let node = &plan.cluster.nodes[tile.node].name;
                let sender = self.senders.get(tile.node).and_then(Option::as_ref);
                match sender {
                    Some(tx) if tx.send(job).is_ok() => {}
                    _ => return Err(RunError::WorkerLost(node.clone())),
                }
            }
            let t1 = self.now_us();
            trace.push(Event {
                node: coord,
                name: format!("scatter segment {si}"),
                start_us: t0,
                dur_us: t1 - t0,
            });
            busy[coord] += (t1 - t0) / 1e3;
            let out_shape = graph.layer(seg.output()).shape;
            let mut out = Array3::<f32>::zeros((out_shape.c, out_shape.h, out_shape.w));
            for _ in 0..seg.tiles.len() {
                let d = self
                    .done
                    .recv()
                    .map_err(|_| RunError::WorkerLost("any".into()))?;
                let node_name = plan.cluster.nodes[d.node].name.clone();
                let (t, e) = d.output.map_err(|source| RunError::Kernel {
                    node: node_name.clone(),
                    source,
                })?;
                let tile = &plan.segments[d.segment].tiles[d.tile];
                // Decoded (q8/q4) or copied into its place.
                t.write_into(out.slice_mut(s![
                    ..,
                    tile.output.r0..tile.output.r1,
                    tile.output.c0..tile.output.c1
                ]))
                .map_err(|source| RunError::Wire {
                    node: node_name,
                    source,
                })?;
                wire += t.wire_bytes() as u64;
                quant_error.add(e);
                busy[d.node] += (d.end_us - d.start_us) / 1e3;
                trace.push(Event {
                    node: d.node,
                    name: format!("segment {} tile {},{}", d.segment, tile.row, tile.col),
                    start_us: d.start_us,
                    dur_us: d.end_us - d.start_us,
                });
            }
            current = out;
        }
        // The tail, on the coordinator.
        let t0 = self.now_us();
        let tail_start = plan.tail_start.index();
        let output =
            run_tail(graph, &lp.weights, tail_start, current, input).map_err(|source| {
                RunError::Kernel {
                    node: plan.cluster.nodes[coord].name.clone(),
                    source,
                }
            })?;
        if tail_start < graph.layers().len() {
            let t1 = self.now_us();
            trace.push(Event {
                node: coord,
                name: "tail".into(),
                start_us: t0,
                dur_us: t1 - t0,
            });
            busy[coord] += (t1 - t0) / 1e3;
        }
        let measured_ms = start.elapsed().as_secs_f64() * 1e3;
        let compression_error = if quant_error.sq > 0.0 {
            (quant_error.err / quant_error.sq).sqrt()
        } else {
            0.0
        };
        Ok(RunReport {
            output,
            measured_ms,
            node_busy_ms: busy,
            wire_bytes: wire,
            compression_error,
            trace,
        })
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Closing the job channels ends the workers.
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(
    node: usize,
    plan: &LoadedPlan,
    compiled: Option<&CompiledKernels>,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    epoch: Instant,
) {
    let how = plan.plan.compression;
    while let Ok(job) = jobs.recv() {
        let start_us = epoch.elapsed().as_secs_f64() * 1e6;
        let seg = &plan.plan.segments[job.segment];
        let tile = &seg.tiles[job.tile];
        // Compiled kernels quantise in their epilogues; the reference's output is encoded
        // here.
        let output = match compiled {
            Some(k) => k.run_tile_wire(&plan.graph, &plan.weights, seg, tile, &job.input, how),
            None => run_tile(&plan.graph, &plan.weights, seg, tile, &job.input)
                .map(|t| wire::encode(t, how)),
        };
        let end_us = epoch.elapsed().as_secs_f64() * 1e6;
        if done
            .send(Done {
                node,
                segment: job.segment,
                tile: job.tile,
                output,
                start_us,
                end_us,
            })
            .is_err()
        {
            return;
        }
    }
}
