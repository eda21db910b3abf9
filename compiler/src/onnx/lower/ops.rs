//! The lowerings of the operators with weights or many attributes to check: Constant, Clip,
//! Conv, MaxPool/AveragePool, BatchNormalization, Add (with a MatMul's bias), Gemm/MatMul and
//! Pad, and the attribute helpers they share.

use std::rc::Rc;

use super::context::{Ctx, Lowered, Node, Val, Value, dsl_shape, layer, preferred_name, rank};
use crate::onnx::error::ImportError;
use crate::onnx::proto::AttributeProto;
use crate::onnx::tensor::{self, Const, Data};
use crate::onnx::types::Src;
use adcnn_core::ops::{Conv2d, ConvTranspose2d, Hw, Op, Pad2, Pool2d, Upsample};
use adcnn_core::ops::{pool_out, window_out};

/// Spatial `(kh, kw)`-style pair from an attribute, default `default`, all ≥ `min`.
fn pair(n: &Node, name: &str, default: usize, min: usize) -> Result<Hw, ImportError> {
    match n.ints(name) {
        None => Ok(Hw::square(default)),
        Some(&[h, w]) if h >= min as i64 && w >= min as i64 && h <= 1 << 16 && w <= 1 << 16 => {
            Ok(Hw {
                h: h as usize,
                w: w as usize,
            })
        }
        Some(_) => Err(n.bad_attr(
            n.attr(name).unwrap_or(&AttributeProto::default()),
            format!("two values (height, width), each ≥ {min}"),
        )),
    }
}

/// Explicit spatial padding from `auto_pad` and `pads`.
fn spatial_pads(n: &Node, hw: (usize, usize), k: Hw, s: Hw, d: Hw) -> Result<Pad2, ImportError> {
    let auto = n.string("auto_pad").unwrap_or_default();
    let explicit = || -> Result<Pad2, ImportError> {
        match n.ints("pads") {
            None => Ok(Pad2::default()),
            Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|v| (0..=1 << 16).contains(v)) => {
                Ok(Pad2 {
                    top: t as usize,
                    left: l as usize,
                    bottom: b as usize,
                    right: r as usize,
                })
            }
            Some(_) => Err(n.bad_attr(
                n.attr("pads").unwrap_or(&AttributeProto::default()),
                "four non-negative values [top, left, bottom, right]",
            )),
        }
    };
    match auto.as_str() {
        "" | "NOTSET" => explicit(),
        "VALID" => Ok(Pad2::default()),
        "SAME_UPPER" | "SAME_LOWER" => {
            let same = |len: usize, k: usize, s: usize, d: usize| {
                let out = len.div_ceil(s);
                let total = (out.saturating_sub(1) * s + (k - 1) * d + 1).saturating_sub(len);
                if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            };
            let (top, bottom) = same(hw.0, k.h, s.h, d.h);
            let (left, right) = same(hw.1, k.w, s.w, d.w);
            Ok(Pad2 {
                top,
                left,
                bottom,
                right,
            })
        }
        _ => Err(n.bad_attr(
            n.attr("auto_pad").unwrap_or(&AttributeProto::default()),
            "auto_pad NOTSET, VALID, SAME_UPPER or SAME_LOWER",
        )),
    }
}

fn scalar(n: &Node, c: &Const, what: &str) -> Result<f32, ImportError> {
    let v = c.floats()?;
    match v {
        [x] => Ok(*x),
        _ => Err(n.unsupported(format!(
            "the {what} `{}` has {} values; a scalar is expected",
            c.name,
            v.len()
        ))),
    }
}

