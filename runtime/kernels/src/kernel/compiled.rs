//! What compiling a node's share produces, and the choices and counters that go with it.

use std::collections::HashMap;
use std::sync::Arc;

use adcnn_core::net::LayerId;
use adcnn_core::plan::Compression;

use super::prepare::{BlockConvs, ConvKernel, Prepared};
use crate::jit::{DepthwiseSpec, EpilogueSpec, Handle, JitCode, JitError, MaxPoolSpec};

/// Choices made when kernels are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    /// Winograd F(4×4, 3×3) where it pays (see `winograd::applies`); off: every dense
    /// convolution on im2col + GEMM, with 4× less memory for 3×3 weights.
    pub winograd: bool,
    /// Generate the Cranelift functions (epilogues, depthwise convolutions, pools). Off,
    /// every layer takes its host fallback — what a tile shape that was not compiled gets;
    /// the tests use it to check those paths.
    pub generate: bool,
    /// The plan's wire compression: with q8/q4, the epilogue of a segment's last
    /// convolution also quantises its tile output (see [`CompiledKernels::run_tile_wire`]).
    pub wire: Compression,
    /// Depthwise 3×3 stride-1/2 convolutions on the host AVX2+FMA kernel
    /// (`depthwise.rs`) where the CPU has it, instead of generated code; off, they take the
    /// generated kernel (or, with `generate` off too, the host loop).
    pub host_depthwise: bool,
    /// Stride-1/2 convolutions with few input channels on the direct AVX2+FMA kernel
    /// (`direct.rs`) where the CPU has it; off, on im2col + GEMM.
    pub direct: bool,
    /// Inverted-residual blocks (1×1 expansion → 3×3 depthwise on the host kernel → 1×1
    /// projection) computed over bands of output rows (`block.rs`), so the expanded tensor
    /// stays in L2; off, layer by layer.
    pub blocks: bool,
    /// About how many bytes of expanded rows a band of such a block holds (at least one
    /// output row per band).
    pub band_bytes: usize,
    /// Blocks with an expansion and whole groups of 8 hidden channels run
    /// channel-interleaved inside (`block.rs`), with their 1×1 weights also prepared
    /// transposed; off, planar like the layers one by one.
    pub interleave: bool,
}

/// The default [`CompileOptions::band_bytes`]: half of a 1 MiB L2, leaving room for the
/// depthwise band, the weights and the band's output columns (`block_bench`: 512 KiB and
/// 1 MiB measured alike, 128 KiB slower than layer by layer).
pub const BAND_BYTES: usize = 512 << 10;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            winograd: true,
            generate: true,
            wire: Compression::None,
            host_depthwise: true,
            direct: true,
            blocks: true,
            band_bytes: BAND_BYTES,
            interleave: true,
        }
    }
}

/// Milliseconds per kind of work (see [`CompiledKernels::run_tile_profiled`]).
pub type Profile = std::collections::BTreeMap<&'static str, f64>;

/// Counters of what ran how (for reports and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub convs: usize,
    /// Convolutions computed as Winograd F(4×4, 3×3).
    pub winograd: usize,
    pub fused_layers: usize,
    pub epilogues: usize,
    pub max_pools: usize,
    /// Depthwise kernels generated (one per layer and tile shape).
    pub depthwise: usize,
    /// Epilogues that quantise a segment's output for the wire.
    pub quantising_epilogues: usize,
    /// Quantising passes for tile outputs no epilogue quantises.
    pub quantisers: usize,
    /// Depthwise layer and tile shapes that run the host AVX2+FMA kernel instead.
    pub depthwise_host: usize,
    /// Convolutions prepared for the direct kernel (`direct.rs`; on CPUs with
    /// AVX2+FMA, it runs their tiles at least 8 wide).
    pub direct: usize,
    /// Inverted-residual blocks prepared to run over row bands (`block.rs`; on CPUs with
    /// AVX2+FMA).
    pub blocks: usize,
    /// Of those, blocks prepared to run channel-interleaved inside.
    pub interleaved_blocks: usize,
}

/// A plan's compiled kernels. Shared read-only by worker threads.
#[derive(Debug)]
pub struct CompiledKernels {
    /// Every layer of the node's segments → its segment's prepared convolutions.
    pub(super) prepared: HashMap<LayerId, Arc<Prepared>>,
    /// Generated epilogues by (conv, pixels, wire compression).
    pub(super) epilogues: HashMap<(LayerId, usize, Compression), (Handle, EpilogueSpec)>,
    /// Quantising passes by (channels, pixels), for the plan's compression.
    pub(super) quantisers: HashMap<(usize, usize), (Handle, EpilogueSpec)>,
    /// Generated max pools by (layer, shape).
    pub(super) pools: HashMap<(LayerId, MaxPoolSpec), Handle>,
    /// Generated depthwise convolutions by (layer, shape).
    pub(super) depthwise: HashMap<(LayerId, DepthwiseSpec), Handle>,
    /// Whether depthwise shapes the host kernel handles run on it (`CompileOptions`).
    pub(super) host_depthwise: bool,
    /// [`CompileOptions::band_bytes`].
    pub(super) band_bytes: usize,
    pub(super) code: JitCode,
    pub stats: KernelStats,
    /// Wall time of preparation and compilation.
    pub compile_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Jit(#[from] JitError),
    #[error("{0}")]
    Tile(String),
}

impl CompiledKernels {
    /// Convolution `id` as prepared, if it was.
    pub(super) fn conv_kernel(&self, id: LayerId) -> Option<&ConvKernel> {
        self.prepared.get(&id)?.convs.get(&id)
    }

    /// Whether layer `id` is fused into a convolution before it.
    pub(super) fn is_fused(&self, id: LayerId) -> bool {
        self.prepared
            .get(&id)
            .is_some_and(|p| p.fused_into.contains_key(&id))
    }

    /// The inverted-residual block that starts at layer `id`, if one does.
    pub(super) fn block(&self, id: LayerId) -> Option<BlockConvs> {
        self.prepared.get(&id)?.blocks.get(&id).copied()
    }
}
