//! A worker: one node's share of a plan — the programs of the segments it has tiles in and
//! the kernels compiled for them — answering [`TileJob`]s however they arrive (a channel in
//! this process, a gRPC stream from a coordinator elsewhere).
//!
//! One `Worker` per node process holds one copy of the node's weights, whatever the number of
//! threads that call [`Worker::run`] on it (it is `Sync`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use adcnn_core::format::PlanHeader;
use adcnn_core::input;
use adcnn_core::net::ImagePreprocess;
use adcnn_core::ops::Shape;
use adcnn_core::plan::Region;
use adcnn_core::plan::{Compression, Segment};
use adcnn_core::program::Program;
use adcnn_kernels::wire::{self, QuantError, WireTile};
use adcnn_kernels::{CompileError, CompileOptions, CompiledKernels};
use ndarray::Array3;

use crate::transport::{TileDone, TileInput, TileJob};

/// Which tile kernels a worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Kernels {
    /// Compiled kernels (host GEMM, Winograd, Cranelift JIT), compiled per node when the plan
    /// loads.
    #[default]
    Jit,
    /// Compiled kernels without Winograd: every dense convolution on im2col + GEMM (slower
    /// 3×3 layers, a quarter of their prepared weight memory).
    Gemm,
    /// The plain operators (`adcnn_core::eval`): the oracle.
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

    /// Compile options for the compiled kinds, `None` for the reference. The worker adds
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

/// One node's share of a plan, ready to compute its tiles.
#[derive(Debug)]
pub struct Worker {
    node: usize,
    compression: Compression,
    /// How input pixels become the network's input, if the network takes images.
    image: Option<ImagePreprocess>,
    /// By segment: the segment's geometry and program, for segments this node has tiles in.
    segments: Vec<Option<(Segment, Arc<Program>)>>,
    kernels: Option<Arc<CompiledKernels>>,
    /// Milliseconds its kernels took to compile (0 when they came from the cache).
    pub compile_ms: f64,
    /// Whether its kernels came from the process's cache.
    pub cached: bool,
    epoch: Instant,
}

/// Compiled kernels by (plan hash, node, options), shared while some worker holds them:
/// loading the same plan again (a re-plan that chose the same plan, a second run in this
/// process) reuses them instead of compiling. Weak, so they are freed with the last worker.
type KernelCache = HashMap<(u64, usize, CompileOptions), Weak<CompiledKernels>>;

static KERNEL_CACHE: Mutex<Option<KernelCache>> = Mutex::new(None);

impl Worker {
    /// The worker of `node` for the plan `header` (identified by `hash`), with `programs`
    /// holding at least the segments the node has tiles in. `epoch` is the clock its
    /// reported times count from.
    pub fn new(
        node: usize,
        header: &PlanHeader,
        hash: u64,
        programs: &HashMap<usize, Arc<Program>>,
        kernels: Kernels,
        epoch: Instant,
    ) -> Result<Worker, WorkerError> {
        let plan = &header.plan;
        let mut segments = Vec::with_capacity(plan.segments.len());
        for (i, seg) in plan.segments.iter().enumerate() {
            if !seg.tiles.iter().any(|t| t.node == node) {
                segments.push(None);
                continue;
            }
            let p = programs.get(&i).ok_or(WorkerError::MissingSegment(i))?;
            segments.push(Some((seg.clone(), Arc::clone(p))));
        }
        let (kernels, compile_ms, cached) = match kernels.compile_options() {
            None => (None, 0.0, false),
            Some(opts) => {
                let opts = CompileOptions {
                    wire: plan.compression,
                    ..opts
                };
                let (k, fresh) = cached_kernels(hash, node, &segments, &opts)?;
                let ms = if fresh { k.compile_ms } else { 0.0 };
                (Some(k), ms, !fresh)
            }
        };
        Ok(Worker {
            node,
            compression: plan.compression,
            image: header.network.input.image.clone(),
            segments,
            kernels,
            compile_ms,
            cached,
            epoch,
        })
    }

    pub fn node(&self) -> usize {
        self.node
    }

    /// Bytes of weights its compiled kernels prepared (packed, Winograd-transformed; 0 for
    /// reference kernels).
    pub fn weight_bytes(&self) -> usize {
        self.kernels.as_ref().map_or(0, |k| k.weight_bytes())
    }

    /// Computes one tile and encodes it for the wire (quantised by the kernels' epilogues
    /// with q8/q4).
    pub fn run(&self, job: &TileJob) -> TileDone {
        let start_us = self.epoch.elapsed().as_secs_f64() * 1e6;
        let output = self.compute(job);
        let end_us = self.epoch.elapsed().as_secs_f64() * 1e6;
        let (output, quant_error) = match output {
            Ok((t, e)) => (Ok(t), e),
            Err(e) => (Err(e), QuantError::default()),
        };
        let bytes_out = output.as_ref().map_or(0, |t| t.wire_bytes() as u64);
        TileDone {
            frame: job.frame,
            segment: job.segment,
            tile: job.tile,
            node: self.node,
            output,
            quant_error,
            start_us,
            end_us,
            sent_us: start_us,
            received_us: end_us,
            bytes_in: job.input.bytes() as u64,
            bytes_out,
        }
    }