pub(super) fn lower_constant(n: &Node) -> Result<Lowered, ImportError> {
    let [a] = n.node.attribute.as_slice() else {
        return Err(n.unsupported("a Constant has exactly one value attribute"));
    };
    let name = n.node.output.first().cloned().unwrap_or_default();
    let c = match a.name() {
        "value" => {
            let t =
                a.t.as_ref()
                    .ok_or_else(|| n.unsupported("`value` holds no tensor"))?;
            let mut c = tensor::decode(t)?;
            c.name = name;
            c
        }
        "value_float" => Const {
            name,
            dims: vec![],
            data: Data::F32(vec![a.f()]),
        },
        "value_floats" => Const {
            name,
            dims: vec![a.floats.len()],
            data: Data::F32(a.floats.clone()),
        },
        "value_int" => Const {
            name,
            dims: vec![],
            data: Data::I64(vec![a.i()]),
        },
        "value_ints" => Const {
            name,
            dims: vec![a.ints.len()],
            data: Data::I64(a.ints.clone()),
        },
        _ => {
            return Err(n.bad_attr(
                a,
                "value (float32 or int64 tensor), value_float(s), value_int(s)",
            ));
        }
    };
    Ok(Lowered::Alias(Value::Const(Rc::new(c))))
}

pub(super) fn lower_clip(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[2, 4])?;
    let (min, max) = if n.opset >= 11 {
        n.check_attrs(&[])?;
        let min = ctx
            .constant(n, 1)?
            .map(|c| scalar(n, &c, "minimum"))
            .transpose()?;
        let max = ctx
            .constant(n, 2)?
            .map(|c| scalar(n, &c, "maximum"))
            .transpose()?;
        (min, max)
    } else {
        n.check_attrs(&["min", "max"])?;
        (n.attr("min").map(|a| a.f()), n.attr("max").map(|a| a.f()))
    };
    if min.is_some_and(f32::is_nan) || max.is_some_and(f32::is_nan) {
        return Err(n.unsupported("a NaN bound"));
    }
    let op = match (min, max) {
        (Some(0.0), None) => Op::Relu,
        (None, None) => {
            return Ok(Lowered::Alias(Value::Tensor(x)));
        }
        // An absent bound is ±f32::MAX: the same for every finite input.
        (lo, hi) => {
            let min = lo.unwrap_or(f32::MIN).max(f32::MIN);
            let max = hi.unwrap_or(f32::MAX).min(f32::MAX);
            if min > max {
                return Err(n.unsupported(format!("minimum {min} is above the maximum {max}")));
            }
            Op::Clip { min, max }
        }
    };
    Ok(Lowered::Layer(layer(op, vec![x.src]), x.dims))
}

pub(super) fn lower_conv(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ])?;
    let (x, w, [m, cg, kh, kw]) = input_and_weight(n, ctx, "convolutions ([M, C/group, kH, kW])")?;
    let group = n.int("group", 1);
    let c = x.dims[1];
    if !(1..=c as i64).contains(&group) {
        return Err(n.bad_attr(
            n.attr("group").unwrap_or(&AttributeProto::default()),
            format!("a group count from 1 to the {c} input channels"),
        ));
    }
    if group < 1
        || m == 0
        || kh == 0
        || kw == 0
        || cg * group as usize != c
        || m % group as usize != 0
    {
        return Err(n.unsupported(format!(
            "weight dims {:?} with group {group} do not fit an input of {c} channels",
            w.dims
        )));
    }
    let kernel = Hw { h: kh, w: kw };
    let stride = pair(n, "strides", 1, 1)?;
    let dilation = pair(n, "dilations", 1, 1)?;
    let padding = spatial_pads(n, (x.dims[2], x.dims[3]), kernel, stride, dilation)?;
    let oh = window_out(
        x.dims[2],
        kh,
        stride.h,
        dilation.h,
        padding.top,
        padding.bottom,
        false,
    );
    let ow = window_out(
        x.dims[3],
        kw,
        stride.w,
        dilation.w,
        padding.left,
        padding.right,
        false,
    );
    let (Some(oh), Some(ow)) = (oh, ow) else {
        return Err(n.unsupported(format!(
            "the kernel does not fit the padded {}×{} input",
            x.dims[2], x.dims[3]
        )));
    };
    let bias = ctx.constant(n, 2)?;
    let mut l = layer(
        Op::Conv2d(Conv2d {
            out_channels: m,
            kernel,
            stride,
            padding,
            dilation,
            groups: group as usize,
            bias: bias.is_some(),
        }),
        vec![x.src],
    );
    weight_and_bias(n, &mut l, &w, bias.as_deref(), m)?;
    Ok(Lowered::Layer(l, vec![1, m, oh, ow]))
}

