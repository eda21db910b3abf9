//! One node → what it becomes: constants folded when all its inputs are constants, else a
//! dispatch on the op type that lowers the simple operators in place and the others in
//! [`super::ops`] and [`super::reshape`].

use std::rc::Rc;

use super::arith::{lower_arith, lower_hard};
use super::context::{Ctx, Lowered, Node, Value, layer, missing, preferred_name, prod, rank};
use super::graph::SUPPORTED_OPS;
use super::ops::{
    lower_bn, lower_clip, lower_constant, lower_conv, lower_conv_transpose, lower_linear,
    lower_pad, lower_pool, lower_resize,
};
use super::reshape::{flatten_target, reshape_target, reshape_to, squeeze, unsqueeze};
use crate::onnx::error::ImportError;
use crate::onnx::fold;
use crate::onnx::proto::AttributeProto;
use crate::onnx::tensor::{self, Const, Data};
use adcnn_core::ops::Op;

/// Folds a node whose inputs are all constants, if it is one of the foldable kinds.
fn try_fold(n: &Node, ctx: &Ctx) -> Result<Option<Lowered>, ImportError> {
    let op = n.node.op_type();
    let constant_only = fold::CONSTANT_ONLY_OPS.contains(&op);
    if !constant_only && !fold::FOLDABLE_OPS.contains(&op) {
        return Ok(None);
    }
    let mut inputs: Vec<Option<&Const>> = Vec::new();
    let mut all_const = !n.node.input.is_empty();
    for name in &n.node.input {
        if name.is_empty() {
            inputs.push(None);
            continue;
        }
        match ctx.values.get(name.as_str()) {
            Some(Value::Const(c)) => inputs.push(Some(c)),
            Some(Value::Tensor(_)) => all_const = false,
            None => return Err(missing(n, name)),
        }
    }
    if !all_const {
        return if constant_only {
            Err(n.unsupported(
                "supported only on constant inputs (shape arithmetic left by the exporter)",
            ))
        } else {
            Ok(None)
        };
    }
    let Some(x) = inputs.first().copied().flatten() else {
        return Err(n.unsupported("input 0 is missing"));
    };
    // What the fold will make, bounded before it allocates: as many values as its input
    // (Concat: all its inputs; ConstantOfShape: what its shape input says; Gather: a row of
    // its input per index).
    let makes = match op {
        "Concat" => inputs
            .iter()
            .flatten()
            .try_fold(0usize, |a, c| a.checked_add(c.len())),
        "ConstantOfShape" => x.ints()?.iter().try_fold(1usize, |a, &d| {
            a.checked_mul(usize::try_from(d).unwrap_or(0))
        }),
        "Gather" => {
            let rows = x.dims.first().copied().filter(|&r| r > 0).unwrap_or(1);
            let indices = inputs.get(1).copied().flatten().map_or(0, |c| c.len());
            (x.len() / rows).checked_mul(indices)
        }
        _ => Some(x.len()),
    };
    let left = ctx.fold_budget.get();
    match makes.filter(|&m| m <= left) {
        Some(m) => ctx.fold_budget.set(left - m),
        None => {
            return Err(n.unsupported(format!(
                "folding constants into more than {} values (shape arithmetic is small)",
                crate::onnx::fold::MAX_FOLDED_ELEMENTS
            )));
        }
    }
    let with_dims = |dims: Vec<usize>| Const {
        name: x.name.clone(),
        dims,
        data: x.data.clone(),
    };
    let folded: Result<Const, String> = match op {
        "Concat" => {
            let xs: Vec<&Const> = inputs.iter().flatten().copied().collect();
            fold::concat(&xs, n.int("axis", 0))?
        }
        "Reshape" => {
            let shape = inputs
                .get(1)
                .copied()
                .flatten()
                .ok_or_else(|| n.unsupported("shape missing"))?;
            Ok(with_dims(reshape_target(
                n,
                &x.dims,
                shape.ints()?,
                n.int("allowzero", 0) != 0,
            )?))
        }
        "Squeeze" | "Unsqueeze" => {
            let axes: Option<Vec<i64>> = match inputs.get(1).copied().flatten() {
                Some(a) => Some(a.ints()?.to_vec()),
                None => n.ints("axes").map(<[i64]>::to_vec),
            };
            Ok(with_dims(if op == "Squeeze" {
                squeeze(n, &x.dims, axes.as_deref())?
            } else {
                unsqueeze(n, &x.dims, axes.as_deref().unwrap_or(&[]))?
            }))
        }
        "Flatten" => Ok(with_dims(flatten_target(n, &x.dims)?)),
        _ => fold::fold(
            op,
            &inputs,
            &|name| n.attr(name).map(|a| a.i()),
            &|name| n.ints(name).map(<[i64]>::to_vec),
            &|name| n.attr(name).and_then(|a| a.t.as_ref()).map(tensor::decode),
            n.opset,
        )?,
    };
    let mut c =
        folded.map_err(|reason| n.unsupported(format!("cannot fold constants: {reason}")))?;
    c.name = n.node.output.first().cloned().unwrap_or_default();
    Ok(Some(Lowered::Alias(Value::Const(Rc::new(c)))))
}

