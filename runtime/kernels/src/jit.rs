//! Cranelift code generation: one [`JitSession`] owns the `JITModule` while a plan's kernels
//! are compiled (declare → define → finalize); the result, [`JitCode`], holds only finished
//! code and function pointers, which worker threads share read-only.
//!
//! What is generated (everything specialised on its constant shapes and parameters):
//! - conv/linear **epilogues**: per output channel, bias (batch norm already folded into the
//!   weights and bias at compile time), optional residual add, and relu / clip / leaky relu,
//!   in f32x4 with a scalar remainder — run on the GEMM's output while it is in cache;
//! - **max pooling** (padding is a −∞ border the caller copies in): the whole loop nest with
//!   constant trip counts;
//! - **depthwise convolutions** (one input and one output channel per group): per channel,
//!   the plane is copied into a zeroed scratch buffer with its padding, deinterleaved into
//!   `stride` column phases so every tap reads contiguous columns, then each output row is
//!   f32x4 FMAs over 4-column groups (the 3×3 window unrolled, taps at constant offsets),
//!   with bias (batch norm folded), residual add and activation fused before the one store.
//!
//! The inner products of dense convolutions run in the host micro-kernel (`gemm.rs`):
//! Cranelift 0.135 has no 256-bit vectors on x86-64, and its f32x4 FMA kernels reach about
//! a third of it. Depthwise 3×3 convolutions with stride 1 or 2 — every depthwise layer of
//! MobileNetV2 — run on a host AVX2+FMA kernel (`depthwise.rs`) where the CPU has it:
//! measured per layer (`compiler/examples/depthwise_bench.rs`), the generated kernel takes
//! 0.80–1.05 ns per output at stride 1 and the host kernel, with 8-lane vectors and two
//! output rows per pass, 0.48–0.95; at stride 2, bound by the deinterleaving copy of four
//! inputs per output, both take 1.2–1.7. The generated kernel stays for every other shape
//! (kernel sizes, dilations, strides) and for CPUs without AVX2.
#![allow(
    unsafe_code,
    reason = "calling finished JIT code through function pointers, and sharing its \
              immutable code memory between threads"
)]

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, ConstantData, Endianness, Function, InstBuilder, MemFlagsData, Signature,
    Type, UserFuncName, Value, types,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

use adcnn_core::plan::Compression;

pub use crate::act::Act;
use crate::wire;

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
    fn writes(&self) -> bool {
        self.bias || self.residual || self.act != Act::None
    }

    /// Parameters of the generated function: `(y, bias, residual)`, plus `(codes, stats)`
    /// when it quantises.
    fn params(&self) -> usize {
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
    fn phase_w(&self) -> usize {
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

#[derive(Debug, thiserror::Error)]
#[error("jit: {0}")]
pub struct JitError(pub String);

fn err(e: impl std::fmt::Display) -> JitError {
    JitError(e.to_string())
}

/// The host ISA with `opt_level=speed`, detected by cranelift-native.
pub fn host_isa() -> Result<OwnedTargetIsa, JitError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags.set("use_colocated_libcalls", "false").map_err(err)?;
    flags.set("is_pic", "false").map_err(err)?;
    let isa = cranelift_native::builder().map_err(err)?;
    isa.finish(settings::Flags::new(flags)).map_err(err)
}

/// `extern "C" fn(y, bias, residual)`.
pub type EpilogueFn = unsafe extern "C" fn(*mut f32, *const f32, *const f32);
/// `extern "C" fn(y, bias, residual, codes, stats)`: an epilogue that quantises.
pub type QuantEpilogueFn =
    unsafe extern "C" fn(*mut f32, *const f32, *const f32, *mut u8, *mut f32);
/// `extern "C" fn(x, y)`.
pub type MaxPoolFn = unsafe extern "C" fn(*const f32, *mut f32);
/// `extern "C" fn(x, weights, bias, residual, y, scratch)`.
pub type DepthwiseFn =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *const f32, *mut f32, *mut f32);

/// The compile session: the one owner of the `JITModule` until [`JitSession::finish`].
pub struct JitSession {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    cfg: TargetFrontendConfig,
    /// Whether the ISA has fused multiply-add (otherwise `fma` would become libcalls, so
    /// generated code multiplies and adds).
    fma: bool,
    count: usize,
}

impl std::fmt::Debug for JitSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitSession")
            .field("functions", &self.count)
            .finish_non_exhaustive()
    }
}

/// A function declared and defined in a session; its pointer exists after `finish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(FuncId);

impl JitSession {
    pub fn new() -> Result<JitSession, JitError> {
        let isa = host_isa()?;
        let cfg = isa.frontend_config();
        // x86-64 names the feature `has_fma`; other Cranelift backends always have it.
        let fma = isa
            .isa_flags()
            .iter()
            .find(|f| f.name == "has_fma")
            .is_none_or(|f| f.as_bool().unwrap_or(false));
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol("adcnn_sgemm", crate::gemm::adcnn_sgemm as *const u8);
        let module = JITModule::new(builder);
        Ok(JitSession {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            cfg,
            fma,
            count: 0,
        })
    }

