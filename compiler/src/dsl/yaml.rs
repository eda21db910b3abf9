//! YAML → a tree of spanned nodes. serde-saphyr does the YAML syntax (with its size and alias
//! budgets); everything after that walks this tree, so that every later error can point at
//! the exact node and all errors of a file are collected, not just the first.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::diag::{Diagnostic, FileId, Span};

/// Largest YAML file we read (a network description is a few KiB; this is a sanity bound).
pub const MAX_YAML_BYTES: usize = 4 << 20;

/// YAML events aliases may replay in one file, all aliases together (anchors and aliases
/// are rare in network files; a document that repeats aliases at many levels is refused).
pub const MAX_ALIAS_REPLAYED_EVENTS: usize = 20_000;

/// A YAML node with its place in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    /// Keys in file order.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What the value is, for messages: "a string", "a list", …
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

/// Parses YAML text into a node tree. A syntax error becomes one diagnostic at its location.
pub fn parse(text: &str, file: FileId) -> Result<Node, Diagnostic> {
    if text.len() > MAX_YAML_BYTES {
        return Err(Diagnostic::error(format!(
            "file is {} bytes; network and cluster files are limited to {MAX_YAML_BYTES} bytes",
            text.len()
        )));
    }
    // Aliases expand to at most MAX_ALIAS_REPLAYED_EVENTS events in all: a "billion laughs"
    // document stops there, long before serde-saphyr's own node budget (250 000).
    let options = serde_saphyr::options! {
        with_snippet: false,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_ALIAS_REPLAYED_EVENTS,
        },
    };
    match serde_saphyr::from_str_with_options::<Option<Spanned<Raw>>>(text, options) {
        Ok(Some(raw)) => Ok(convert(raw, file, text)),
        Ok(None) => Err(Diagnostic::error("the file is empty")
            .at(&Span::new(file, 0..0), "expected a `network:` section here")),
        Err(e) => {
            let offset = e
                .location()
                .and_then(|l| byte_offset(&l, text))
                .unwrap_or(0);
            let message = strip_location(&e.to_string());
            let help = if message.contains("budget") || message.contains("alias") {
                "the document expands to more than the parser's budget allows (aliases repeated \
                 at many levels?); network and cluster files are small"
            } else {
                "check indentation, brackets and quotes around this point"
            };
            Err(Diagnostic::error(format!("invalid YAML: {message}"))
                .at(&Span::new(file, offset..offset + 1), "here")
                .help(help))
        }
    }
}

fn strip_location(message: &str) -> String {
    // serde-saphyr appends " at line L column C"; our code frame shows the place instead.
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn byte_offset(loc: &Location, text: &str) -> Option<usize> {
    if let Some(b) = loc.span().byte_offset() {
        return usize::try_from(b).ok().map(|b| b.min(text.len()));
    }
    // Fall back on line/column (1-based, characters).
    let (line, col) = (loc.line() as usize, loc.column() as usize);
    if line == 0 {
        return None;
    }
    let start: usize = text
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let rest = &text[start.min(text.len())..];
    let within = rest
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(rest.len(), |(i, _)| i);
    Some(start + within)
}

fn convert(raw: Spanned<Raw>, file: FileId, text: &str) -> Node {
    let loc = &raw.referenced;
    let start = byte_offset(loc, text).unwrap_or(0);
    let len = loc
        .span()
        .byte_len()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::List(items) => {
            Value::List(items.into_iter().map(|i| convert(i, file, text)).collect())
        }
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k, file, text), convert(v, file, text)))
                .collect(),
        ),
    };
    let len = if len == 0 {
        scalar_len(&value, &text[start.min(text.len())..])
    } else {
        len
    };
    Node {
        value,
        span: Span::new(file, start..(start + len).min(text.len())),
    }
}

/// Length of a scalar as written, when the parser gives only its start.
fn scalar_len(value: &Value, rest: &str) -> usize {
    match value {
        Value::List(_) | Value::Map(_) => 1,
        _ => rest
            .find(['\n', '#'])
            .unwrap_or(rest.len())
            .max(1)
            .min(rest.trim_end().len().max(1)),
    }
}

/// The serde-facing twin of [`Value`], before spans are attached.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceMap;
    use std::path::Path;

    fn parse_str(text: &str) -> Result<Node, Diagnostic> {
        let mut sm = SourceMap::new();
        let f = sm.add(Path::new("t.yaml"), text.to_string());
        parse(text, f)
    }

    #[test]
    fn spans_point_at_values() {
        let text = "network:\n  layers:\n    - c1: conv(4, k=3)\n";
        let root = parse_str(text).expect("parses");
        let layers = root
            .get("network")
            .and_then(|n| n.get("layers"))
            .expect("layers");
        let Value::List(items) = &layers.value else {
            panic!("list expected")
        };
        let (k, v) = &items[0].as_map().expect("map")[0];
        assert_eq!(&text[k.span.range.clone()], "c1");
        assert_eq!(&text[v.span.range.clone()], "conv(4, k=3)");
    }

    #[test]
    fn syntax_error_is_located() {
        let text = "network:\n  input: { shape: [3, 3 }\n";
        let d = parse_str(text).expect_err("unclosed bracket");
        let span = d.span.expect("located");
        assert!(span.range.start >= 9, "{span:?}");
    }
}
