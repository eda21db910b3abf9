//! Element-wise arithmetic and the activations exporters spell with it: Add, Sub, Mul and Div
//! of two tensors (broadcast) or of a tensor and a constant (a scalar becomes `affine`, one
//! value per channel a 1×1 depthwise convolution), HardSigmoid and HardSwish, and the
//! patterns `x · sigmoid(x)` (SiLU), `x · hardsigmoid(x)` and `x · clip(x + 3, 0, 6) / 6`
//! (hard-swish), each fused into one layer.

use super::context::{Ctx, Lowered, Node, Val, Value, dsl_shape, layer, missing, rank};
use crate::onnx::error::ImportError;
use crate::onnx::tensor::Const;
use crate::onnx::types::Src;
use adcnn_core::ops::{Conv2d, Hw, Op, Pad2, broadcast};

/// Add, Sub, Mul or Div.
pub(super) fn lower_arith(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[])?;
    let op = n.node.op_type();
    if n.node.input.len() != 2 {
        return Err(n.unsupported(format!("{op} takes two inputs")));
    }
    let get = |i: usize| {
        let name = n
            .input_name(i)
            .ok_or_else(|| n.unsupported("an input is missing"))?;
        ctx.values
            .get(name)
            .cloned()
            .ok_or_else(|| missing(n, name))
    };
    match (get(0)?, get(1)?) {
        (Value::Tensor(a), Value::Tensor(b)) => tensors(n, ctx, a, b),
        (Value::Tensor(x), Value::Const(c)) => with_constant(n, ctx, x, &c, false),
        (Value::Const(c), Value::Tensor(x)) => with_constant(n, ctx, x, &c, true),
        (Value::Const(_), Value::Const(_)) => {
            Err(n.unsupported(format!("{op} of two constants that could not be folded")))
        }
    }
}

fn arith_op(op: &str) -> Op {
    match op {
        "Add" => Op::Add,
        "Sub" => Op::Sub,
        "Mul" => Op::Mul,
        _ => Op::Div,
    }
}

/// Two computed tensors, broadcast as numpy does.
fn tensors(n: &Node, ctx: &mut Ctx, a: Val, b: Val) -> Result<Lowered, ImportError> {
    let op = n.node.op_type();
    rank(n, &a, &[2, 4])?;
    rank(n, &b, &[2, 4])?;
    let shapes = (dsl_shape(&a.dims), dsl_shape(&b.dims));
    let (Some(sa), Some(sb)) = shapes else {
        return Err(n.unsupported(format!("input dims {:?} and {:?}", a.dims, b.dims)));
    };
    let out = broadcast(sa, sb)
        .filter(|_| a.dims.len() == b.dims.len())
        .ok_or_else(|| {
            n.unsupported(format!(
                "dims {:?} and {:?} do not broadcast (each axis must match or be 1)",
                a.dims, b.dims
            ))
        })?;
    let dims = if a.dims.len() == 4 {
        vec![1, out.c, out.h, out.w]
    } else {
        vec![1, out.c]
    };
    if op == "Mul"
        && let Some(fused) = fused_activation(ctx, &a, &b)
    {
        return Ok(fused);
    }
    Ok(Lowered::Layer(
        layer(arith_op(op), vec![a.src, b.src]),
        dims,
    ))
}

/// `x · f(x)` where `f(x)` is read only here and is a sigmoid (SiLU), a hard sigmoid of
/// slope 1/6 (hard-swish) or `clip(x + 3, 0, 6)` (hard-swish, divided by 6 afterwards:
/// then the division is what [`with_constant`] fuses).
fn fused_activation(ctx: &Ctx, a: &Val, b: &Val) -> Option<Lowered> {
    for (x, f) in [(a, b), (b, a)] {
        if x.dims != f.dims {
            continue;
        }
        let Src::Layer(fi) = f.src else { continue };
        let gate = &ctx.layers[fi];
        if gate.inputs != [x.src] || ctx.layer_uses(fi) != 1 {
            continue;
        }
        let op = match gate.op {
            Op::Sigmoid => Op::Silu,
            Op::HardSigmoid { alpha, beta } if close(alpha, 1.0 / 6.0) && beta == 0.5 => {
                Op::HardSwish
            }
            _ => continue,
        };
        return Some(Lowered::Layer(layer(op, vec![x.src]), x.dims.clone()));
    }
    None
}

/// Whether `a` is `b` to float32 precision (exporters write 1/6 as 0.16666667 or 0.1666667).
fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs()
}

