//! The max-pool builder: the whole loop nest with constant trip counts, the window unrolled.

use cranelift_codegen::ir::{Function, InstBuilder, UserFuncName, types};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::helpers::{counted_loop, mem, ptr_sig, snapshot_target};
use crate::jit::spec::MaxPoolSpec;

pub(in crate::jit) fn build_max_pool(
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

/// The CLIF text of a max pool, before optimisation.
pub fn max_pool_clif(spec: &MaxPoolSpec) -> String {
    let target = snapshot_target();
    let mut func = Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, 2));
    build_max_pool(&mut func, &mut FunctionBuilderContext::new(), target, spec);
    func.display().to_string()
}
