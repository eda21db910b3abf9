//! The one place where a layer's kernel on a tile is chosen: [`CompiledKernels::choose`]
//! returns a [`Kernel`], and the runner and the convolution match on it.

use adcnn_core::net::LayerId;
use adcnn_core::ops::Op;

use super::compiled::CompiledKernels;
use super::geometry::{depthwise_spec, max_pool_spec, tile_ow};
use crate::depthwise as host_dw;
use crate::direct;
use crate::jit::{DepthwiseSpec, Handle, MaxPoolSpec};

/// How a layer runs on one tile input shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kernel {
    /// Winograd F(4×4, 3×3) + the host GEMM, bias and activation in the output transform
    /// (a generated epilogue when a residual is added).
    Winograd,
    /// The host AVX2+FMA depthwise 3×3 kernel, epilogue fused.
    DepthwiseHost(DepthwiseSpec),
    /// A generated depthwise kernel, epilogue fused.
    DepthwiseGenerated(Handle, DepthwiseSpec),
    /// A depthwise shape nothing was compiled for: the host loop, then the epilogue.
    DepthwiseLoop,
    /// The direct kernel for few-channel stems, epilogue (and a 2×2 pool) fused.
    Direct,
    /// A stem tile too narrow for the direct kernel: the GEMM at full resolution, the
    /// epilogue, then its fused 2×2 pool.
    GemmThenPool,
    /// The host GEMM over an implicit im2col (or the input itself for 1×1), then the
    /// epilogue.
    Gemm,
    /// A generated max pool.
    MaxPoolGenerated(Handle, MaxPoolSpec),
    /// A fully connected layer on the host GEMV.
    Gemv,
    /// The plain operator (`adcnn_core::eval`).
    Plain,
}

/// What ran, as profiles and tests name it: the kernel chosen, without its data, and the kinds of
/// work outside single layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelKind {
    Winograd,
    DepthwiseHost,
    DepthwiseGenerated,
    DepthwiseLoop,
    Direct,
    GemmThenPool,
    Gemm,
    MaxPoolGenerated,
    /// A layer on its plain operator, by its kind (`avgpool`, `add`, …).
    Plain(&'static str),
    /// An inverted-residual block over row bands, planar inside.
    Block,
    /// The same, channel-interleaved inside.
    BlockInterleaved,
    /// A fully connected layer on the host GEMV.
    Gemv,
}

impl KernelKind {
    /// The name in profiles (`adcnn-run bench --profile`).
    pub const fn name(self) -> &'static str {
        match self {
            KernelKind::Winograd => "conv winograd F(4x4,3x3) + gemm (host), epilogue fused or jit",
            KernelKind::DepthwiseHost => "conv depthwise 3x3 (host avx2)",
            KernelKind::DepthwiseGenerated => "conv depthwise (jit)",
            KernelKind::DepthwiseLoop => "conv depthwise (host loop) + epilogue",
            KernelKind::Direct => "conv direct, few input channels (host avx2)",
            KernelKind::GemmThenPool => "conv im2col + gemm (host) + epilogue, then 2x2 max pool",
            KernelKind::Gemm => "conv im2col + gemm (host) + epilogue (jit)",
            KernelKind::MaxPoolGenerated => "maxpool (jit)",
            KernelKind::Plain(kind) => kind,
            KernelKind::Block => {
                "inverted residual block over row bands (host gemm + depthwise avx2)"
            }
            KernelKind::BlockInterleaved => {
                "inverted residual block over row bands, channel-interleaved (host gemm + depthwise avx2)"
            }
            KernelKind::Gemv => "linear (host gemv)",
        }
    }
}

impl Kernel {
    pub(super) fn kind(self, op: &Op) -> KernelKind {
        match self {
            Kernel::Winograd => KernelKind::Winograd,
            Kernel::DepthwiseHost(_) => KernelKind::DepthwiseHost,
            Kernel::DepthwiseGenerated(..) => KernelKind::DepthwiseGenerated,
            Kernel::DepthwiseLoop => KernelKind::DepthwiseLoop,
            Kernel::Direct => KernelKind::Direct,
            Kernel::GemmThenPool => KernelKind::GemmThenPool,
            Kernel::Gemm => KernelKind::Gemm,
            Kernel::MaxPoolGenerated(..) => KernelKind::MaxPoolGenerated,
            Kernel::Gemv => KernelKind::Gemv,
            Kernel::Plain => KernelKind::Plain(op.kind()),
        }
    }
}

impl CompiledKernels {
    /// The kernel layer `i` runs on a tile: `op` is the layer's operator on the tile (its
    /// padding adjusted to the tile's place), `(c, h, w)` the tile's input. Only what was
    /// prepared and compiled is used; a shape that was not compiled gets a host path.
    pub(super) fn choose(&self, i: LayerId, op: &Op, (cin, h, w): (usize, usize, usize)) -> Kernel {
        match (self.conv_kernel(i), op) {
            (Some(k), Op::Conv2d(c)) => {
                if k.winograd.is_some() {
                    return Kernel::Winograd;
                }
                let spec = depthwise_spec(c, cin, h, w, k);
                if let Some(s) = spec.filter(|s| self.host_depthwise && host_dw::applies(s)) {
                    return Kernel::DepthwiseHost(s);
                }
                if let Some(s) = spec
                    && let Some(f) = self.depthwise.get(&(i, s))
                {
                    return Kernel::DepthwiseGenerated(*f, s);
                }
                if k.is_depthwise() {
                    return Kernel::DepthwiseLoop;
                }
                if k.direct.is_some() && tile_ow(c, w).is_some_and(|ow| direct::applies(c, cin, ow))
                {
                    return Kernel::Direct;
                }
                if k.pool2 {
                    return Kernel::GemmThenPool;
                }
                Kernel::Gemm
            }
            (None, Op::MaxPool(_)) => max_pool_spec(op, cin, h, w)
                .and_then(|s| Some(Kernel::MaxPoolGenerated(*self.pools.get(&(i, s))?, s)))
                .unwrap_or(Kernel::Plain),
            (None, Op::Linear { .. }) => Kernel::Gemv,
            _ => Kernel::Plain,
        }
    }
}