/// A tensor and a constant (`reversed`: the constant is the first operand).
fn with_constant(
    n: &Node,
    ctx: &mut Ctx,
    x: Val,
    c: &Const,
    reversed: bool,
) -> Result<Lowered, ImportError> {
    let op = n.node.op_type();
    rank(n, &x, &[2, 4])?;
    // The bias of a bias-free MatMul: `x @ W + b` is one linear layer.
    if op == "Add"
        && let Some(done) = super::ops::matmul_bias(n, ctx, &x, c)?
    {
        return Ok(done);
    }
    let v = c.floats()?;
    if let [k] = v {
        let k = *k;
        let affine = match (op, reversed) {
            ("Add", _) => (1.0, k),
            ("Sub", false) => (1.0, -k),
            ("Sub", true) => (-1.0, k),
            ("Mul", _) => (k, 0.0),
            ("Div", false) => (1.0 / k, 0.0),
            _ => {
                return Err(n.unsupported(format!(
                    "dividing the constant `{}` by a tensor; only a tensor divided by a constant is supported",
                    c.name
                )));
            }
        };
        return Ok(scalar(ctx, x, affine));
    }
    let channels = x.dims[1];
    if !per_channel(&c.dims, x.dims.len()) || v.len() != channels {
        return Err(n.unsupported(format!(
            "{op} with the constant `{}` of dims {:?} on an input of dims {:?}; supported: a \
             scalar, or one value per channel ([C, 1, 1] or [1, C, 1, 1])",
            c.name, c.dims, x.dims
        )));
    }
    // One value per channel: a 1×1 depthwise convolution `x · w + b`.
    let (w, b): (Vec<f32>, Option<Vec<f32>>) = match (op, reversed) {
        ("Add", _) => (vec![1.0; channels], Some(v.to_vec())),
        ("Sub", false) => (vec![1.0; channels], Some(v.iter().map(|k| -k).collect())),
        ("Sub", true) => (vec![-1.0; channels], Some(v.to_vec())),
        ("Mul", _) => (v.to_vec(), None),
        ("Div", false) => (v.iter().map(|k| 1.0 / k).collect(), None),
        _ => {
            return Err(n.unsupported(format!(
                "dividing the constant `{}` by a tensor; only a tensor divided by a constant is supported",
                c.name
            )));
        }
    };
    if x.dims.len() != 4 {
        return Err(n.unsupported(format!(
            "{op} with one value per feature on flat dims {:?}; supported on [N, C, H, W]",
            x.dims
        )));
    }
    let mut l = layer(
        Op::Conv2d(Conv2d {
            out_channels: channels,
            kernel: Hw::square(1),
            stride: Hw::square(1),
            padding: Pad2::default(),
            dilation: Hw::square(1),
            groups: channels,
            bias: b.is_some(),
        }),
        vec![x.src],
    );
    l.weights.push(("weight", vec![channels, 1, 1, 1], w));
    if let Some(b) = b {
        l.weights.push(("bias", vec![channels], b));
    }
    Ok(Lowered::Layer(l, x.dims))
}

/// Whether constant dims, aligned to the right of an input of `rank` dims (numpy), vary
/// only along the channel axis (1).
fn per_channel(dims: &[usize], rank: usize) -> bool {
    dims.len() <= rank
        && dims
            .iter()
            .enumerate()
            .all(|(j, &d)| d == 1 || rank - dims.len() + j == 1)
}

/// `x · scale + shift`: merged into the affine layer before it when that one only scales
/// (`(x · a) + b` is exactly `affine(a, b)`), and a division by 6 after `x · clip(x + 3, 0,
/// 6)` becomes hard-swish.
fn scalar(ctx: &mut Ctx, x: Val, (scale, shift): (f32, f32)) -> Lowered {
    if let Src::Layer(i) = x.src
        && ctx.layer_uses(i) == 1
    {
        if scale == 1.0
            && let Op::Affine { shift: s, .. } = &mut ctx.layers[i].op
            && *s == 0.0
        {
            *s = shift;
            return Lowered::Alias(Value::Tensor(x));
        }
        if shift == 0.0
            && close(scale, 1.0 / 6.0)
            && let Some(input) = spelled_hard_swish(ctx, i)
        {
            return Lowered::Layer(layer(Op::HardSwish, vec![input]), x.dims);
        }
    }
    Lowered::Layer(layer(Op::Affine { scale, shift }, vec![x.src]), x.dims)
}

/// The input `x` when layer `i` is `x · clip(x + 3, 0, 6)` with its inner values read only
/// there.
fn spelled_hard_swish(ctx: &Ctx, i: usize) -> Option<Src> {
    let mul = &ctx.layers[i];
    if mul.op != Op::Mul {
        return None;
    }
    for (x, g) in [
        (mul.inputs[0], mul.inputs[1]),
        (mul.inputs[1], mul.inputs[0]),
    ] {
        let Src::Layer(ci) = g else { continue };
        let clip = &ctx.layers[ci];
        if clip.op != (Op::Clip { min: 0.0, max: 6.0 }) || ctx.layer_uses(ci) != 1 {
            continue;
        }
        let Src::Layer(ai) = clip.inputs[0] else {
            continue;
        };
        let add = &ctx.layers[ai];
        if add.op
            == (Op::Affine {
                scale: 1.0,
                shift: 3.0,
            })
            && add.inputs == [x]
            && ctx.layer_uses(ai) == 1
        {
            return Some(x);
        }
    }
    None
}

/// HardSigmoid (`alpha` 0.2 and `beta` 0.5 by default) and HardSwish.
pub(super) fn lower_hard(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[2, 4])?;
    let op = if n.node.op_type() == "HardSwish" {
        n.check_attrs(&[])?;
        Op::HardSwish
    } else {
        n.check_attrs(&["alpha", "beta"])?;
        let (alpha, beta) = (n.float("alpha", 0.2), n.float("beta", 0.5));
        if !alpha.is_finite() || !beta.is_finite() {
            return Err(n.unsupported("alpha and beta must be finite"));
        }
        Op::HardSigmoid { alpha, beta }
    };
    Ok(Lowered::Layer(layer(op, vec![x.src]), x.dims))
}
