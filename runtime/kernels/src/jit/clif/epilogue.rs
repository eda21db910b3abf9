//! The epilogue builder: bias, residual and activation over a layer's output, and with a
//! wire compression the per-channel quantisation (min/max, q8/q4 codes, error sums).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    ConstantData, Endianness, Function, InstBuilder, MemFlagsData, Type, UserFuncName, Value, types,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use adcnn_core::plan::Compression;

use super::helpers::{
    apply_act, counted_loop, counted_loop_carry, fold_lanes, mem, off32, pmax, pmin, ptr_sig,
    snapshot_target,
};
use crate::jit::spec::EpilogueSpec;
use crate::wire;

pub(in crate::jit) fn build_epilogue(
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

/// The CLIF text of an epilogue, before optimisation (what the snapshots hold).
pub fn epilogue_clif(spec: &EpilogueSpec) -> String {
    let target = snapshot_target();
    let mut func =
        Function::with_name_signature(UserFuncName::user(0, 0), ptr_sig(target, spec.params()));
    build_epilogue(&mut func, &mut FunctionBuilderContext::new(), target, spec);
    func.display().to_string()
}