    fn define(
        &mut self,
        n_params: usize,
        f: impl FnOnce(&mut Function, &mut FunctionBuilderContext, TargetFrontendConfig),
    ) -> Result<Handle, JitError> {
        let sig = ptr_sig(self.cfg, n_params);
        let name = format!("k{}", self.count);
        self.count += 1;
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(err)?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        f(&mut self.ctx.func, &mut self.fctx, self.cfg);
        self.module
            .define_function(id, &mut self.ctx)
            .map_err(err)?;
        self.module.clear_context(&mut self.ctx);
        Ok(Handle(id))
    }

    pub fn epilogue(&mut self, spec: &EpilogueSpec) -> Result<Handle, JitError> {
        self.define(spec.params(), |func, fctx, cfg| {
            build_epilogue(func, fctx, cfg, spec);
        })
    }

    pub fn max_pool(&mut self, spec: &MaxPoolSpec) -> Result<Handle, JitError> {
        self.define(2, |func, fctx, cfg| build_max_pool(func, fctx, cfg, spec))
    }

    /// A depthwise convolution; `spec` must pass [`DepthwiseSpec::is_compilable`].
    pub fn depthwise(&mut self, spec: &DepthwiseSpec) -> Result<Handle, JitError> {
        if !spec.is_compilable() {
            return Err(JitError(format!("depthwise spec not compilable: {spec:?}")));
        }
        let fma = self.fma;
        self.define(6, |func, fctx, cfg| {
            build_depthwise(func, fctx, cfg, spec, fma);
        })
    }

    /// Finalizes every function defined so far.
    pub fn finish(mut self) -> Result<JitCode, JitError> {
        self.module.finalize_definitions().map_err(err)?;
        Ok(JitCode {
            module: Some(self.module),
        })
    }
}

/// Finished code. Immutable after `finalize_definitions`; shared by worker threads. Its
/// code memory is freed when it drops (a plan reloaded many times does not leak).
pub struct JitCode {
    /// `None` only while dropping.
    module: Option<JITModule>,
}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: function pointers into this module are only ever obtained inside
            // `JitCode`'s own methods and called there; none outlives `&self`, so no code of
            // the module can run once it is being dropped.
            unsafe { m.free_memory() };
        }
    }
}

impl JitCode {
    fn function(&self, h: Handle) -> *const u8 {
        self.module
            .as_ref()
            .map_or(std::ptr::null(), |m| m.get_finalized_function(h.0))
    }
}

impl std::fmt::Debug for JitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JitCode")
    }
}

// SAFETY: after `finalize_definitions` nothing mutates the module; threads only read
// function pointers into its (read-only, executable) code memory, which lives as long as
// this value.
unsafe impl Send for JitCode {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for JitCode {}

impl JitCode {
    /// Runs an epilogue. Panics if a slice is shorter than its spec says.
    pub fn run_epilogue(
        &self,
        h: Handle,
        spec: &EpilogueSpec,
        y: &mut [f32],
        bias: &[f32],
        residual: Option<&[f32]>,
    ) {
        let n = spec.channels * spec.pixels;
        assert!(y.len() >= n && (!spec.bias || bias.len() >= spec.channels));
        assert_eq!(residual.is_some(), spec.residual);
        assert_eq!(
            spec.wire,
            Compression::None,
            "a quantising epilogue needs run_quantising"
        );
        let r = residual_ptr(residual, n);
        let p = self.function(h);
        assert!(!p.is_null());
        // SAFETY: `p` was compiled from `spec` with the EpilogueFn signature; it reads
        // `channels` biases and `channels × pixels` residuals and writes as many values of y,
        // all checked above.
        unsafe {
            let f: EpilogueFn = std::mem::transmute::<*const u8, EpilogueFn>(p);
            f(y.as_mut_ptr(), bias.as_ptr(), r);
        }
    }

