//! The JIT session and its finished code: [`JitSession`] declares, defines (through the
//! CLIF builders) and finalizes functions; [`JitCode`] owns the finished code and calls it.
#![allow(
    unsafe_code,
    reason = "calling finished JIT code through function pointers, and sharing its \
              immutable code memory between threads"
)]

use cranelift_codegen::Context;
use cranelift_codegen::ir::{Function, UserFuncName};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

use adcnn_core::plan::Compression;

use crate::jit::clif::depthwise::build_depthwise;
use crate::jit::clif::epilogue::build_epilogue;
use crate::jit::clif::helpers::ptr_sig;
use crate::jit::clif::max_pool::build_max_pool;
use crate::jit::isa::{JitError, err, host_isa};
use crate::jit::spec::{DepthwiseSpec, EpilogueSpec, MaxPoolSpec};
use crate::wire;

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