/// A (transposed) convolution's input (`[1, C, H, W]`) and weight: a float constant of four
/// dims (`layout` names them for the message), agreeing with `kernel_shape` if given.
fn input_and_weight(
    n: &Node,
    ctx: &Ctx,
    layout: &str,
) -> Result<(Val, Rc<Const>, [usize; 4]), ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let w = ctx.required_constant(n, 1, "weight")?;
    w.floats()?; // a float tensor, checked before its dims
    let &[a, b, kh, kw] = w.dims.as_slice() else {
        return Err(n.unsupported(format!(
            "weight dims {:?}; only 2-D {layout} are supported",
            w.dims
        )));
    };
    if let Some(ks) = n.ints("kernel_shape")
        && ks != [kh as i64, kw as i64]
    {
        return Err(n.unsupported(format!(
            "kernel_shape {ks:?} differs from the weight's {kh}×{kw}"
        )));
    }
    Ok((x, w, [a, b, kh, kw]))
}

/// A (transposed) convolution's weight and optional bias (one value per output channel),
/// the layer named after the weight.
fn weight_and_bias(
    n: &Node,
    l: &mut crate::onnx::types::Layer,
    w: &Const,
    bias: Option<&Const>,
    m: usize,
) -> Result<(), ImportError> {
    l.weights
        .push(("weight", w.dims.clone(), w.floats()?.to_vec()));
    if let Some(b) = bias {
        let bv = b.floats()?;
        if bv.len() != m {
            return Err(n.unsupported(format!(
                "bias `{}` has {} values for {m} output channels",
                b.name,
                bv.len()
            )));
        }
        l.weights.push(("bias", vec![m], bv.to_vec()));
    }
    l.preferred = preferred_name(n.input_name(1));
    Ok(())
}

pub(super) fn lower_pool(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let max = n.node.op_type() == "MaxPool";
    let mut allowed = vec![
        "auto_pad",
        "ceil_mode",
        "dilations",
        "kernel_shape",
        "pads",
        "strides",
    ];
    allowed.push(if max {
        "storage_order"
    } else {
        "count_include_pad"
    });
    n.check_attrs(&allowed)?;
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let kernel = match n.ints("kernel_shape") {
        Some(_) => pair(n, "kernel_shape", 1, 1)?,
        None => return Err(n.unsupported("kernel_shape is missing")),
    };
    if let Some(a) = n.attr("dilations")
        && a.ints.iter().any(|&d| d != 1)
    {
        return Err(n.bad_attr(a, "dilations of 1"));
    }
    if let Some(a) = n.attr("storage_order")
        && a.i() != 0
    {
        return Err(n.bad_attr(a, "storage_order 0 (row major)"));
    }
    let stride = pair(n, "strides", 1, 1)?;
    let padding = spatial_pads(n, (x.dims[2], x.dims[3]), kernel, stride, Hw::square(1))?;
    if padding.top.max(padding.bottom) > kernel.h / 2
        || padding.left.max(padding.right) > kernel.w / 2
    {
        return Err(n.unsupported(format!(
            "padding {padding} is more than half the {kernel} window (PyTorch's and the DSL's limit)"
        )));
    }
    let ceil_mode = match n.int("ceil_mode", 0) {
        0 => false,
        1 => true,
        _ => {
            return Err(n.bad_attr(
                n.attr("ceil_mode").unwrap_or(&AttributeProto::default()),
                "ceil_mode 0 or 1",
            ));
        }
    };
    let pool = Pool2d {
        kernel,
        stride,
        padding,
        ceil_mode,
        count_include_pad: n.int("count_include_pad", 0) != 0,
    };
    let Some(s) = dsl_shape(&x.dims).and_then(|s| pool_out(s, &pool)) else {
        return Err(n.unsupported(format!(
            "the {kernel} window does not fit the padded {}×{} input",
            x.dims[2], x.dims[3]
        )));
    };
    let op = if max {
        Op::MaxPool(pool)
    } else {
        Op::AvgPool(pool)
    };
    Ok(Lowered::Layer(
        layer(op, vec![x.src]),
        vec![1, s.c, s.h, s.w],
    ))
}

