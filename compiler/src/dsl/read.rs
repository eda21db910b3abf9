//! Small typed readers over the YAML node tree that report every problem with its place.

use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::dsl::yaml::{Node, Value};

/// The keys of one YAML map, read one by one; [`Fields::finish`] reports the keys nobody
/// asked for (with a "did you mean").
#[derive(Debug)]
pub struct Fields<'a> {
    what: &'static str,
    node: &'a Node,
    entries: &'a [(Node, Node)],
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    /// `None` (and a diagnostic) when `node` is not a map.
    pub fn new(node: &'a Node, what: &'static str, diags: &mut Diagnostics) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                what,
                node,
                entries,
                used: vec![false; entries.len()],
                known: Vec::new(),
            }),
            other => {
                diags.push(
                    Diagnostic::error(format!("{what} must be a map, found {}", other.describe()))
                        .at(&node.span, "expected `key: value` lines"),
                );
                None
            }
        }
    }

    pub fn get(&mut self, key: &'static str) -> Option<&'a Node> {
        self.known.push(key);
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    pub fn require(&mut self, key: &'static str, diags: &mut Diagnostics) -> Option<&'a Node> {
        let v = self.get(key);
        if v.is_none() {
            diags.push(
                Diagnostic::error(format!("{} has no `{key}`", self.what))
                    .at(&self.node.span, format!("`{key}:` missing here")),
            );
        }
        v
    }

    pub fn finish(self, diags: &mut Diagnostics) {
        for ((k, _), used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let name = k
                .as_str()
                .map_or_else(|| format!("{:?}", k.value), str::to_string);
            let help = match did_you_mean(&name, self.known.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("{} takes: {}", self.what, self.known.join(", ")),
            };
            diags.push(
                Diagnostic::error(format!("unknown key `{name}` in {}", self.what))
                    .at(&k.span, "unknown key")
                    .help(help),
            );
        }
    }
}

pub fn string<'a>(node: &'a Node, what: &str, diags: &mut Diagnostics) -> Option<&'a str> {
    match &node.value {
        Value::Str(s) => Some(s),
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "{what} must be a string, found {}",
                    other.describe()
                ))
                .at(&node.span, "expected a string"),
            );
            None
        }
    }
}

/// An integer in `[min, max]`.
pub fn integer(
    node: &Node,
    what: &str,
    min: i64,
    max: i64,
    diags: &mut Diagnostics,
) -> Option<i64> {
    match node.value {
        Value::Int(i) if (min..=max).contains(&i) => Some(i),
        Value::Int(i) => {
            diags.push(
                Diagnostic::error(format!("{what} must be between {min} and {max}, found {i}"))
                    .at(&node.span, "out of range"),
            );
            None
        }
        ref other => {
            diags.push(
                Diagnostic::error(format!(
                    "{what} must be an integer, found {}",
                    other.describe()
                ))
                .at(&node.span, "expected an integer"),
            );
            None
        }
    }
}

/// A finite number satisfying `ok`, described by `want` ("a positive number").
pub fn number(
    node: &Node,
    what: &str,
    want: &str,
    ok: impl Fn(f64) -> bool,
    diags: &mut Diagnostics,
) -> Option<f64> {
    match node.as_f64() {
        Some(v) if v.is_finite() && ok(v) => Some(v),
        Some(v) => {
            diags.push(
                Diagnostic::error(format!("{what} must be {want}, found {v}"))
                    .at(&node.span, "out of range"),
            );
            None
        }
        None => {
            diags.push(
                Diagnostic::error(format!(
                    "{what} must be {want}, found {}",
                    node.value.describe()
                ))
                .at(&node.span, "expected a number"),
            );
            None
        }
    }
}

pub fn boolean(node: &Node, what: &str, diags: &mut Diagnostics) -> Option<bool> {
    match node.value {
        Value::Bool(b) => Some(b),
        ref other => {
            diags.push(
                Diagnostic::error(format!(
                    "{what} must be `true` or `false`, found {}",
                    other.describe()
                ))
                .at(&node.span, "expected a boolean"),
            );
            None
        }
    }
}

pub fn list<'a>(node: &'a Node, what: &str, diags: &mut Diagnostics) -> Option<&'a [Node]> {
    match &node.value {
        Value::List(items) => Some(items),
        other => {
            diags.push(
                Diagnostic::error(format!("{what} must be a list, found {}", other.describe()))
                    .at(&node.span, "expected a list `[…]` or `- item` lines"),
            );
            None
        }
    }
}

/// A list of exactly `n` numbers.
pub fn numbers(
    node: &Node,
    what: &str,
    n: usize,
    ok: impl Fn(f64) -> bool + Copy,
    want: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<f64>> {
    let items = list(node, what, diags)?;
    if items.len() != n {
        diags.push(
            Diagnostic::error(format!(
                "{what} must have {n} values (one per input channel), found {}",
                items.len()
            ))
            .at(&node.span, format!("expected {n} values")),
        );
        return None;
    }
    let before = diags.len();
    let v: Vec<f64> = items
        .iter()
        .filter_map(|i| number(i, what, want, ok, diags))
        .collect();
    (diags.len() == before).then_some(v)
}

/// True for names usable as layer, entry and node names: `[A-Za-z_][A-Za-z0-9_.]*`.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}