pub(super) fn lower_node(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    if let Some(folded) = try_fold(n, ctx)? {
        return Ok(folded);
    }
    let op = n.node.op_type();
    match op {
        "Identity" => {
            n.check_attrs(&[])?;
            let name = n.input_name(0).ok_or_else(|| n.unsupported("no input"))?;
            ctx.values
                .get(name)
                .cloned()
                .map(Lowered::Alias)
                .ok_or_else(|| missing(n, name))
        }
        "Constant" => lower_constant(n),
        "Shape" => {
            // Its dims are known: the shape sub-graphs exporters write (sizes of a Resize)
            // fold to constants from here.
            n.check_attrs(&["start", "end"])?;
            let x = ctx.tensor(n, 0)?;
            let r = x.dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(n.int("start", 0));
            let end = clamp(n.int("end", r)).max(start);
            let dims: Vec<i64> = x.dims[start..end].iter().map(|&d| d as i64).collect();
            Ok(Lowered::Alias(Value::Const(Rc::new(Const {
                name: n.node.output.first().cloned().unwrap_or_default(),
                dims: vec![dims.len()],
                data: Data::I64(dims),
            }))))
        }
        "Relu" | "Sigmoid" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let op = if op == "Relu" { Op::Relu } else { Op::Sigmoid };
            Ok(Lowered::Layer(layer(op, vec![x.src]), x.dims))
        }
        "LeakyRelu" => {
            n.check_attrs(&["alpha"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let slope = n.float("alpha", 0.01);
            if !slope.is_finite() {
                return Err(n.bad_attr(
                    n.attr("alpha").unwrap_or(&AttributeProto::default()),
                    "a finite slope",
                ));
            }
            Ok(Lowered::Layer(
                layer(Op::LeakyRelu { slope }, vec![x.src]),
                x.dims,
            ))
        }
        "Clip" => lower_clip(n, ctx),
        "PRelu" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let c = x.dims[1];
            let slope = ctx.required_constant(n, 1, "slope")?;
            let v = slope.floats()?;
            let per_channel = v.len() == c
                && slope.dims.iter().filter(|&&d| d != 1).count() <= 1
                && (slope.dims.len() < x.dims.len() - 1
                    || slope.dims.len() == x.dims.len() && slope.dims[1] == c
                    || slope.dims.len() == x.dims.len() - 1 && slope.dims[0] == c);
            let data = if v.len() == 1 {
                vec![v[0]; c]
            } else if per_channel {
                v.to_vec()
            } else {
                return Err(n.unsupported(format!(
                    "slope dims {:?} on input {:?}; supported: one slope, or one per channel ([C] or [C, 1, 1])",
                    slope.dims, x.dims
                )));
            };
            let mut l = layer(Op::PRelu, vec![x.src]);
            l.weights.push(("weight", vec![c], data));
            l.preferred = preferred_name(n.input_name(1));
            Ok(Lowered::Layer(l, x.dims))
        }
        "Conv" => lower_conv(n, ctx),
        "MaxPool" | "AveragePool" => lower_pool(n, ctx),
        "GlobalAveragePool" => {
            n.check_attrs(&[])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[4])?;
            let dims = vec![1, x.dims[1], 1, 1];
            Ok(Lowered::Layer(layer(Op::GlobalAvgPool, vec![x.src]), dims))
        }
        "BatchNormalization" => lower_bn(n, ctx),
        "ReduceMean" => {
            // The dynamo exporter writes adaptive_avg_pool2d(1) as a mean over H and W.
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[4])?;
            let axes: Option<Vec<i64>> = if n.opset >= 18 {
                n.check_attrs(&["keepdims", "noop_with_empty_axes"])?;
                ctx.constant(n, 1)?
                    .map(|c| c.ints().map(<[i64]>::to_vec))
                    .transpose()?
            } else {
                n.check_attrs(&["axes", "keepdims"])?;
                n.ints("axes").map(<[i64]>::to_vec)
            };
            let mut axes: Vec<i64> = axes
                .unwrap_or_default()
                .iter()
                .map(|&a| if a < 0 { a + 4 } else { a })
                .collect();
            axes.sort_unstable();
            if axes != [2, 3] {
                return Err(n.unsupported(format!(
                    "a mean over axes {axes:?}; supported: over height and width (2, 3)"
                )));
            }
            let dims = if n.int("keepdims", 1) != 0 {
                vec![1, x.dims[1], 1, 1]
            } else {
                vec![1, x.dims[1]]
            };
            Ok(Lowered::Layer(layer(Op::GlobalAvgPool, vec![x.src]), dims))
        }
        "Add" | "Sub" | "Mul" | "Div" => lower_arith(n, ctx),
        "HardSigmoid" | "HardSwish" => lower_hard(n, ctx),
        "Resize" | "Upsample" => lower_resize(n, ctx),
        "ConvTranspose" => lower_conv_transpose(n, ctx),
        "Concat" => {
            n.check_attrs(&["axis"])?;
            let xs = (0..n.node.input.len())
                .map(|i| ctx.tensor(n, i))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(first) = xs.first() else {
                return Err(n.unsupported("no inputs"));
            };
            rank(n, first, &[2, 4])?;
            let r = first.dims.len() as i64;
            let axis = n.int("axis", 1);
            let axis = if axis < 0 { axis + r } else { axis };
            if axis != 1 {
                return Err(n.bad_attr(
                    n.attr("axis").unwrap_or(&AttributeProto::default()),
                    "concatenation on the channel axis (1)",
                ));
            }
            let mut dims = first.dims.clone();
            for x in &xs[1..] {
                if x.dims.len() != first.dims.len() || x.dims[2..] != first.dims[2..] {
                    return Err(n.unsupported(format!(
                        "inputs of dims {:?} and {:?} differ outside the channel axis",
                        first.dims, x.dims
                    )));
                }
                dims[1] += x.dims[1];
            }
            if xs.len() == 1 {
                return Ok(Lowered::Alias(Value::Tensor(first.clone())));
            }
            Ok(Lowered::Layer(
                layer(Op::Concat, xs.iter().map(|x| x.src).collect()),
                dims,
            ))
        }
        "Flatten" => {
            n.check_attrs(&["axis"])?;
            let x = ctx.tensor(n, 0)?;
            let target = flatten_target(n, &x.dims)?;
            reshape_to(n, x, target)
        }
        "Reshape" => {
            n.check_attrs(&["allowzero"])?;
            let x = ctx.tensor(n, 0)?;
            let shape = ctx.required_constant(n, 1, "shape")?;
            let target = reshape_target(n, &x.dims, shape.ints()?, n.int("allowzero", 0) != 0)?;
            reshape_to(n, x, target)
        }
        "Squeeze" | "Unsqueeze" => {
            let x = ctx.tensor(n, 0)?;
            let axes: Option<Vec<i64>> = if n.opset >= 13 {
                n.check_attrs(&[])?;
                ctx.constant(n, 1)?
                    .map(|c| c.ints().map(<[i64]>::to_vec))
                    .transpose()?
            } else {
                n.check_attrs(&["axes"])?;
                n.ints("axes").map(<[i64]>::to_vec)
            };
            let target = if op == "Squeeze" {
                squeeze(n, &x.dims, axes.as_deref())?
            } else {
                unsqueeze(n, &x.dims, axes.as_deref().unwrap_or(&[]))?
            };
            reshape_to(n, x, target)
        }
        "Gemm" | "MatMul" => lower_linear(n, ctx),
        "Softmax" => {
            n.check_attrs(&["axis"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            let r = x.dims.len() as i64;
            let axis = n.int("axis", if n.opset >= 13 { -1 } else { 1 });
            let axis = if axis < 0 { axis + r } else { axis };
            // Before opset 13, softmax runs over all axes from `axis` on (flattened).
            let ok = axis == 1 && (n.opset >= 13 || prod(&x.dims[2..]) == 1);
            if !ok {
                return Err(n.bad_attr(
                    n.attr("axis").unwrap_or(&AttributeProto::default()),
                    format!(
                        "softmax over the channel axis (1) of dims {:?}{}",
                        x.dims,
                        if n.opset < 13 {
                            ", which before opset 13 needs H = W = 1"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok(Lowered::Layer(layer(Op::Softmax, vec![x.src]), x.dims))
        }
        "Pad" => lower_pad(n, ctx),
        "Dropout" => {
            n.check_attrs(&["ratio", "seed", "is_test"])?;
            let x = ctx.tensor(n, 0)?;
            rank(n, &x, &[2, 4])?;
            if let Some(t) = ctx.constant(n, 2)? {
                let training = match &t.data {
                    Data::F32(v) => v.iter().any(|&x| x != 0.0),
                    Data::I64(v) => v.iter().any(|&x| x != 0),
                };
                if training {
                    return Err(n.unsupported("training_mode is true; inference needs false"));
                }
            } else if n.input_name(2).is_some() {
                return Err(n.unsupported("training_mode must be a constant"));
            }
            Ok(Lowered::Layer(layer(Op::Dropout, vec![x.src]), x.dims))
        }
        _ => Err(ImportError::UnsupportedOp {
            op_type: op.to_string(),
            node: n.name.clone(),
            domain: String::new(),
            supported: SUPPORTED_OPS.join(", "),
        }),
    }
}