    /// Whether a test injected `fault` at `job`: the failpoint of that name, configured as
    /// `return(NODE@FRAME)`, hits when a tile of frame FRAME reaches node NODE. Always
    /// false in builds without the `failpoints` feature.
    pub fn injected(&self, fault: Fault, job: &TileJob) -> bool {
        #[cfg(feature = "failpoints")]
        fail::fail_point!(fault.failpoint(), |arg: Option<String>| {
            arg.and_then(|a| {
                let (n, f) = a.split_once('@')?;
                Some(n.trim().parse() == Ok(self.node) && f.trim().parse() == Ok(job.frame))
            })
            .unwrap_or(false)
        });
        let _ = (fault, job);
        false
    }

    fn compute(&self, job: &TileJob) -> Result<(WireTile, QuantError), String> {
        let (seg, prog) = self
            .segments
            .get(job.segment as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("this node holds no segment {}", job.segment))?;
        // Any tile of a segment the node holds: a lost node's tiles come to the others.
        let tile = seg
            .tiles
            .get(job.tile as usize)
            .ok_or_else(|| format!("segment {} has no tile {}", job.segment, job.tile))?;
        let want = (prog.input_shape().c, tile.input.rows(), tile.input.cols());
        if job.input.dim() != want {
            return Err(format!(
                "tile input of shape {:?}, the plan says {want:?}",
                job.input.dim()
            ));
        }
        let decoded;
        let input = match &job.input {
            TileInput::Values(a) => a,
            TileInput::Quantised(q) => {
                decoded = q.decode();
                &decoded
            }
            TileInput::Pixels(p) => match (&self.image, job.segment) {
                (Some(pre), 0) => {
                    decoded = input::normalize(p.view(), pre);
                    &decoded
                }
                _ => return Err("pixels for a tile that does not read the input image".into()),
            },
        };
        let how = self.compression;
        let r = match &self.kernels {
            Some(k) => k.run_tile_wire(prog, seg, tile, input, how),
            None => prog
                .run_tile(seg, tile, input)
                .map(|t| wire::encode(t, how)),
        };
        r.map_err(|e| e.to_string())
    }
}

/// Faults tests inject into a worker through failpoints (the `failpoints` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `adcnn-lose-node`: the node is lost (in process its threads stop; a daemon breaks
    /// its tile stream, as a crash looks to the coordinator).
    Lose,
    /// `adcnn-stall-node`: the node never answers the jobs of that frame (a straggler), and
    /// serves the others.
    Stall,
}

impl Fault {
    pub fn failpoint(self) -> &'static str {
        match self {
            Fault::Lose => "adcnn-lose-node",
            Fault::Stall => "adcnn-stall-node",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the plan's segment {0} was not loaded for this node")]
    MissingSegment(usize),
    #[error("cannot compile the kernels: {0}")]
    Compile(#[from] CompileError),
}

/// `node`'s kernels for plan `hash`: from the cache, or compiled (then `true`).
fn cached_kernels(
    hash: u64,
    node: usize,
    segments: &[Option<(Segment, Arc<Program>)>],
    opts: &CompileOptions,
) -> Result<(Arc<CompiledKernels>, bool), CompileError> {
    let key = (hash, node, *opts);
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
    let parts: Vec<(&Segment, &Program)> =
        segments.iter().flatten().map(|(s, p)| (s, &**p)).collect();
    let k = Arc::new(CompiledKernels::compile(&parts, |t| t.node == node, opts)?);
    let mut cache = KERNEL_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.retain(|_, w| w.strong_count() > 0);
    cache.insert(key, Arc::downgrade(&k));
    Ok((k, true))
}

/// The input of a job: the part of `current` (the segment's input, whole) its tile needs.
pub fn tile_input(current: &Array3<f32>, tile: &adcnn_core::plan::Tile) -> Array3<f32> {
    let (_, h, w) = current.dim();
    adcnn_core::tensor::crop(current, &Region::full(Shape::new(0, h, w)), &tile.input)
}

/// The same for pixels of the input image.
pub fn tile_pixels(
    pixels: &ndarray::Array3<u8>,
    tile: &adcnn_core::plan::Tile,
) -> ndarray::Array3<u8> {
    let r = tile.input;
    pixels
        .slice(ndarray::s![.., r.r0..r.r1, r.c0..r.c1])
        .to_owned()
}
