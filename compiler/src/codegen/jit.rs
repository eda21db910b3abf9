//! Cranelift code generation: one [`JitSession`] owns the `JITModule` while a plan's kernels
//! are compiled (declare → define → finalize); the result, [`JitCode`], holds only finished
//! code and function pointers, which worker threads share read-only.
//!
//! What is generated (everything specialised on its constant shapes and parameters):
//! - conv/linear **epilogues**: per output channel, bias (batch norm already folded into the
//!   weights and bias at compile time), optional residual add, and relu / clip / leaky relu,
//!   in f32x4 with a scalar remainder — run on the GEMM's output while it is in cache;
//! - **max pooling** (padding is a −∞ border the caller copies in): the whole loop nest with
//!   constant trip counts.
//!
//! The inner products themselves run in the host micro-kernel (`gemm.rs`): Cranelift 0.135
//! has no 256-bit vectors on x86-64, and its f32x4 FMA kernels reach about a third of it.
#![allow(
    unsafe_code,
    reason = "calling finished JIT code through function pointers, and sharing its \
              immutable code memory between threads"
)]

use cranelift_codegen::Context;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    AbiParam, Function, InstBuilder, MemFlagsData, Signature, Type, UserFuncName, Value, types,
};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa, TargetFrontendConfig};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

/// An activation fused into an epilogue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    None,
    Relu,
    Clip { min: f32, max: f32 },
    Leaky { slope: f32 },
}

/// `y[c, p] = act(y[c, p] + bias[c] (+ residual[c, p]))` over `channels × pixels`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpilogueSpec {
    pub channels: usize,
    pub pixels: usize,
    pub act: Act,
    pub residual: bool,
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
/// `extern "C" fn(x, y)`.
pub type MaxPoolFn = unsafe extern "C" fn(*const f32, *mut f32);

/// The compile session: the one owner of the `JITModule` until [`JitSession::finish`].
pub struct JitSession {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    cfg: TargetFrontendConfig,
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
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        builder.symbol("adcnn_sgemm", super::gemm::adcnn_sgemm as *const u8);
        let module = JITModule::new(builder);
        Ok(JitSession {
            ctx: module.make_context(),
            module,
            fctx: FunctionBuilderContext::new(),
            cfg,
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
        self.define(3, |func, fctx, cfg| build_epilogue(func, fctx, cfg, spec))
    }

    pub fn max_pool(&mut self, spec: &MaxPoolSpec) -> Result<Handle, JitError> {
        self.define(2, |func, fctx, cfg| build_max_pool(func, fctx, cfg, spec))
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
        assert!(y.len() >= n && bias.len() >= spec.channels);
        assert_eq!(residual.is_some(), spec.residual);
        let r = match residual {
            Some(r) => {
                assert!(r.len() >= n);
                r.as_ptr()
            }
            None => std::ptr::null(),
        };
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
            b.ins().fmax(v, z)
        }
        Act::Clip { min, max } => {
            let lo = splat(b, min);
            let hi = splat(b, max);
            let t = b.ins().fmax(v, lo);
            b.ins().fmin(t, hi)
        }
        Act::Leaky { slope } => {
            // For 0 ≤ slope ≤ 1, `v > 0 ? v : v·slope` is max(v, v·slope); above 1 it is the
            // min. Negative slopes are not fused (see `kernel::act_of`).
            let s = splat(b, slope);
            let scaled = b.ins().fmul(v, s);
            if slope <= 1.0 {
                b.ins().fmax(v, scaled)
            } else {
                b.ins().fmin(v, scaled)
            }
        }
    }
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
    let (y, bias, res) = {
        let p = b.block_params(entry);
        (p[0], p[1], p[2])
    };
    let (c, p) = (spec.channels as i64, spec.pixels as i64);
    let vecs = p / 4;
    if c > 0 && p > 0 {
        counted_loop(&mut b, ptr, c, |b, ch| {
            let boff = b.ins().imul_imm_s(ch, 4);
            let baddr = b.ins().iadd(bias, boff);
            let bs = b.ins().load(types::F32, mem(), baddr, 0);
            let bv = b.ins().splat(types::F32X4, bs);
            let roff = b.ins().imul_imm_s(ch, 4 * p);
            let yrow = b.ins().iadd(y, roff);
            let rrow = b.ins().iadd(res, roff);
            let one = |b: &mut FunctionBuilder, ty: Type, off: Value, bb: Value| {
                let ya = b.ins().iadd(yrow, off);
                let mut v = b.ins().load(ty, mem(), ya, 0);
                v = b.ins().fadd(v, bb);
                if spec.residual {
                    let ra = b.ins().iadd(rrow, off);
                    let r = b.ins().load(ty, mem(), ra, 0);
                    v = b.ins().fadd(v, r);
                }
                let v = apply_act(b, ty, v, spec.act);
                b.ins().store(mem(), v, ya, 0);
            };
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
        });
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(cfg);
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
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, 3));
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