pub(super) fn lower_bn(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&["epsilon", "momentum", "spatial", "training_mode", "is_test"])?;
    if let Some(a) = n.attr("training_mode")
        && a.i() != 0
    {
        return Err(n.bad_attr(a, "training_mode 0 (inference)"));
    }
    if let Some(a) = n.attr("spatial")
        && a.i() != 1
    {
        return Err(n.bad_attr(a, "spatial 1"));
    }
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[2, 4])?;
    let c = x.dims[1];
    let eps = n.float("epsilon", 1e-5);
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(n.bad_attr(
            n.attr("epsilon").unwrap_or(&AttributeProto::default()),
            "a positive epsilon",
        ));
    }
    let mut l = layer(Op::BatchNorm { eps }, vec![x.src]);
    for (i, suffix) in [
        (1, "weight"),
        (2, "bias"),
        (3, "running_mean"),
        (4, "running_var"),
    ] {
        let t = ctx.required_constant(n, i, suffix)?;
        let v = t.floats()?;
        if v.len() != c {
            return Err(n.unsupported(format!(
                "`{}` has {} values for {c} channels",
                t.name,
                v.len()
            )));
        }
        l.weights.push((suffix, vec![c], v.to_vec()));
    }
    l.preferred = preferred_name(n.input_name(1));
    Ok(Lowered::Layer(l, x.dims))
}

/// `x @ W + b`: the constant `c` added to a bias-free MatMul's output read only here
/// becomes that linear layer's bias (`None` when `x` is not such an output).
pub(super) fn matmul_bias(
    n: &Node,
    ctx: &mut Ctx,
    x: &Val,
    c: &Const,
) -> Result<Option<Lowered>, ImportError> {
    let Src::Layer(i) = x.src else {
        return Ok(None);
    };
    if ctx.layer_uses(i) != 1 {
        return Ok(None);
    }
    let Some(l) = ctx.layers.get_mut(i) else {
        return Ok(None);
    };
    let Op::Linear { out_features, bias } = &mut l.op else {
        return Ok(None);
    };
    if !l.from_matmul || *bias {
        return Ok(None);
    }
    let v = c.floats()?;
    let out = *out_features;
    let ok = c.dims.iter().filter(|&&d| d != 1).count() <= 1 && c.dims.len() <= 2;
    let data = if v.len() == out && ok {
        v.to_vec()
    } else if v.len() == 1 {
        vec![v[0]; out]
    } else {
        return Err(n.unsupported(format!(
            "bias `{}` of dims {:?} does not fit {out} features",
            c.name, c.dims
        )));
    };
    *bias = true;
    l.weights.push(("bias", vec![out], data));
    Ok(Some(Lowered::Alias(Value::Tensor(x.clone()))))
}