    /// Runs a quantising epilogue: y as [`Self::run_epilogue`] leaves it, its codes into
    /// `codes` (`channels × wire::channel_code_bytes`) and per channel `[lo, step, Σ err²,
    /// Σ v²]` into `stats`. Panics if a slice is shorter than its spec says.
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    pub fn run_quantising(
        &self,
        h: Handle,
        spec: &EpilogueSpec,
        y: &mut [f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        codes: &mut [u8],
        stats: &mut [[f32; 4]],
    ) {
        let n = spec.channels * spec.pixels;
        assert!(y.len() >= n && (!spec.bias || bias.len() >= spec.channels));
        assert_eq!(residual.is_some(), spec.residual);
        assert_ne!(spec.wire, Compression::None);
        assert!(codes.len() >= spec.channels * wire::channel_code_bytes(spec.wire, spec.pixels));
        assert!(stats.len() >= spec.channels);
        let r = residual_ptr(residual, n);
        let b = if spec.bias {
            bias.as_ptr()
        } else {
            std::ptr::null()
        };
        let p = self.function(h);
        assert!(!p.is_null());
        // SAFETY: compiled from `spec` with the QuantEpilogueFn signature; it reads
        // `channels` biases (only with `bias`) and `channels × pixels` residuals, reads and
        // writes as many values of y, writes `channels × channel_code_bytes` codes and
        // `channels` stats, all checked above.
        unsafe {
            let f: QuantEpilogueFn = std::mem::transmute::<*const u8, QuantEpilogueFn>(p);
            f(
                y.as_mut_ptr(),
                b,
                r,
                codes.as_mut_ptr(),
                stats.as_mut_ptr().cast::<f32>(),
            );
        }
    }

    /// Runs a max pool. Panics if a slice is shorter than its spec says.
    pub fn run_max_pool(&self, h: Handle, spec: &MaxPoolSpec, x: &[f32], y: &mut [f32]) {
        assert!(x.len() >= spec.c * spec.h * spec.w && y.len() >= spec.c * spec.oh * spec.ow);
        let p = self.function(h);
        assert!(!p.is_null());
        // SAFETY: compiled from `spec` with the MaxPoolFn signature; reads only inside
        // `[c, h, w]` (every window is inside the input) and writes `[c, oh, ow]`.
        unsafe {
            let f: MaxPoolFn = std::mem::transmute::<*const u8, MaxPoolFn>(p);
            f(x.as_ptr(), y.as_mut_ptr());
        }
    }
}

impl JitCode {
    /// Runs a depthwise convolution (`scratch`'s contents are overwritten). Panics if a slice
    /// is shorter than its spec says.
    #[allow(clippy::too_many_arguments, reason = "the kernel's operands")]
    pub fn run_depthwise(
        &self,
        h: Handle,
        spec: &DepthwiseSpec,
        x: &[f32],
        weights: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (c, out) = (spec.channels, spec.channels * spec.oh * spec.ow);
        assert!(spec.is_compilable());
        assert!(x.len() >= c * spec.h * spec.w && weights.len() >= c * spec.kh * spec.kw);
        assert!(bias.len() >= c && y.len() >= out && scratch.len() >= spec.scratch_len());
        assert_eq!(residual.is_some(), spec.residual);
        let r = residual_ptr(residual, out);
        let p = self.function(h);
        assert!(!p.is_null());
        // SAFETY: compiled from `spec` (compilable, checked above) with the DepthwiseFn
        // signature. It reads `[c, h, w]` of x, `c·kh·kw` weights, `c` biases and
        // `[c, oh, ow]` residuals, writes `[c, oh, ow]` of y and `scratch_len` floats of
        // scratch, whose padded plane holds every position a window reads (output sizes
        // follow from the padded sizes); all lengths are checked above.
        unsafe {
            let f: DepthwiseFn = std::mem::transmute::<*const u8, DepthwiseFn>(p);
            f(
                x.as_ptr(),
                weights.as_ptr(),
                bias.as_ptr(),
                r,
                y.as_mut_ptr(),
                scratch.as_mut_ptr(),
            );
        }
    }
}

/// The residual operand as generated code takes it: null when absent, else checked to hold
/// `len` floats.
fn residual_ptr(residual: Option<&[f32]>, len: usize) -> *const f32 {
    match residual {
        Some(r) => {
            assert!(r.len() >= len, "residual too short");
            r.as_ptr()
        }
        None => std::ptr::null(),
    }
}

fn ptr_sig(cfg: TargetFrontendConfig, n: usize) -> Signature {
    let mut sig = Signature::new(cfg.default_call_conv);
    for _ in 0..n {
        sig.params.push(AbiParam::new(cfg.pointer_type()));
    }
    sig
}

fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// A counted loop `for i in 0..n` (n > 0 constant): calls `body(b, i)`, returns after the loop.
fn counted_loop(
    b: &mut FunctionBuilder,
    ty: Type,
    n: i64,
    body: impl FnOnce(&mut FunctionBuilder, Value),
) {
    let header = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, ty);
    let zero = b.ins().iconst(ty, 0);
    b.ins().jump(header, &[zero.into()]);
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    body(b, i);
    let next = b.ins().iadd_imm_s(i, 1);
    let more = b.ins().icmp_imm_s(IntCC::SignedLessThan, next, n);
    b.ins().brif(more, header, &[next.into()], exit, &[]);
    b.switch_to_block(exit);
}

/// A counted loop `for i in 0..n` (n > 0 constant) carrying `init` through `body(b, i,
/// carried) -> next`; returns the values after the last iteration.
fn counted_loop_carry(
    b: &mut FunctionBuilder,
    ty: Type,
    n: i64,
    init: &[Value],
    body: impl FnOnce(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let header = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, ty);
    for v in init {
        let t = b.func.dfg.value_type(*v);
        b.append_block_param(header, t);
        b.append_block_param(exit, t);
    }
    let zero = b.ins().iconst(ty, 0);
    let args: Vec<BlockArg> = std::iter::once(zero)
        .chain(init.iter().copied())
        .map(BlockArg::from)
        .collect();
    b.ins().jump(header, &args);
    b.switch_to_block(header);
    let params = b.block_params(header).to_vec();
    let out = body(b, params[0], &params[1..]);
    let next = b.ins().iadd_imm_s(params[0], 1);
    let more = b.ins().icmp_imm_s(IntCC::SignedLessThan, next, n);
    let back: Vec<BlockArg> = std::iter::once(next)
        .chain(out.iter().copied())
        .map(BlockArg::from)
        .collect();
    let done: Vec<BlockArg> = out.iter().copied().map(BlockArg::from).collect();
    b.ins().brif(more, header, &back, exit, &done);
    b.switch_to_block(exit);
    b.block_params(exit).to_vec()
}

/// The four lanes of `v` folded with `f`, lane 0 first.
fn fold_lanes(
    b: &mut FunctionBuilder,
    v: Value,
    f: impl Fn(&mut FunctionBuilder, Value, Value) -> Value,
) -> Value {
    let mut acc = b.ins().extractlane(v, 0);
    for lane in 1..4 {
        let x = b.ins().extractlane(v, lane);
        acc = f(b, x, acc);
    }
    acc
}

fn build_epilogue(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    cfg: TargetFrontendConfig,
    spec: &EpilogueSpec,
) {
    let ptr = cfg.pointer_type();
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (y, bias, res) = (params[0], params[1], params[2]);
    let (c, p) = (spec.channels as i64, spec.pixels as i64);
    let vecs = p / 4;
    if c > 0 && p > 0 {
        counted_loop(&mut b, ptr, c, |b, ch| {
            let (bs, bv) = if spec.bias {
                let boff = b.ins().imul_imm_s(ch, 4);
                let baddr = b.ins().iadd(bias, boff);
                let bs = b.ins().load(types::F32, mem(), baddr, 0);
                let bv = b.ins().splat(types::F32X4, bs);
                (Some(bs), Some(bv))
            } else {
                (None, None)
            };
            let roff = b.ins().imul_imm_s(ch, 4 * p);
            let yrow = b.ins().iadd(y, roff);
            let rrow = b.ins().iadd(res, roff);
            // One value or vector of the epilogue, stored back when it changed; returned.
            let one = |b: &mut FunctionBuilder, ty: Type, off: Value, bb: Option<Value>| {
                let ya = b.ins().iadd(yrow, off);
                let mut v = b.ins().load(ty, mem(), ya, 0);
                if let Some(bb) = bb {
                    v = b.ins().fadd(v, bb);
                }
                if spec.residual {
                    let ra = b.ins().iadd(rrow, off);
                    let r = b.ins().load(ty, mem(), ra, 0);
                    v = b.ins().fadd(v, r);
                }
                let v = apply_act(b, ty, v, spec.act);
                if spec.writes() {
                    b.ins().store(mem(), v, ya, 0);
                }
                v
            };
            let Some(levels) = wire::levels(spec.wire) else {
                if vecs > 0 {
                    counted_loop(b, ptr, vecs, |b, i| {
                        let off = b.ins().imul_imm_s(i, 16);
                        one(b, types::F32X4, off, bv);
                    });
                }
                for i in vecs * 4..p {
                    let off = b.ins().iconst(ptr, i * 4);
                    one(b, types::F32, off, bs);
                }
                return;
            };
            // Pass 1: the epilogue, keeping the channel's minimum and maximum.
            let inf = b.ins().f32const(f32::INFINITY);
            let ninf = b.ins().f32const(f32::NEG_INFINITY);
            let (mut lo, mut hi) = (inf, ninf);
            if vecs > 0 {
                let init = [
                    b.ins().splat(types::F32X4, inf),
                    b.ins().splat(types::F32X4, ninf),
                ];
                let acc = counted_loop_carry(b, ptr, vecs, &init, |b, i, acc| {
                    let off = b.ins().imul_imm_s(i, 16);
                    let v = one(b, types::F32X4, off, bv);
                    vec![pmin(b, v, acc[0]), pmax(b, v, acc[1])]
                });
                lo = fold_lanes(b, acc[0], pmin);
                hi = fold_lanes(b, acc[1], pmax);
            }
            for i in vecs * 4..p {
                let off = b.ins().iconst(ptr, i * 4);
                let v = one(b, types::F32, off, bs);
                lo = pmin(b, v, lo);
                hi = pmax(b, v, hi);
            }
            // step = (hi − lo)/L and inv = L/(hi − lo), both 0 for a constant channel.
            let l = b.ins().f32const(levels as f32);
            let zero = b.ins().f32const(0.0);
            let diff = b.ins().fsub(hi, lo);
            let spread = b.ins().fcmp(FloatCC::GreaterThan, hi, lo);
            let s = b.ins().fdiv(diff, l);
            let step = b.ins().select(spread, s, zero);
            let s = b.ins().fdiv(l, diff);
            let inv = b.ins().select(spread, s, zero);
            // Pass 2 (the channel is in L1): codes, and the error they make.
            let (codes, stats) = (params[3], params[4]);
            let row_bytes = wire::channel_code_bytes(spec.wire, spec.pixels) as i64;
            let coff = b.ins().imul_imm_s(ch, row_bytes);
            let crow = b.ins().iadd(codes, coff);
            // (rounded code as a float, v − decoded) of one value or vector.
            let quant = |b: &mut FunctionBuilder, v: Value, lo: Value, inv: Value, step: Value| {
                let d = b.ins().fsub(v, lo);
                let t = b.ins().fmul(d, inv);
                let r = b.ins().nearest(t);
                let m = b.ins().fmul(r, step);
                let back = b.ins().fadd(lo, m);
                let e = b.ins().fsub(v, back);
                (r, e)
            };
            let sq_add = |b: &mut FunctionBuilder, x: Value, acc: Value| {
                let m = b.ins().fmul(x, x);
                b.ins().fadd(acc, m)
            };
            let blocks = p / 16;
            let (mut err, mut sq) = (zero, zero);
            if blocks > 0 {
                let lov = b.ins().splat(types::F32X4, lo);
                let invv = b.ins().splat(types::F32X4, inv);
                let stepv = b.ins().splat(types::F32X4, step);
                let z = b.ins().splat(types::F32X4, zero);
                let even = b.func.dfg.immediates.push(byte_mask(0));
                let odd = b.func.dfg.immediates.push(byte_mask(1));
                let acc = counted_loop_carry(b, ptr, blocks, &[z, z], |b, i, acc| {
                    let off = b.ins().imul_imm_s(i, 64);
                    let ya = b.ins().iadd(yrow, off);
                    let (mut err, mut sq) = (acc[0], acc[1]);
                    let mut q = Vec::with_capacity(4);
                    for k in 0..4 {
                        let v = b.ins().load(types::F32X4, mem(), ya, 16 * k);
                        let (r, e) = quant(b, v, lov, invv, stepv);
                        err = sq_add(b, e, err);
                        sq = sq_add(b, v, sq);
                        q.push(b.ins().fcvt_to_sint_sat(types::I32X4, r));
                    }
                    // Saturating narrows: i32 → i16 (signed) → u8.
                    let lo16 = b.ins().snarrow(q[0], q[1]);
                    let hi16 = b.ins().snarrow(q[2], q[3]);
                    let mut bytes = b.ins().unarrow(lo16, hi16);
                    if levels < 255 {
                        let lim = b.ins().iconst(types::I8, i64::from(levels));
                        let lim = b.ins().splat(types::I8X16, lim);
                        bytes = b.ins().umin(bytes, lim);
                    }
                    if spec.wire == Compression::Q4 {
                        // Byte j = code 2j | code 2j+1 << 4: eight bytes.
                        let lo4 = b.ins().shuffle(bytes, bytes, even);
                        let hi4 = b.ins().shuffle(bytes, bytes, odd);
                        let hi4 = b.ins().ishl_imm_u(hi4, 4);
                        let packed = b.ins().bor(lo4, hi4);
                        let little = MemFlagsData::new().with_endianness(Endianness::Little);
                        let wide = b.ins().bitcast(types::I64X2, little, packed);
                        let first = b.ins().extractlane(wide, 0);
                        let off = b.ins().imul_imm_s(i, 8);
                        let ca = b.ins().iadd(crow, off);
                        b.ins().store(mem(), first, ca, 0);
                    } else {
                        let off = b.ins().imul_imm_s(i, 16);
                        let ca = b.ins().iadd(crow, off);
                        b.ins().store(mem(), bytes, ca, 0);
                    }
                    vec![err, sq]
                });
                err = fold_lanes(b, acc[0], |b, x, a| b.ins().fadd(a, x));
                sq = fold_lanes(b, acc[1], |b, x, a| b.ins().fadd(a, x));
            }
            let mut pending = None;
            for j in blocks * 16..p {
                let v = b.ins().load(types::F32, mem(), yrow, off32(4 * j));
                let (r, e) = quant(b, v, lo, inv, step);
                err = sq_add(b, e, err);
                sq = sq_add(b, v, sq);
                let qi = b.ins().fcvt_to_sint_sat(types::I32, r);
                let z = b.ins().iconst(types::I32, 0);
                let qi = b.ins().smax(qi, z);
                let lim = b.ins().iconst(types::I32, i64::from(levels));
                let qi = b.ins().umin(qi, lim);
                match (spec.wire, pending.take()) {
                    (Compression::Q4, None) if j + 1 < p => pending = Some(qi),
                    (Compression::Q4, low) => {
                        let byte = match low {
                            Some(low) => {
                                let high = b.ins().ishl_imm_u(qi, 4);
                                b.ins().bor(low, high)
                            }
                            None => qi,
                        };
                        b.ins().istore8(mem(), byte, crow, off32(j / 2));
                    }
                    _ => {
                        b.ins().istore8(mem(), qi, crow, off32(j));
                    }
                }
            }
            let soff = b.ins().imul_imm_s(ch, 16);
            let sa = b.ins().iadd(stats, soff);
            for (k, x) in [lo, step, err, sq].into_iter().enumerate() {
                b.ins().store(mem(), x, sa, 4 * k as i32);
            }
        });
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(cfg);
}

/// The `shuffle` immediate taking bytes `first`, `first + 2`, … (eight of them, twice).
fn byte_mask(first: u8) -> ConstantData {
    let bytes: Vec<u8> = (0..16).map(|k| first + 2 * (k % 8)).collect();
    ConstantData::from(bytes)
}

fn build_max_pool(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    cfg: TargetFrontendConfig,
    s: &MaxPoolSpec,
) {
    let ptr = cfg.pointer_type();
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (x, y) = {
        let p = b.block_params(entry);
        (p[0], p[1])
    };
    let (h, w) = (s.h as i64, s.w as i64);
    let (oh, ow) = (s.oh as i64, s.ow as i64);
    if s.c > 0 && oh > 0 && ow > 0 {
        counted_loop(&mut b, ptr, s.c as i64, |b, ch| {
            let xoff = b.ins().imul_imm_s(ch, 4 * h * w);
            let xplane = b.ins().iadd(x, xoff);
            let yoff = b.ins().imul_imm_s(ch, 4 * oh * ow);
            let yplane = b.ins().iadd(y, yoff);
            counted_loop(b, ptr, oh, |b, oy| {
                let xr = b.ins().imul_imm_s(oy, 4 * w * s.sh as i64);
                let xrow = b.ins().iadd(xplane, xr);
                let yr = b.ins().imul_imm_s(oy, 4 * ow);
                let yrow = b.ins().iadd(yplane, yr);
                counted_loop(b, ptr, ow, |b, ox| {
                    let xc = b.ins().imul_imm_s(ox, 4 * s.sw as i64);
                    let base = b.ins().iadd(xrow, xc);
                    // The window is unrolled: its loads have constant offsets.
                    let mut m = b.ins().load(types::F32, mem(), base, 0);
                    for ky in 0..s.kh as i64 {
                        for kx in 0..s.kw as i64 {
                            if ky == 0 && kx == 0 {
                                continue;
                            }
                            let off = i32::try_from(4 * (ky * w + kx)).unwrap_or(i32::MAX);
                            let v = b.ins().load(types::F32, mem(), base, off);
                            m = b.ins().fmax(m, v);
                        }
                    }
                    let yc = b.ins().imul_imm_s(ox, 4);
                    let ya = b.ins().iadd(yrow, yc);
                    b.ins().store(mem(), m, ya, 0);
                });
            });
        });
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(cfg);
}

/// `x > y ? x : y` with one `maxps`/`maxss` (NaN in x gives y, like Rust's `f32::max`
/// against a number); `fmax` lowers to a NaN-propagating sequence of eight instructions.
fn pmax(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let c = b.ins().fcmp(FloatCC::LessThan, y, x);
    select_lanes(b, c, x, y)
}

/// `x < y ? x : y` with one `minps`/`minss`.
fn pmin(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let c = b.ins().fcmp(FloatCC::LessThan, x, y);
    select_lanes(b, c, x, y)
}

fn select_lanes(b: &mut FunctionBuilder, c: Value, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    if ty.is_vector() {
        let mask = b.ins().bitcast(ty, MemFlagsData::new(), c);
        b.ins().bitselect(mask, x, y)
    } else {
        b.ins().select(c, x, y)
    }
}

/// The activation, with the one-instruction min/max (NaN maps like the reference's
/// `f32::max`/`min` chain).
fn apply_act(b: &mut FunctionBuilder, ty: Type, v: Value, act: Act) -> Value {
    let splat = |b: &mut FunctionBuilder, x: f32| {
        let s = b.ins().f32const(x);
        if ty == types::F32 {
            s
        } else {
            b.ins().splat(ty, s)
        }
    };
    match act {
        Act::None => v,
        Act::Relu => {
            let z = splat(b, 0.0);
            pmax(b, v, z)
        }
        Act::Clip { min, max } => {
            let lo = splat(b, min);
            let hi = splat(b, max);
            let t = pmax(b, v, lo);
            pmin(b, t, hi)
        }
        Act::Leaky { slope } => {
            // For 0 ≤ slope ≤ 1, `v > 0 ? v : v·slope` is max(v, v·slope); above 1 it is the
            // min. Negative slopes are not fused (see `kernel::act_of`).
            let s = splat(b, slope);
            let scaled = b.ins().fmul(v, s);
            if slope <= 1.0 {
                pmax(b, v, scaled)
            } else {
                pmin(b, v, scaled)
            }
        }
    }
}

/// `a·w + acc`, fused where the ISA has FMA.
fn mul_add(b: &mut FunctionBuilder, fma: bool, a: Value, w: Value, acc: Value) -> Value {
    if fma {
        b.ins().fma(a, w, acc)
    } else {
        let m = b.ins().fmul(a, w);
        b.ins().fadd(m, acc)
    }
}

/// A byte offset as a load/store immediate ([`DepthwiseSpec::is_compilable`] bounds them).
fn off32(v: i64) -> i32 {
    i32::try_from(v).expect("offsets bounded by DepthwiseSpec::is_compilable")
}

/// Stores `n` zero floats at `base`.
fn fill_zero(b: &mut FunctionBuilder, ptr: Type, base: Value, n: i64) {
    let z = b.ins().f32const(0.0);
    let zv = b.ins().splat(types::F32X4, z);
    if n / 4 > 0 {
        counted_loop(b, ptr, n / 4, |b, i| {
            let o = b.ins().imul_imm_s(i, 16);
            let a = b.ins().iadd(base, o);
            b.ins().store(mem(), zv, a, 0);
        });
    }
    for i in n / 4 * 4..n {
        b.ins().store(mem(), z, base, off32(4 * i));
    }
}

/// Copies `n` floats from `src` to `dst + doff` bytes.
fn copy_floats(b: &mut FunctionBuilder, ptr: Type, src: Value, dst: Value, doff: i64, n: i64) {
    if n / 4 > 0 {
        counted_loop(b, ptr, n / 4, |b, i| {
            let o = b.ins().imul_imm_s(i, 16);
            let s = b.ins().iadd(src, o);
            let d = b.ins().iadd(dst, o);
            let v = b.ins().load(types::F32X4, mem(), s, 0);
            b.ins().store(mem(), v, d, off32(doff));
        });
    }
    for i in n / 4 * 4..n {
        let v = b.ins().load(types::F32, mem(), src, off32(4 * i));
        b.ins().store(mem(), v, dst, off32(doff + 4 * i));
    }
}

/// The `shuffle` immediate picking f32 lanes (0–3 from the first operand, 4–7 from the
/// second) as bytes.
fn lanes_mask(lanes: [u8; 4]) -> ConstantData {
    let bytes: Vec<u8> = lanes
        .iter()
        .flat_map(|&l| (0..4).map(move |k| 4 * l + k))
        .collect();
    ConstantData::from(bytes)
}

/// Output vectors per iteration of a depthwise row loop: four independent FMA chains.
const DW_UNROLL: i64 = 4;

fn build_depthwise(
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    cfg: TargetFrontendConfig,
    s: &DepthwiseSpec,
    fma: bool,
) {
    let ptr = cfg.pointer_type();
    let mut b = FunctionBuilder::new(func, fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let [x, wts, bias, res, y, scratch] = {
        let p = b.block_params(entry);
        [p[0], p[1], p[2], p[3], p[4], p[5]]
    };
    let i = |v: usize| v as i64;
    let (h, w, oh, ow) = (i(s.h), i(s.w), i(s.oh), i(s.ow));
    let (sw, dh, dw) = (i(s.sw), i(s.dh), i(s.dw));
    let (pt, pl) = (i(s.pad[0]), i(s.pad[1]));
    let taps = s.kh * s.kw;
    // Scratch layout: padded row r, column phase q (padded columns q, q+sw, …) at float
    // `(r·sw + q)·pws`. Output column ox with tap column kx reads padded column
    // ox·sw + kx·dw = phase (kx·dw) mod sw, index ox + (kx·dw)/sw: contiguous in ox.
    let pws = i(s.phase_w());
    let row = 4 * sw * pws;
    let tap_off: Vec<i64> = (0..i(s.kh))
        .flat_map(|ky| {
            (0..i(s.kw)).map(move |kx| {
                let c = kx * dw;
                ky * dh * row + 4 * ((c % sw) * pws + c / sw)
            })
        })
        .collect();
    // The padding stays zero: each channel overwrites only the interior.
    fill_zero(&mut b, ptr, scratch, i(s.scratch_len()));
    if s.channels > 0 {
        counted_loop(&mut b, ptr, i(s.channels), |b, ch| {
            if h > 0 && w > 0 {
                let xo = b.ins().imul_imm_s(ch, 4 * h * w);
                let xplane = b.ins().iadd(x, xo);
                counted_loop(b, ptr, h, |b, r| {
                    let so = b.ins().imul_imm_s(r, 4 * w);
                    let src = b.ins().iadd(xplane, so);
                    let d = b.ins().imul_imm_s(r, row);
                    let dst = b.ins().iadd(scratch, d);
                    // Byte offset of padded column `pc` of input row r in the scratch.
                    let at = |pc: i64| pt * row + 4 * ((pc % sw) * pws + pc / sw);
                    if sw == 1 {
                        copy_floats(b, ptr, src, dst, at(pl), w);
                        return;
                    }
                    // Stride 2: eight input columns at a time, split into even and odd
                    // columns by two `shufps`, each stored as one vector into its phase.
                    let mut done = 0;
                    if sw == 2 && w / 8 > 0 {
                        let even = b.func.dfg.immediates.push(lanes_mask([0, 2, 4, 6]));
                        let odd = b.func.dfg.immediates.push(lanes_mask([1, 3, 5, 7]));
                        counted_loop(b, ptr, w / 8, |b, j| {
                            let so = b.ins().imul_imm_s(j, 32);
                            let s2 = b.ins().iadd(src, so);
                            let dof = b.ins().imul_imm_s(j, 16);
                            let d2 = b.ins().iadd(dst, dof);
                            let lo = b.ins().load(types::I8X16, mem(), s2, 0);
                            let hi = b.ins().load(types::I8X16, mem(), s2, 16);
                            for (q, mask) in [(0, even), (1, odd)] {
                                // Column 8j + 2i + q is padded column pl + 8j + 2i + q:
                                // phase (pl + q) mod 2, index (pl + q)/2 + 4j + i.
                                let v = b.ins().shuffle(lo, hi, mask);
                                b.ins().store(mem(), v, d2, off32(at(pl + q)));
                            }
                        });
                        done = w / 8 * 8;
                    }
                    // Groups of `sw` input columns: each column lands in its own phase.
                    let groups = (w - done) / sw;
                    if groups > 0 {
                        counted_loop(b, ptr, groups, |b, j| {
                            let so = b.ins().imul_imm_s(j, 4 * sw);
                            let s2 = b.ins().iadd(src, so);
                            let d2o = b.ins().imul_imm_s(j, 4);
                            let d2 = b.ins().iadd(dst, d2o);
                            for q in 0..sw {
                                let c = done + q;
                                let v = b.ins().load(types::F32, mem(), s2, off32(4 * c));
                                b.ins().store(mem(), v, d2, off32(at(pl + c)));
                            }
                        });
                    }
                    for c in done + groups * sw..w {
                        let v = b.ins().load(types::F32, mem(), src, off32(4 * c));
                        b.ins().store(mem(), v, dst, off32(at(pl + c)));
                    }
                });
            }
            let vector = ow >= 4;
            let ty = if vector { types::F32X4 } else { types::F32 };
            let wo = b.ins().imul_imm_s(ch, 4 * i(taps));
            let wbase = b.ins().iadd(wts, wo);
            let wv: Vec<Value> = (0..taps)
                .map(|t| {
                    let v = b.ins().load(types::F32, mem(), wbase, off32(4 * i(t)));
                    if vector { b.ins().splat(ty, v) } else { v }
                })
                .collect();
            let bo = b.ins().imul_imm_s(ch, 4);
            let ba = b.ins().iadd(bias, bo);
            let bs = b.ins().load(types::F32, mem(), ba, 0);
            let bv = if vector { b.ins().splat(ty, bs) } else { bs };
            let yo = b.ins().imul_imm_s(ch, 4 * oh * ow);
            let yplane = b.ins().iadd(y, yo);
            let rplane = b.ins().iadd(res, yo);
            counted_loop(b, ptr, oh, |b, oy| {
                let so = b.ins().imul_imm_s(oy, i(s.sh) * row);
                let src = b.ins().iadd(scratch, so);
                let yo = b.ins().imul_imm_s(oy, 4 * ow);
                let yrow = b.ins().iadd(yplane, yo);
                let rrow = b.ins().iadd(rplane, yo);
                // The output `ty` at byte `off` of the row (output column off/4).
                // Taps in (ky, kx) order from zero, then the bias: the reference's order, so
                // results match it to the bit where it also fuses (cancelling sums stay close).
                let one = |b: &mut FunctionBuilder, src: Value, dst: Value, rsrc: Value, off| {
                    let mut acc = None;
                    for (t, &wt) in wv.iter().enumerate() {
                        let v = b.ins().load(ty, mem(), src, off32(off + tap_off[t]));
                        acc = Some(match acc {
                            None => b.ins().fmul(v, wt),
                            Some(acc) => mul_add(b, fma, v, wt, acc),
                        });
                    }
                    let mut acc = match acc {
                        Some(acc) => b.ins().fadd(acc, bv),
                        None => bv,
                    };
                    if s.residual {
                        let r = b.ins().load(ty, mem(), rsrc, off32(off));
                        acc = b.ins().fadd(acc, r);
                    }
                    let v = apply_act(b, ty, acc, s.act);
                    b.ins().store(mem(), v, dst, off32(off));
                };
                if !vector {
                    for ox in 0..ow {
                        one(b, src, yrow, rrow, 4 * ox);
                    }
                    return;
                }
                let nv = ow / 4;
                let groups = nv / DW_UNROLL;
                if groups > 0 {
                    counted_loop(b, ptr, groups, |b, g| {
                        let o = b.ins().imul_imm_s(g, 16 * DW_UNROLL);
                        let s2 = b.ins().iadd(src, o);
                        let d2 = b.ins().iadd(yrow, o);
                        let r2 = b.ins().iadd(rrow, o);
                        for u in 0..DW_UNROLL {
                            one(b, s2, d2, r2, 16 * u);
                        }
                    });
                }
                for v in groups * DW_UNROLL..nv {
                    one(b, src, yrow, rrow, 16 * v);
                }
                // The last columns as one vector overlapping the previous one: the columns
                // both cover get the same value twice.
                if ow % 4 != 0 {
                    one(b, src, yrow, rrow, 4 * (ow - 4));
                }
            });
        });
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(cfg);
}

/// The host's frontend config with the System V convention, so snapshots are the same on
/// every 64-bit host (CLIF before lowering depends only on the pointer width).
fn snapshot_target() -> TargetFrontendConfig {
    let mut cfg = host_isa()
        .map(|isa| isa.frontend_config())
        .expect("cranelift supports this host");
    cfg.default_call_conv = CallConv::SystemV;
    cfg
}

/// The CLIF text of an epilogue, before optimisation (what the snapshots hold).
pub fn epilogue_clif(spec: &EpilogueSpec) -> String {
    let target = snapshot_target();
    let mut func =
        Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, spec.params()));
    build_epilogue(&mut func, &mut FunctionBuilderContext::new(), target, spec);
    func.display().to_string()
}

/// The CLIF text of a max pool, before optimisation.
pub fn max_pool_clif(spec: &MaxPoolSpec) -> String {
    let target = snapshot_target();
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, 2));
    build_max_pool(&mut func, &mut FunctionBuilderContext::new(), target, spec);
    func.display().to_string()
}

/// The CLIF text of a depthwise convolution, before optimisation (with FMA).
pub fn depthwise_clif(spec: &DepthwiseSpec) -> String {
    let target = snapshot_target();
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, 6));
    build_depthwise(
        &mut func,
        &mut FunctionBuilderContext::new(),
        target,
        spec,
        true,
    );
    func.display().to_string()
}
