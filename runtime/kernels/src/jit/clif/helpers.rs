//! What the CLIF builders share: signatures, memory flags, counted loops, lane folds, the
//! one-instruction min/max and activations, and the target the snapshots are built for.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, Type, Value, types,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::FunctionBuilder;

use crate::act::Act;
use crate::jit::isa::host_isa;

pub(in crate::jit) fn ptr_sig(cfg: TargetFrontendConfig, n: usize) -> Signature {
    let mut sig = Signature::new(cfg.default_call_conv);
    for _ in 0..n {
        sig.params.push(AbiParam::new(cfg.pointer_type()));
    }
    sig
}

pub(super) fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// A counted loop `for i in 0..n` (n > 0 constant): calls `body(b, i)`, returns after the loop.
pub(super) fn counted_loop(
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
pub(super) fn counted_loop_carry(
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
pub(super) fn fold_lanes(
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

/// `x > y ? x : y` with one `maxps`/`maxss` (NaN in x gives y, like Rust's `f32::max`
/// against a number); `fmax` lowers to a NaN-propagating sequence of eight instructions.
pub(super) fn pmax(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let c = b.ins().fcmp(FloatCC::LessThan, y, x);
    select_lanes(b, c, x, y)
}

/// `x < y ? x : y` with one `minps`/`minss`.
pub(super) fn pmin(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
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
pub(super) fn apply_act(b: &mut FunctionBuilder, ty: Type, v: Value, act: Act) -> Value {
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

/// A byte offset as a load/store immediate ([`DepthwiseSpec::is_compilable`] bounds them).
///
/// [`DepthwiseSpec::is_compilable`]: crate::jit::DepthwiseSpec::is_compilable
pub(super) fn off32(v: i64) -> i32 {
    i32::try_from(v).expect("offsets bounded by DepthwiseSpec::is_compilable")
}

/// The host's frontend config with the System V convention, so snapshots are the same on
/// every 64-bit host (CLIF before lowering depends only on the pointer width).
pub(super) fn snapshot_target() -> TargetFrontendConfig {
    let mut cfg = host_isa()
        .map(|isa| isa.frontend_config())
        .expect("cranelift supports this host");
    cfg.default_call_conv = CallConv::SystemV;
    cfg
}
