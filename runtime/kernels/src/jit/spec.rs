//! The specifications of generated functions: what each kernel is specialised on, and
//! the exact keys (Eq, Hash) under which a plan's kernels are shared.

use adcnn_core::plan::Compression;

use crate::act::Act;

/// `y[c, p] = act(y[c, p] + bias[c] (+ residual[c, p]))` over `channels × pixels`, then,
/// with `wire` q8/q4, each channel quantised for the wire as [`crate::wire`] defines while
/// it is still in L1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpilogueSpec {
    pub channels: usize,
    pub pixels: usize,
    /// Add `bias[c]`; without bias, activation and residual, y is only read (a quantising
    /// pass over a layer whose output is final already).
    pub bias: bool,
    pub act: Act,
    pub residual: bool,
    pub wire: Compression,
}

impl EpilogueSpec {
    /// Whether the epilogue changes y (otherwise it only quantises).
    pub(super) fn writes(&self) -> bool {
        self.bias || self.residual || self.act != Act::None
    }

    /// Parameters of the generated function: `(y, bias, residual)`, plus `(codes, stats)`
    /// when it quantises.
    pub(super) fn params(&self) -> usize {
        if self.wire == Compression::None { 3 } else { 5 }
    }
}

/// Max pooling over `[c, h, w]` with a `k` window and stride `s`, no padding, every window
/// inside the input: output `[c, oh, ow]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MaxPoolSpec {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Depthwise convolution over `[channels, h, w]` (weights `[channels, kh·kw]`, one filter
/// per channel), stride `sh × sw`, dilation `dh × dw`, zero padding top/left/bottom/right,
/// output `[channels, oh, ow]` = `act(conv + bias (+ residual))`.
#[derive(Clone, Copy, Debug)]
pub struct DepthwiseSpec {
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Top, left, bottom, right.
    pub pad: [usize; 4],
    pub oh: usize,
    pub ow: usize,
    pub act: Act,
    pub residual: bool,
}

impl DepthwiseSpec {
    /// The fields as integers (the activation's parameters by their bits), so specs are
    /// exact keys.
    fn key(&self) -> ([usize; 15], bool, u8, [u32; 2]) {
        let (tag, params) = match self.act {
            Act::None => (0, [0, 0]),
            Act::Relu => (1, [0, 0]),
            Act::Clip { min, max } => (2, [min.to_bits(), max.to_bits()]),
            Act::Leaky { slope } => (3, [slope.to_bits(), 0]),
        };
        let [pt, pl, pb, pr] = self.pad;
        (
            [
                self.channels,
                self.h,
                self.w,
                self.kh,
                self.kw,
                self.sh,
                self.sw,
                self.dh,
                self.dw,
                pt,
                pl,
                pb,
                pr,
                self.oh,
                self.ow,
            ],
            self.residual,
            tag,
            params,
        )
    }

    /// Whether the generated code handles it: the output size follows from the rest, and
    /// every byte offset within a plane, the scratch or the weights fits an `i32`
    /// immediate.
    pub fn is_compilable(&self) -> bool {
        let out = |len: usize, pb: usize, pe: usize, k: usize, s: usize, d: usize| {
            let span = d * k.saturating_sub(1) + 1;
            (k > 0 && s > 0 && d > 0 && len + pb + pe >= span)
                .then(|| (len + pb + pe - span) / s + 1)
        };
        let [pt, pl, pb, pr] = self.pad;
        let small = |n: usize| n.checked_mul(4).is_some_and(|b| b < i32::MAX as usize / 2);
        out(self.h, pt, pb, self.kh, self.sh, self.dh) == Some(self.oh)
            && out(self.w, pl, pr, self.kw, self.sw, self.dw) == Some(self.ow)
            && small(self.h * self.w)
            && small(self.oh * self.ow)
            && small(self.scratch_len())
            && small(self.kh * self.kw)
    }

    /// Padded rows.
    fn rows(&self) -> usize {
        self.h + self.pad[0] + self.pad[2]
    }

    /// Floats per column phase of a padded row: the padded width over the stride.
    pub(super) fn phase_w(&self) -> usize {
        (self.w + self.pad[1] + self.pad[3]).div_ceil(self.sw)
    }

    /// Floats of scratch the kernel needs: one padded plane, `[rows, sw, phase_w]`.
    pub fn scratch_len(&self) -> usize {
        self.rows() * self.sw * self.phase_w()
    }
}

impl PartialEq for DepthwiseSpec {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for DepthwiseSpec {}

impl std::hash::Hash for DepthwiseSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}
