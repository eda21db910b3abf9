//! Compiling a node's share of a plan: prepare every convolution, find the blocks, then
//! generate the functions every tile shape the node runs needs, in one JIT session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use adcnn_core::net::LayerId;
use adcnn_core::ops::Op;
use adcnn_core::plan::{Compression, Segment, Tile};
use adcnn_core::program::Program;

use super::compiled::{CompileError, CompileOptions, CompiledKernels, KernelStats};
use super::geometry::{depthwise_spec, max_pool_spec, tile_geometry};
use super::prepare::{Interleaved, Preparation, Prepared, prepare_segment, winograd_pays};
use crate::act::Act;
use crate::depthwise as host_dw;
use crate::gemm::{Isa, PackedA, isa};
use crate::jit::{EpilogueSpec, JitSession};
use crate::winograd::Winograd;

impl CompiledKernels {
    /// Prepares and compiles the kernels of `segments` (each with its program) for the tiles
    /// `want` selects (a node's share; `|_| true` for all).
    pub fn compile(
        segments: &[(&Segment, &Program)],
        want: impl Fn(&Tile) -> bool,
        opts: &CompileOptions,
    ) -> Result<CompiledKernels, CompileError> {
        let t0 = Instant::now();
        let mut prepared: HashMap<LayerId, Arc<Prepared>> = HashMap::new();
        // Only segments where this node computes a tile: a node without tiles in a segment
        // needs none of its weights (a `single` plan's idle nodes prepare nothing).
        for &(seg, prog) in segments
            .iter()
            .filter(|(seg, _)| seg.tiles.iter().any(&want))
        {
            let (first, end) = (seg.first.index(), seg.end.index());
            if (prog.first(), prog.end()) != (seg.first, seg.end) {
                return Err(CompileError::Tile(format!(
                    "the segment covers layers {first}..{end}, its program others"
                )));
            }
            let winograd = (first..end)
                .map(|i| {
                    // The largest output region of this layer among the node's tiles.
                    let largest = seg
                        .tiles
                        .iter()
                        .filter(|t| want(t))
                        .map(|t| t.regions[i - first])
                        .map(|r| (r.rows(), r.cols()))
                        .max_by_key(|&(r, c)| r * c)
                        .unwrap_or_else(|| {
                            let s = prog.layers()[i - first].shape;
                            (s.h, s.w)
                        });
                    opts.winograd && winograd_pays(prog, i, largest)
                })
                .collect();
            let how = Preparation {
                winograd,
                direct: opts.direct,
                blocks: opts.blocks && opts.host_depthwise && isa() == Isa::Avx2Fma,
                interleave: opts.interleave,
            };
            let p = shared(prog, how);
            for id in seg.layers() {
                prepared.insert(id, Arc::clone(&p));
            }
        }
        let mut stats = KernelStats::default();
        let mut seen = std::collections::HashSet::new();
        for p in prepared.values().filter(|p| seen.insert(Arc::as_ptr(p))) {
            stats.convs += p.convs.len();
            stats.winograd += p.convs.values().filter(|k| k.winograd.is_some()).count();
            stats.direct += p.convs.values().filter(|k| k.direct.is_some()).count();
            stats.fused_layers += p.fused_into.len();
            stats.blocks += p.blocks.len();
            stats.interleaved_blocks += p
                .blocks
                .values()
                .filter(|b| {
                    let k = p.convs.get(&b.dw);
                    k.is_some_and(|k| matches!(k.interleaved, Interleaved::Taps(_)))
                })
                .count();
        }
        let conv_of = |id: &LayerId| prepared.get(id).and_then(|p| p.convs.get(id));
        let fused = |id: &LayerId| {
            prepared
                .get(id)
                .is_some_and(|p| p.fused_into.contains_key(id))
        };

        let mut session = JitSession::new()?;
        let mut epilogues = HashMap::new();
        let mut pools = HashMap::new();
        let mut depthwise = HashMap::new();
        let mut quantisers = HashMap::new();
        let mut host_depthwise = std::collections::HashSet::new();
        for &(seg, prog) in segments {
            let last = seg.end.index() - 1;
            for tile in seg.tiles.iter().filter(|t| want(t)) {
                let out = tile.regions[last - seg.first.index()];
                if opts.generate && opts.wire != Compression::None && !out.is_empty() {
                    let channels = prog.output_shape().c;
                    if let std::collections::hash_map::Entry::Vacant(e) =
                        quantisers.entry((channels, out.area()))
                    {
                        let spec = EpilogueSpec {
                            channels,
                            pixels: out.area(),
                            bias: false,
                            act: Act::None,
                            residual: false,
                            wire: opts.wire,
                        };
                        e.insert((session.epilogue(&spec)?, spec));
                        stats.quantisers += 1;
                    }
                }
                for (n, id) in seg.layers().enumerate() {
                    let i = id;
                    if tile.regions[n].is_empty() {
                        continue;
                    }
                    let layer = prog.layer(id);
                    if let Some(k) = conv_of(&i).filter(|k| k.is_depthwise()) {
                        let (op, h, w) = tile_geometry(prog, seg, tile, i)?;
                        let c = prog.shape_of(&layer.inputs[0]).c;
                        let Op::Conv2d(conv) = &op else { continue };
                        let Some(spec) = depthwise_spec(conv, c, h, w, k) else {
                            continue;
                        };
                        if opts.host_depthwise && host_dw::applies(&spec) {
                            host_depthwise.insert((i, spec));
                        } else if opts.generate && !depthwise.contains_key(&(i, spec)) {
                            depthwise.insert((i, spec), session.depthwise(&spec)?);
                            stats.depthwise += 1;
                        }
                    } else if !opts.generate {
                        continue;
                    } else if let Some(k) = conv_of(&i) {
                        // Winograd applies bias and activation itself unless a residual is
                        // added.
                        if k.winograd.is_some() && k.residual.is_none() {
                            continue;
                        }
                        // The direct kernel applies them too, and its fallback with a fused
                        // pool runs the host epilogue before pooling.
                        if k.direct.is_some() && k.pool2 {
                            continue;
                        }
                        // The epilogue runs on the chain's output: the pool's, when fused.
                        let out = if k.pool2 {
                            k.last.index() - seg.first.index()
                        } else {
                            n
                        };
                        let pixels = tile.regions[out].area();
                        // The chain ends the segment: its epilogue can quantise the output.
                        let quantising = (opts.wire != Compression::None
                            && k.last.index() == last
                            && tile.regions[out] == tile.regions[last - seg.first.index()])
                        .then_some(opts.wire);
                        for wire in std::iter::once(Compression::None).chain(quantising) {
                            if let std::collections::hash_map::Entry::Vacant(e) =
                                epilogues.entry((i, pixels, wire))
                            {
                                let spec = EpilogueSpec {
                                    channels: layer.shape.c,
                                    pixels,
                                    bias: true,
                                    act: k.act,
                                    residual: k.residual.is_some(),
                                    wire,
                                };
                                e.insert((session.epilogue(&spec)?, spec));
                                if wire == Compression::None {
                                    stats.epilogues += 1;
                                } else {
                                    stats.quantising_epilogues += 1;
                                }
                            }
                        }
                    } else if matches!(layer.op, Op::MaxPool(_)) && !fused(&i) {
                        let (op, h, w) = tile_geometry(prog, seg, tile, i)?;
                        let c = prog.shape_of(&layer.inputs[0]).c;
                        if let Some(spec) = max_pool_spec(&op, c, h, w)
                            && !pools.contains_key(&(i, spec))
                        {
                            pools.insert((i, spec), session.max_pool(&spec)?);
                            stats.max_pools += 1;
                        }
                    }
                }
            }
        }
        stats.depthwise_host = host_depthwise.len();
        let code = session.finish()?;
        Ok(CompiledKernels {
            prepared,
            epilogues,
            quantisers,
            pools,
            depthwise,
            host_depthwise: opts.host_depthwise,
            band_bytes: opts.band_bytes,
            code,
            stats,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Bytes of prepared weights these kernels hold (packed, transformed): the largest part
    /// of a node's memory besides the plan's own weights. Segments shared with other nodes
    /// of the process count in full for each.
    pub fn weight_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.prepared
            .values()
            .filter(|p| seen.insert(Arc::as_ptr(p)))
            .flat_map(|p| p.convs.values())
            .map(|k| {
                k.packed.iter().map(PackedA::bytes).sum::<usize>()
                    + k.winograd.as_ref().map_or(0, Winograd::bytes)
                    + match &k.interleaved {
                        Interleaved::None => 0,
                        Interleaved::Pointwise(b) => b.bytes(),
                        Interleaved::Taps(t) => t.len() * size_of::<f32>(),
                    }
                    + (k.depthwise.len() + k.bias.len()) * size_of::<f32>()
            })
            .sum()
    }
}

/// Prepared segments by (program id, preparation), shared while some kernels hold them: the
/// nodes of an in-process cluster that run tiles of the same segment prepared the same way
/// hold one copy of its weights. Programs without an id (not read from a plan file) are not
/// shared.
type PreparedCache = HashMap<(u64, Preparation), Weak<Prepared>>;

static PREPARED: Mutex<Option<PreparedCache>> = Mutex::new(None);

/// `prog` prepared as `how` says: from the cache, or prepared now.
fn shared(prog: &Program, how: Preparation) -> Arc<Prepared> {
    let Some(id) = prog.id() else {
        return Arc::new(prepare_segment(prog, &how));
    };
    let key = (id, how);
    let hit = {
        let cache = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .and_then(|c| c.get(&key))
            .and_then(Weak::upgrade)
    };
    if let Some(p) = hit {
        return p;
    }
    let p = Arc::new(prepare_segment(prog, &key.1));
    let mut cache = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    cache.retain(|_, w| w.strong_count() > 0);
    cache.insert(key, Arc::downgrade(&p));
    p
}