pub(super) fn lower_linear(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let gemm = n.node.op_type() == "Gemm";
    if gemm {
        n.check_attrs(&["alpha", "beta", "transA", "transB"])?;
        if let Some(a) = n.attr("transA")
            && a.i() != 0
        {
            return Err(n.bad_attr(a, "transA 0"));
        }
    } else {
        n.check_attrs(&[])?;
    }
    let x = ctx.tensor(n, 0)?;
    if x.dims.len() != 2 {
        return Err(n.unsupported(format!(
            "input dims {:?}; supported: [1, F] (flatten first)",
            x.dims
        )));
    }
    let k = x.dims[1];
    let b = ctx.required_constant(n, 1, "weight")?;
    let bv = b.floats()?;
    let trans_b = gemm && n.int("transB", 0) != 0;
    let &[r, c] = b.dims.as_slice() else {
        return Err(n.unsupported(format!("weight dims {:?}; a matrix is expected", b.dims)));
    };
    let (out, inner) = if trans_b { (r, c) } else { (c, r) };
    if inner != k || out == 0 {
        return Err(n.unsupported(format!(
            "weight dims {:?}{} do not fit {k} input features",
            b.dims,
            if trans_b { " (transposed)" } else { "" }
        )));
    }
    // PyTorch's linear weight is [out, in].
    let mut w: Vec<f32> = if trans_b {
        bv.to_vec()
    } else {
        let mut t = vec![0.0; bv.len()];
        for i in 0..inner {
            for o in 0..out {
                t[o * inner + i] = bv[i * out + o];
            }
        }
        t
    };
    let alpha = if gemm { n.float("alpha", 1.0) } else { 1.0 };
    let beta = if gemm { n.float("beta", 1.0) } else { 1.0 };
    if alpha != 1.0 {
        w.iter_mut().for_each(|v| *v *= alpha);
    }
    let bias = if gemm { ctx.constant(n, 2)? } else { None };
    let mut l = layer(
        Op::Linear {
            out_features: out,
            bias: bias.is_some(),
        },
        vec![x.src],
    );
    l.weights.push(("weight", vec![out, k], w));
    if let Some(c) = bias {
        let cv = c.floats()?;
        let mut data = if cv.len() == out && c.dims.iter().filter(|&&d| d != 1).count() <= 1 {
            cv.to_vec()
        } else if cv.len() == 1 {
            vec![cv[0]; out]
        } else {
            return Err(n.unsupported(format!(
                "C `{}` of dims {:?}; supported: [{out}], [1, {out}] or a scalar",
                c.name, c.dims
            )));
        };
        if beta != 1.0 {
            data.iter_mut().for_each(|v| *v *= beta);
        }
        l.weights.push(("bias", vec![out], data));
    }
    l.preferred = preferred_name(n.input_name(1));
    l.from_matmul = !gemm;
    Ok(Lowered::Layer(l, vec![1, out]))
}

