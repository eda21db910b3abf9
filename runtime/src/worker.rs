//! A worker: one node's share of a plan — the programs of the segments it has tiles in and
//! the kernels compiled for them — answering [`TileJob`]s however they arrive (a channel in
//! this process, a gRPC stream from a coordinator elsewhere).
//!
//! One `Worker` per node process holds one copy of the node's weights, whatever the number of
//! threads that call [`Worker::run`] on it (it is `Sync`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use adcnn_core::format::PlanHeader;
use adcnn_core::input;
use adcnn_core::net::ImagePreprocess;
use adcnn_core::ops::Shape;
use adcnn_core::plan::Region;
use adcnn_core::plan::{Compression, Segment};
use adcnn_core::program::Program;
use adcnn_kernels::par::Pool;
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
    /// By segment: its program, for the segments this node holds (the plan gave it tiles
    /// of them).
    programs: Vec<Option<Arc<Program>>>,
    /// How its kernels are compiled (`None`: the reference operators).
    options: Option<CompileOptions>,
    /// The tile layouts it can compute: the plan's (0, always) and those a re-plan sent
    /// ([`Worker::retile`]) that the coordinator still wants.
    layouts: RwLock<Vec<Arc<Layout>>>,
    /// Milliseconds its kernels took to compile (0 when they came from the cache).
    pub compile_ms: f64,
    /// Whether its kernels came from the process's cache.
    pub cached: bool,
    /// The threads its kernels split each layer over (`None`: the calling thread's alone).
    pool: Option<Pool>,
    epoch: Instant,
}

/// Tile geometry a worker can compute, and the kernels compiled for it.
#[derive(Debug)]
struct Layout {
    id: u32,
    /// By segment: its tiles, for the segments the node holds.
    segments: Vec<Option<Segment>>,
    kernels: Option<Arc<CompiledKernels>>,
}

/// Layouts besides the plan's a re-tile may ask a worker to keep: the one running (and the
/// new one makes two). The coordinator starts no re-plan while frames of an older layout
/// than the running one are out.
pub const MAX_KEEP: usize = 1;

