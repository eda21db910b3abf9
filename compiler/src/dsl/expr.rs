//! The pest grammar for layer expressions and its AST.
//!
//! Offsets in the AST are relative to the expression text; [`parse`] shifts them by the
//! place the expression starts in its file, so spans point into the YAML file.

use pest::Parser;
use pest::iterators::Pair;

use crate::diag::{Diagnostic, FileId, Span};

#[derive(pest_derive::Parser)]
#[grammar = "dsl/expr.pest"]
struct ExprParser;

/// A chain `a, b -> op1 | op2 | …`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// Explicit inputs of the first operator; empty means "the previous entry".
    pub sources: Vec<Name>,
    pub ops: Vec<Call>,
}

/// A name with its place: a layer reference or an alias.
#[derive(Clone, Debug, PartialEq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

/// One operator application `kind(args) as alias`.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub kind: Name,
    pub args: Vec<Arg>,
    pub alias: Option<Name>,
    /// The whole operator, for messages about it.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub keyword: Option<Name>,
    pub value: ArgValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A bare name: a layer reference (`add(stem)`) or an enumerated value.
    Name(String),
    List(Vec<(ArgValue, Span)>),
}

impl ArgValue {
    pub fn describe(&self) -> &'static str {
        match self {
            ArgValue::Int(_) => "an integer",
            ArgValue::Float(_) => "a number",
            ArgValue::Bool(_) => "a boolean",
            ArgValue::Name(_) => "a name",
            ArgValue::List(_) => "a list",
        }
    }
}

/// Where an expression's text lies in its file. `map[i]` is the file offset of the
/// expression's byte `i` (one extra entry for the end). Without a map (the YAML scalar is not
/// written verbatim: escapes, block scalars) every span covers the whole scalar instead.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: FileId,
    pub whole: std::ops::Range<usize>,
    pub map: Option<Vec<usize>>,
}

impl Origin {
    fn span(&self, r: std::ops::Range<usize>) -> Span {
        match &self.map {
            Some(map) if r.end < map.len() => {
                // An end offset maps past the character before it, not onto the next one.
                let end = if r.end > r.start {
                    map[r.end - 1] + 1
                } else {
                    map[r.start]
                };
                Span::new(self.file, map[r.start]..end.max(map[r.start]))
            }
            _ => Span::new(self.file, self.whole.clone()),
        }
    }
}

/// Parses a layer expression. A syntax error is one diagnostic pointing at the offending
/// character.
pub fn parse(text: &str, origin: &Origin) -> Result<Chain, Diagnostic> {
    let mut pairs =
        ExprParser::parse(Rule::chain, text).map_err(|e| syntax_error(e, text, origin))?;
    let chain = pairs
        .next()
        .ok_or_else(|| Diagnostic::error("empty layer expression"))?;
    let mut sources = Vec::new();
    let mut ops = Vec::new();
    for p in chain.into_inner() {
        match p.as_rule() {
            Rule::sources => {
                sources = p
                    .into_inner()
                    .filter(|n| n.as_rule() == Rule::name)
                    .map(|n| name(n, origin))
                    .collect()
            }
            Rule::op => ops.push(call(p, origin)),
            _ => {}
        }
    }
    Ok(Chain { sources, ops })
}

fn name(p: Pair<Rule>, origin: &Origin) -> Name {
    let s = p.as_span();
    Name {
        text: s.as_str().to_string(),
        span: origin.span(s.start()..s.end()),
    }
}

fn call(p: Pair<Rule>, origin: &Origin) -> Call {
    let s = p.as_span();
    let span = origin.span(s.start()..s.end());
    let mut kind = None;
    let mut args = Vec::new();
    let mut alias = None;
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::ident => kind = Some(name(q, origin)),
            Rule::call => {
                args = q
                    .into_inner()
                    .filter(|a| a.as_rule() == Rule::arg)
                    .map(|a| arg(a, origin))
                    .collect()
            }
            Rule::alias => {
                alias = q
                    .into_inner()
                    .find(|n| n.as_rule() == Rule::suffix)
                    .map(|n| name(n, origin))
            }
            _ => {}
        }
    }
    let kind = kind.unwrap_or_else(|| Name {
        text: String::new(),
        span: span.clone(),
    });
    Call {
        kind,
        args,
        alias,
        span,
    }
}

fn arg(p: Pair<Rule>, origin: &Origin) -> Arg {
    let s = p.as_span();
    let span = origin.span(s.start()..s.end());
    let mut keyword = None;
    let mut value = ArgValue::Bool(false);
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::keyword => keyword = Some(name(q, origin)),
            Rule::equals => {}
            _ => value = arg_value(q, origin).0,
        }
    }
    Arg {
        keyword,
        value,
        span,
    }
}