pub(super) fn lower_pad(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let (pads, value, axes): (Vec<i64>, f32, Option<Vec<i64>>) = if n.opset >= 11 {
        n.check_attrs(&["mode"])?;
        let pads = ctx.required_constant(n, 1, "pads")?.ints()?.to_vec();
        let value = ctx
            .constant(n, 2)?
            .map(|c| scalar(n, &c, "constant value"))
            .transpose()?
            .unwrap_or(0.0);
        let axes = ctx
            .constant(n, 3)?
            .map(|c| c.ints().map(<[i64]>::to_vec))
            .transpose()?;
        (pads, value, axes)
    } else {
        n.check_attrs(&["mode", "pads", "value"])?;
        let pads = n
            .ints("pads")
            .ok_or_else(|| n.unsupported("pads is missing"))?
            .to_vec();
        (pads, n.float("value", 0.0), None)
    };
    if let Some(mode) = n.string("mode")
        && mode != "constant"
    {
        return Err(n.bad_attr(
            n.attr("mode").unwrap_or(&AttributeProto::default()),
            "mode constant",
        ));
    }
    if !value.is_finite() {
        return Err(n.unsupported(format!(
            "padding value {value}; a finite value is supported"
        )));
    }
    let axes: Vec<usize> = match axes {
        None => (0..4).collect(),
        Some(a) => a
            .iter()
            .map(|&v| if v < 0 { v + 4 } else { v })
            .map(|v| usize::try_from(v).ok().filter(|&v| v < 4))
            .collect::<Option<_>>()
            .ok_or_else(|| n.unsupported(format!("axes {a:?} out of range")))?,
    };
    if pads.len() != 2 * axes.len() {
        return Err(n.unsupported(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mut begin = [0i64; 4];
    let mut end = [0i64; 4];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i];
        end[a] = pads[i + axes.len()];
    }
    if begin[..2] != [0, 0] || end[..2] != [0, 0] {
        return Err(n.unsupported(format!(
            "pads {pads:?} pad the batch or channel axis; only height and width may be padded"
        )));
    }
    if begin
        .iter()
        .chain(&end)
        .any(|&p| !(0..=1 << 16).contains(&p))
    {
        return Err(n.unsupported(format!(
            "pads {pads:?}; negative pads (cropping) are not supported"
        )));
    }
    let padding = Pad2 {
        top: begin[2] as usize,
        left: begin[3] as usize,
        bottom: end[2] as usize,
        right: end[3] as usize,
    };
    let dims = vec![
        1,
        x.dims[1],
        x.dims[2] + padding.top + padding.bottom,
        x.dims[3] + padding.left + padding.right,
    ];
    if padding.is_zero() {
        return Ok(Lowered::Alias(Value::Tensor(x)));
    }
    Ok(Lowered::Layer(
        layer(Op::Pad { padding, value }, vec![x.src]),
        dims,
    ))
}

/// ConvTranspose with explicit pads (`auto_pad` NOTSET or VALID; `output_shape` is not
/// supported: exporters from PyTorch write pads and output_padding).
pub(super) fn lower_conv_transpose(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "output_padding",
        "pads",
        "strides",
    ])?;
    match n.string("auto_pad").as_deref() {
        None | Some("NOTSET") | Some("VALID") => {}
        Some(_) => {
            return Err(n.bad_attr(
                n.attr("auto_pad").unwrap_or(&AttributeProto::default()),
                "auto_pad NOTSET or VALID (explicit pads)",
            ));
        }
    }
    let (x, w, [c, mg, kh, kw]) =
        input_and_weight(n, ctx, "transposed convolutions ([C, M/group, kH, kW])")?;
    let group = n.int("group", 1);
    if !(1..=c.max(1) as i64).contains(&group)
        || c != x.dims[1]
        || mg == 0
        || kh == 0
        || kw == 0
        || c % group as usize != 0
    {
        return Err(n.unsupported(format!(
            "weight dims {:?} with group {group} do not fit an input of {} channels",
            w.dims, x.dims[1]
        )));
    }
    let kernel = Hw { h: kh, w: kw };
    let stride = pair(n, "strides", 1, 1)?;
    let dilation = pair(n, "dilations", 1, 1)?;
    let output_padding = pair(n, "output_padding", 0, 0)?;
    if output_padding.h >= stride.h.max(dilation.h) || output_padding.w >= stride.w.max(dilation.w)
    {
        return Err(n.bad_attr(
            n.attr("output_padding")
                .unwrap_or(&AttributeProto::default()),
            "output padding smaller than the stride or the dilation",
        ));
    }
    let padding = if n.string("auto_pad").as_deref() == Some("VALID") {
        Pad2::default()
    } else {
        spatial_pads(n, (x.dims[2], x.dims[3]), kernel, stride, dilation)?
    };
    let m = mg * group as usize;
    let bias = ctx.constant(n, 2)?;
    let op = Op::ConvTranspose(ConvTranspose2d {
        out_channels: m,
        kernel,
        stride,
        padding,
        output_padding,
        dilation,
        groups: group as usize,
        bias: bias.is_some(),
    });
    let Some(shape) = dsl_shape(&x.dims).and_then(|s| op.output_shape(&[s]).ok()) else {
        return Err(n.unsupported(format!(
            "the pads {padding} leave no output of the {}×{} input",
            x.dims[2], x.dims[3]
        )));
    };
    let mut l = layer(op, vec![x.src]);
    weight_and_bias(n, &mut l, &w, bias.as_deref(), m)?;
    Ok(Lowered::Layer(l, vec![1, m, shape.h, shape.w]))
}

