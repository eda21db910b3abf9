//! The depthwise-convolution builder: per channel the plane copied into a zeroed scratch
//! with its padding (deinterleaved into column phases), then f32x4 FMAs per output row.

use cranelift_codegen::ir::{
    ConstantData, Function, InstBuilder, Type, UserFuncName, Value, types,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::helpers::{apply_act, counted_loop, mem, off32, ptr_sig, snapshot_target};
use crate::jit::spec::DepthwiseSpec;

/// `a·w + acc`, fused where the ISA has FMA.
fn mul_add(b: &mut FunctionBuilder, fma: bool, a: Value, w: Value, acc: Value) -> Value {
    if fma {
        b.ins().fma(a, w, acc)
    } else {
        let m = b.ins().fmul(a, w);
        b.ins().fadd(m, acc)
    }
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

pub(in crate::jit) fn build_depthwise(
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