fn arg_value(p: Pair<Rule>, origin: &Origin) -> (ArgValue, Span) {
    let s = p.as_span();
    let span = origin.span(s.start()..s.end());
    let text = s.as_str();
    let v = match p.as_rule() {
        Rule::number => match text.parse::<i64>() {
            Ok(i) => ArgValue::Int(i),
            // The grammar admits only decimal numbers, so this parse cannot fail on its
            // text; an overflowing integer becomes a float and is rejected where an
            // integer is required.
            Err(_) => ArgValue::Float(text.parse::<f64>().unwrap_or(f64::NAN)),
        },
        Rule::boolean => ArgValue::Bool(text == "true"),
        Rule::list => ArgValue::List(
            p.into_inner()
                .filter(|q| is_value(q.as_rule()))
                .map(|q| arg_value(q, origin))
                .collect(),
        ),
        _ => ArgValue::Name(text.to_string()),
    };
    (v, span)
}

fn is_value(r: Rule) -> bool {
    matches!(r, Rule::list | Rule::number | Rule::boolean | Rule::name)
}

fn syntax_error(e: pest::error::Error<Rule>, text: &str, origin: &Origin) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.dedup();
            names
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let found = text[pos.min(text.len())..].chars().next();
    let message = match found {
        Some(c) => format!("unexpected `{c}` in layer expression"),
        None => "layer expression ends too early".to_string(),
    };
    let label = if expected.is_empty() {
        "here".to_string()
    } else {
        format!("expected {}", join_or(&expected))
    };
    let end = pos + found.map_or(0, char::len_utf8);
    Diagnostic::error(message)
        .at(&origin.span(pos..end), label)
        .help(
            "a layer expression is `op(args) | op | …`, e.g. `conv(64, k=3, p=1) | bn | relu`; \
         inputs go first: `a, b -> add | relu`",
        )
}

fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::op | Rule::ident => "an operator",
        Rule::name | Rule::sources => "a layer name",
        Rule::suffix => "a name",
        Rule::call | Rule::lparen => "`(`",
        Rule::rparen => "`)`",
        Rule::comma => "`,`",
        Rule::pipe => "`|`",
        Rule::arrow => "`->`",
        Rule::equals => "`=`",
        Rule::lbracket => "`[`",
        Rule::rbracket => "`]`",
        Rule::alias => "`as NAME`",
        Rule::arg | Rule::value => "an argument",
        Rule::keyword => "an argument name",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::list => "a list `[…]`",
        Rule::EOI => "the end of the expression",
        _ => return None,
    })
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceMap;
    use std::path::Path;

    fn origin(text: &str) -> Origin {
        let mut sm = SourceMap::new();
        let file = sm.add(Path::new("t"), text.to_string());
        Origin {
            file,
            whole: 0..text.len(),
            map: Some((0..=text.len()).collect()),
        }
    }

    #[test]
    fn parses_chain_with_sources_args_and_aliases() {
        let text = "a, b.1 -> concat | conv(64, k=[3, 1], p=1, bias=false) as c1 | leaky_relu(0.1)";
        let chain = parse(text, &origin(text)).expect("parses");
        assert_eq!(
            chain
                .sources
                .iter()
                .map(|n| n.text.as_str())
                .collect::<Vec<_>>(),
            ["a", "b.1"]
        );
        assert_eq!(chain.ops.len(), 3);
        let conv = &chain.ops[1];
        assert_eq!(conv.kind.text, "conv");
        assert_eq!(conv.alias.as_ref().map(|a| a.text.as_str()), Some("c1"));
        assert_eq!(conv.args[0].value, ArgValue::Int(64));
        assert_eq!(
            conv.args[1].keyword.as_ref().map(|k| k.text.as_str()),
            Some("k")
        );
        assert_eq!(conv.args[3].value, ArgValue::Bool(false));
        assert_eq!(chain.ops[2].args[0].value, ArgValue::Float(0.1));
        assert_eq!(
            &text[conv.span.range.clone()],
            "conv(64, k=[3, 1], p=1, bias=false) as c1"
        );
    }

    #[test]
    fn syntax_error_points_at_the_character() {
        let text = "conv(64, k=3 | relu";
        let d = parse(text, &origin(text)).expect_err("unclosed call");
        assert_eq!(d.span.map(|s| s.range), Some(13..14));
    }
}