/// Resize (and the older Upsample) in `nearest` mode by whole factors on H and W, given as
/// scales or as sizes, in the coordinate modes where that is a plain repeat.
pub(super) fn lower_resize(n: &Node, ctx: &mut Ctx) -> Result<Lowered, ImportError> {
    n.check_attrs(&[
        "mode",
        "coordinate_transformation_mode",
        "nearest_mode",
        "cubic_coeff_a",
        "exclude_outside",
        "extrapolation_value",
        "antialias",
        "axes",
        "keep_aspect_ratio_policy",
        "scales",
    ])?;
    let x = ctx.tensor(n, 0)?;
    rank(n, &x, &[4])?;
    let mode = n.string("mode").unwrap_or_else(|| "nearest".into());
    if mode != "nearest" {
        return Err(n.bad_attr(
            n.attr("mode").unwrap_or(&AttributeProto::default()),
            "mode `nearest` (bilinear and cubic resizing are not supported yet)",
        ));
    }
    let coord = n
        .string("coordinate_transformation_mode")
        .unwrap_or_else(|| "half_pixel".into());
    let nearest = n
        .string("nearest_mode")
        .unwrap_or_else(|| "round_prefer_floor".into());
    // With a whole factor s, output o = k·s + j maps back to k + (j − (s − 1)/2)/s in the
    // half-pixel modes (rounded: k) and to k + j/s in the asymmetric one (floored: k).
    let repeats = match coord.as_str() {
        "half_pixel" | "pytorch_half_pixel" => nearest.starts_with("round_prefer"),
        "asymmetric" => nearest == "floor",
        _ => false,
    };
    if n.node.op_type() == "Resize" && !repeats {
        return Err(n.unsupported(format!(
            "coordinate_transformation_mode `{coord}` with nearest_mode `{nearest}`; supported: \
             asymmetric with floor (PyTorch's nearest), half_pixel with round_prefer_floor/ceil"
        )));
    }
    if let Some(a) = n.attr("axes") {
        return Err(n.bad_attr(a, "no axes (all four dimensions)"));
    }
    // Scales: the `scales` attribute (Upsample-7), input 1 (Upsample-9, Resize-10) or input 2
    // (Resize-11 on); sizes: input 3.
    let (scales_at, sizes_at) = match (n.node.op_type(), n.opset) {
        ("Upsample", _) | ("Resize", 10) => (1, usize::MAX),
        _ => (2, 3),
    };
    let factor = |got: f64, len: usize| -> Option<usize> {
        let s = got.round();
        ((got - s).abs() < 1e-6 && s >= 1.0 && s <= (1 << 16) as f64 && len > 0)
            .then_some(s as usize)
    };
    let (h, w) = (x.dims[2], x.dims[3]);
    let scales: Option<Vec<f64>> = match n.attr("scales") {
        Some(a) => Some(a.floats.iter().map(|&v| v as f64).collect()),
        None => match ctx.constant(n, scales_at)? {
            Some(c) if c.len() > 0 => Some(c.floats()?.iter().map(|&v| v as f64).collect()),
            _ => None,
        },
    };
    let scale = match (scales, sizes_at) {
        (Some(s), _) => match s.as_slice() {
            [b, c, sh, sw] if *b == 1.0 && *c == 1.0 => factor(*sh, h).zip(factor(*sw, w)),
            _ => None,
        },
        (None, i) if i != usize::MAX => match ctx.constant(n, i)? {
            Some(c) => match c.ints()? {
                &[1, cc, oh, ow] if cc == x.dims[1] as i64 && oh > 0 && ow > 0 => {
                    let (oh, ow) = (oh as usize, ow as usize);
                    (oh % h == 0 && ow % w == 0)
                        .then(|| (oh / h, ow / w))
                        .filter(|&(a, b)| a >= 1 && b >= 1)
                }
                _ => None,
            },
            None => None,
        },
        _ => None,
    };
    let Some((sh, sw)) = scale else {
        return Err(n.unsupported(
            "scales or sizes that are not whole factors of height and width (batch and channel \
             scales 1); supported: nearest upsampling by integers",
        ));
    };
    if (sh, sw) == (1, 1) {
        return Ok(Lowered::Alias(Value::Tensor(x)));
    }
    let dims = vec![1, x.dims[1], h * sh, w * sw];
    Ok(Lowered::Layer(
        layer(
            Op::Upsample(Upsample {
                scale: Hw { h: sh, w: sw },
                crop: Pad2::default(),
            }),
            vec![x.src],
        ),
        dims,
    ))
}
