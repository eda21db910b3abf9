//! What every lowering works with: the node being lowered ([`Node`]: attributes, inputs,
//! error messages), the values seen so far ([`Ctx`], [`Val`], [`Value`]), what a node becomes
//! ([`Lowered`]), and the small checks and constructors the operators share.

use std::collections::HashMap;
use std::rc::Rc;

use crate::onnx::error::ImportError;
use crate::onnx::proto::{AttributeProto, NodeProto};
use crate::onnx::tensor::Const;
use crate::onnx::types::{Layer, Src};
use adcnn_core::ops::{Op, Shape};

/// A runtime tensor: its producer and ONNX dims (batch included, always 1).
#[derive(Clone, Debug)]
pub(super) struct Val {
    pub(super) src: Src,
    pub(super) dims: Vec<usize>,
}

#[derive(Clone, Debug)]
pub(super) enum Value {
    Tensor(Val),
    Const(Rc<Const>),
}

/// What one node becomes.
pub(super) enum Lowered {
    Layer(Box<Layer>, Vec<usize>),
    Alias(Value),
}

/// The node being lowered, for attributes, inputs and error messages.
pub(super) struct Node<'a> {
    pub(super) node: &'a NodeProto,
    pub(super) name: String,
    pub(super) opset: i64,
}

impl<'a> Node<'a> {
    pub(super) fn op(&self) -> String {
        self.node.op_type().to_string()
    }

    pub(super) fn unsupported(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            op_type: self.op(),
            node: self.name.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn bad_attr(&self, a: &AttributeProto, supported: impl Into<String>) -> ImportError {
        ImportError::UnsupportedAttribute {
            op_type: self.op(),
            node: self.name.clone(),
            attribute: a.name().to_string(),
            value: describe_attr(a),
            supported: supported.into(),
        }
    }

    /// Rejects attributes not in `allowed`.
    pub(super) fn check_attrs(&self, allowed: &[&str]) -> Result<(), ImportError> {
        for a in &self.node.attribute {
            if !allowed.contains(&a.name()) {
                let supported = if allowed.is_empty() {
                    "no attributes".to_string()
                } else {
                    format!("the attributes {}", allowed.join(", "))
                };
                return Err(self.bad_attr(a, supported));
            }
        }
        Ok(())
    }

    pub(super) fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name() == name)
    }

    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i())
    }

    pub(super) fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f())
    }

    pub(super) fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(a.s()).into_owned())
    }

    /// The name of input `i`, if present and not empty (ONNX's "optional input omitted").
    pub(super) fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }
}

fn describe_attr(a: &AttributeProto) -> String {
    if !a.ints.is_empty() {
        format!("{:?}", a.ints)
    } else if !a.floats.is_empty() {
        format!("{:?}", a.floats)
    } else if a.s.is_some() {
        format!("{:?}", String::from_utf8_lossy(a.s()))
    } else if a.t.is_some() {
        "a tensor".into()
    } else if a.f.is_some() {
        format!("{}", a.f())
    } else if a.i.is_some() {
        format!("{}", a.i())
    } else {
        "(empty)".into()
    }
}

pub(super) struct Ctx<'a> {
    pub(super) layers: Vec<Layer>,
    pub(super) values: HashMap<&'a str, Value>,
    /// How many live nodes (and the graph output) read each value.
    pub(super) uses: HashMap<&'a str, usize>,
    /// Per layer: the names of the values that are its output (several when later nodes
    /// were folded into it).
    pub(super) names: Vec<Vec<&'a str>>,
    /// Values constant folding may still make ([`crate::onnx::fold::MAX_FOLDED_ELEMENTS`] in all).
    pub(super) fold_budget: std::cell::Cell<usize>,
}

impl<'a> Ctx<'a> {
    /// How many live nodes (and the graph output) read layer `i`'s output, under any name.
    pub(super) fn layer_uses(&self, i: usize) -> usize {
        self.names.get(i).map_or(0, |names| {
            names
                .iter()
                .map(|v| self.uses.get(v).copied().unwrap_or(0))
                .sum()
        })
    }

    pub(super) fn tensor(&self, n: &Node, i: usize) -> Result<Val, ImportError> {
        let name = n
            .input_name(i)
            .ok_or_else(|| n.unsupported(format!("input {i} is missing")))?;
        match self.values.get(name) {
            Some(Value::Tensor(v)) => Ok(v.clone()),
            Some(Value::Const(_)) => Err(n.unsupported(format!(
                "input {i} (`{name}`) is a constant; only the network's data flows there"
            ))),
            None => Err(missing(n, name)),
        }
    }

    pub(super) fn constant(&self, n: &Node, i: usize) -> Result<Option<Rc<Const>>, ImportError> {
        let Some(name) = n.input_name(i) else {
            return Ok(None);
        };
        match self.values.get(name) {
            Some(Value::Const(c)) => Ok(Some(c.clone())),
            Some(Value::Tensor(_)) => Err(n.unsupported(format!(
                "input {i} (`{name}`) is computed by the graph; it must be a constant (initializer)"
            ))),
            None => Err(missing(n, name)),
        }
    }

    pub(super) fn required_constant(
        &self,
        n: &Node,
        i: usize,
        what: &str,
    ) -> Result<Rc<Const>, ImportError> {
        self.constant(n, i)?
            .ok_or_else(|| n.unsupported(format!("the {what} (input {i}) is missing")))
    }
}

pub(super) fn missing(n: &Node, value: &str) -> ImportError {
    ImportError::MissingValue {
        op_type: n.op(),
        node: n.name.clone(),
        value: value.to_string(),
    }
}

/// Number of elements, saturating (dims of hostile models may overflow).
pub(super) fn prod(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// The DSL shape of ONNX dims: `[1, C, H, W]` → `[C, H, W]`, `[1, N]` → `[N, 1, 1]`.
pub(super) fn dsl_shape(dims: &[usize]) -> Option<Shape> {
    match dims {
        [1, c, h, w] => Some(Shape::new(*c, *h, *w)),
        [1, n] => Some(Shape::new(*n, 1, 1)),
        _ => None,
    }
}

pub(super) fn layer(op: Op, inputs: Vec<Src>) -> Box<Layer> {
    Box::new(Layer {
        op,
        inputs,
        weights: Vec::new(),
        preferred: None,
        path: String::new(),
        op_seg: String::new(),
        op_type: String::new(),
        from_matmul: false,
        name: String::new(),
    })
}

/// `features.0.weight` → `features.0`, when that is a valid layer name.
pub(super) fn preferred_name(value_name: Option<&str>) -> Option<String> {
    let base = value_name?.strip_suffix(".weight")?;
    crate::dsl::read::is_valid_name(base)
        .then(|| base.to_string())
        .filter(|b| b != crate::dsl::network::INPUT)
}

pub(super) fn rank(n: &Node, x: &Val, allowed: &[usize]) -> Result<(), ImportError> {
    if allowed.contains(&x.dims.len()) {
        Ok(())
    } else {
        let what = if allowed == [4] {
            "[N, C, H, W]"
        } else {
            "[N, C, H, W] or [N, F]"
        };
        Err(n.unsupported(format!(
            "input dims {:?}; supported: {what} with N = 1",
            x.dims
        )))
    }
}