/// Compiled kernels by (plan hash, node, options), shared while some worker holds them:
/// loading the same plan again (a second run in this process) reuses them instead of
/// compiling. Weak, so they are freed with the last worker.
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
        let mut held = Vec::with_capacity(plan.segments.len());
        let mut segments = Vec::with_capacity(plan.segments.len());
        for (i, seg) in plan.segments.iter().enumerate() {
            if !seg.tiles.iter().any(|t| t.node == node) {
                held.push(None);
                segments.push(None);
                continue;
            }
            let p = programs.get(&i).ok_or(WorkerError::MissingSegment(i))?;
            held.push(Some(Arc::clone(p)));
            segments.push(Some(seg.clone()));
        }
        let options = kernels.compile_options().map(|o| CompileOptions {
            wire: plan.compression,
            ..o
        });
        let (kernels, compile_ms, cached) = match &options {
            None => (None, 0.0, false),
            Some(opts) => {
                let (k, fresh) = cached_kernels(hash, node, &held, &segments, opts)?;
                let ms = if fresh { k.compile_ms } else { 0.0 };
                (Some(k), ms, !fresh)
            }
        };
        let layout = Layout {
            id: 0,
            segments,
            kernels,
        };
        Ok(Worker {
            node,
            compression: plan.compression,
            image: header.network.input.image.clone(),
            programs: held,
            options,
            layouts: RwLock::new(vec![Arc::new(layout)]),
            compile_ms,
            cached,
            pool: None,
            epoch,
        })
    }

    /// Gives its kernels `threads` threads: each tile's layers are split over them
    /// ([`adcnn_kernels::par`]). 1 (the default) computes on the calling thread. If the
    /// threads do not start, it keeps computing as before.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), WorkerError> {
        self.pool = Pool::new(threads).map_err(WorkerError::Threads)?;
        Ok(())
    }

    /// The threads its kernels use per tile.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, Pool::threads)
    }

    /// Prepares layout `id`: `segments` are every segment of the plan with new tiles. Those
    /// this node holds are checked against its programs and get kernels for the tiles it
    /// is given; then jobs may name the layout. Returns the milliseconds compiling took.
    /// Afterwards it holds the plan's layout, `id`, the layouts in `keep` (at most
    /// [`MAX_KEEP`]) and any newer than `id` (a later re-tile that finished first).
    pub fn retile(&self, id: u32, segments: &[Segment], keep: &[u32]) -> Result<f64, WorkerError> {
        if id == 0 {
            return Err(WorkerError::Layout("layout 0 is the plan's".into()));
        }
        if keep.len() > MAX_KEEP {
            return Err(WorkerError::Layout(format!(
                "{} layouts to keep, at most {MAX_KEEP}",
                keep.len()
            )));
        }
        if segments.len() != self.programs.len() {
            return Err(WorkerError::Layout(format!(
                "{} segments, the plan has {}",
                segments.len(),
                self.programs.len()
            )));
        }
        let mut mine = Vec::with_capacity(segments.len());
        for (i, (seg, p)) in segments.iter().zip(&self.programs).enumerate() {
            let Some(p) = p else {
                mine.push(None);
                continue;
            };
            p.check_tiles(seg)
                .map_err(|e| WorkerError::Layout(format!("segment {i}: {e}")))?;
            mine.push(Some(seg.clone()));
        }
        let started = Instant::now();
        let kernels = match &self.options {
            None => None,
            Some(opts) => {
                let parts: Vec<(&Segment, &Program)> = mine
                    .iter()
                    .zip(&self.programs)
                    .filter_map(|(s, p)| Some((s.as_ref()?, &**p.as_ref()?)))
                    .collect();
                let node = self.node;
                Some(Arc::new(CompiledKernels::compile(
                    &parts,
                    |t| t.node == node,
                    opts,
                )?))
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let layout = Arc::new(Layout {
            id,
            segments: mine,
            kernels,
        });
        let mut layouts = self.layouts.write().unwrap_or_else(|e| e.into_inner());
        layouts.retain(|l| l.id == 0 || l.id > id || keep.contains(&l.id));
        layouts.push(layout);
        Ok(ms)
    }

    /// Forgets every layout but the plan's: a new coordinator session starts from it.
    pub fn plan_layout_only(&self) {
        let mut layouts = self.layouts.write().unwrap_or_else(|e| e.into_inner());
        layouts.retain(|l| l.id == 0);
    }

    /// The ids of the layouts it can compute now, oldest first.
    pub fn layouts(&self) -> Vec<u32> {
        let layouts = self.layouts.read().unwrap_or_else(|e| e.into_inner());
        layouts.iter().map(|l| l.id).collect()
    }

    pub fn node(&self) -> usize {
        self.node
    }

    /// Bytes of weights its compiled kernels prepared (packed, Winograd-transformed; 0 for
    /// reference kernels).
    pub fn weight_bytes(&self) -> usize {
        let layouts = self.layouts.read().unwrap_or_else(|e| e.into_inner());
        layouts
            .iter()
            .filter_map(|l| l.kernels.as_ref())
            .map(|k| k.weight_bytes())
            .sum()
    }

    /// Computes one tile and encodes it for the wire (quantised by the kernels' epilogues
    /// with q8/q4).
    pub fn run(&self, job: &TileJob) -> TileDone {
        let started = Instant::now();
        let start_us = self.epoch.elapsed().as_secs_f64() * 1e6;
        let output = adcnn_kernels::par::install(self.pool.as_ref(), || self.compute(job));
        if let Some(k) = self.slowdown(job) {
            // A k times slower node takes k times as long: (k − 1) more.
            std::thread::sleep(started.elapsed().mul_f64(k - 1.0));
        }
        let end_us = self.epoch.elapsed().as_secs_f64() * 1e6;
        // A slow link: the result takes that much longer to come back.
        let wire_us = match self.slow_link(job) {
            Some(ms) => {
                std::thread::sleep(Duration::from_secs_f64(ms / 1e3));
                ms * 1e3
            }
            None => 0.0,
        };
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
            received_us: end_us + wire_us,
            wire_us,
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

    /// Whether a test slows this node's link down at `job`: the failpoint `adcnn-slow-link`,
    /// configured as `return(NODE@FRAME*MS)`, holds every result of node NODE from frame
    /// FRAME on back for MS milliseconds (after its compute, as a slow link would). `None`
    /// in builds without the `failpoints` feature.
    fn slow_link(&self, job: &TileJob) -> Option<f64> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("adcnn-slow-link", |arg: Option<String>| {
            let arg = arg?;
            let (n, rest) = arg.split_once('@')?;
            let (f, ms) = rest.split_once('*')?;
            let (n, f): (usize, u64) = (n.trim().parse().ok()?, f.trim().parse().ok()?);
            let ms: f64 = ms.trim().parse().ok()?;
            (n == self.node && job.frame >= f && ms > 0.0 && ms < 1e5).then_some(ms)
        });
        let _ = job;
        None
    }

    /// Whether a test slows this node down at `job`: the failpoint `adcnn-slow-node`,
    /// configured as `return(NODE@FRAME*K)`, makes node NODE K times slower from frame FRAME
    /// on; `return(NODE@FRAME*K/P)` only in every P-th frame from FRAME on (a node that
    /// flaps). `None` in builds without the `failpoints` feature.
    fn slowdown(&self, job: &TileJob) -> Option<f64> {
        #[cfg(feature = "failpoints")]
        fail::fail_point!("adcnn-slow-node", |arg: Option<String>| {
            let arg = arg?;
            let (n, rest) = arg.split_once('@')?;
            let (f, rest) = rest.split_once('*')?;
            let (k, every) = rest.split_once('/').unwrap_or((rest, "1"));
            let (n, f): (usize, u64) = (n.trim().parse().ok()?, f.trim().parse().ok()?);
            let (k, every): (f64, u64) = (k.trim().parse().ok()?, every.trim().parse().ok()?);
            let hit = n == self.node
                && job.frame >= f
                && (job.frame - f).is_multiple_of(every.max(1))
                && k > 1.0;
            hit.then_some(k)
        });
        let _ = job;
        None
    }

    fn compute(&self, job: &TileJob) -> Result<(WireTile, QuantError), String> {
        let layout = {
            let layouts = self.layouts.read().unwrap_or_else(|e| e.into_inner());
            layouts
                .iter()
                .find(|l| l.id == job.layout)
                .cloned()
                .ok_or_else(|| format!("this node has no tile layout {}", job.layout))?
        };
        let si = job.segment as usize;
        let (seg, prog) = layout
            .segments
            .get(si)
            .and_then(Option::as_ref)
            .zip(self.programs.get(si).and_then(Option::as_ref))
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
        let r = match &layout.kernels {
            Some(k) => k.run_tile_wire(prog, seg, tile, input, how),
            None => prog
                .run_tile(seg, tile, input)
                .map(|t| wire::encode(t, how)),
        };
        r.map_err(|e| e.to_string())
    }
}

/// Runs a re-tile, a panic in it (a bug) turned into an error: the coordinator must get an
/// answer either way.
pub fn guarded(f: impl FnOnce() -> Result<f64, WorkerError>) -> Result<f64, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(format!(
            "re-tiling failed: {}",
            p.downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into())
        )),
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
    #[error("the new tile layout does not fit: {0}")]
    Layout(String),
    #[error("cannot compile the kernels: {0}")]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Threads(String),
}

/// `node`'s kernels for plan `hash`: from the cache, or compiled (then `true`).
fn cached_kernels(
    hash: u64,
    node: usize,
    programs: &[Option<Arc<Program>>],
    segments: &[Option<Segment>],
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
    let parts: Vec<(&Segment, &Program)> = segments
        .iter()
        .zip(programs)
        .filter_map(|(s, p)| Some((s.as_ref()?, &**p.as_ref()?)))
        .collect();
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
