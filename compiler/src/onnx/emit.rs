//! Layers → DSL entries and YAML text.
//!
//! Layers are ordered by a depth-first walk from the output that visits a join's side inputs
//! before its main input, so a residual block's shortcut comes first and its main path runs
//! straight into the `add`. Runs of single-consumer layers whose names are siblings (one parent)
//! become one entry with a chain (`features: conv(…) | relu | …`), members named by position
//! or `as SUFFIX`; everything else is one entry per layer. Names are always the layers' own,
//! so the weights file's tensor names match.

use std::collections::{HashMap, HashSet};

use super::types::{Entry, Imported, Layer, Src};
use adcnn_core::ops::Op;

/// A float as the DSL reads it back to the same `f32`.
pub fn num(v: f32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-4..1e15).contains(&a) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// One operator as DSL text, without the names of extra inputs.
fn render(op: &Op) -> String {
    match op {
        Op::BatchNorm { eps } if *eps == 1e-5 => "bn".into(),
        Op::BatchNorm { eps } => format!("bn(eps={})", num(*eps)),
        Op::Clip { min, max } if *min == 0.0 && *max == 6.0 => "relu6".into(),
        Op::Clip { min, max } => format!("clip({}, {})", num(*min), num(*max)),
        Op::LeakyRelu { slope } => format!("leaky_relu({})", num(*slope)),
        Op::Pad { padding, value } if *value == 0.0 => format!("pad({padding})"),
        Op::Pad { padding, value } => format!("pad({padding}, value={})", num(*value)),
        Op::Affine { scale, shift } => {
            format!("affine(scale={}, shift={})", num(*scale), num(*shift))
        }
        Op::HardSigmoid { alpha, beta } => {
            format!("hardsigmoid(alpha={}, beta={})", num(*alpha), num(*beta))
        }
        other => other.to_string(),
    }
}

/// The order in which layers are written: post-order from the output, side inputs first.
fn order(layers: &[Layer]) -> Vec<usize> {
    let n = layers.len();
    let mut done = vec![false; n];
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(n);
    let Some(last) = n.checked_sub(1) else {
        return out;
    };
    let mut stack = vec![(last, false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            if !done[v] {
                done[v] = true;
                out.push(v);
            }
            continue;
        }
        if seen[v] {
            continue;
        }
        seen[v] = true;
        stack.push((v, true));
        let ins = &layers[v].inputs;
        // Popped in the order inputs[1], inputs[2], …, inputs[0].
        let mut push = |s: &Src| {
            if let Src::Layer(i) = s
                && !seen[*i]
            {
                stack.push((*i, false));
            }
        };
        if let Some(first) = ins.first() {
            push(first);
        }
        for s in ins.iter().skip(1).rev() {
            push(s);
        }
    }
    out
}

/// The parent both names share when they are siblings (`layer1.0.conv1`, `layer1.0.bn1` →
/// `layer1.0`).
fn common_parent(a: &str, b: &str) -> Option<String> {
    let pa = a.rsplit_once('.')?.0;
    let pb = b.rsplit_once('.')?.0;
    (pa == pb).then(|| pa.to_string())
}

/// Groups the layers into entries; returns them and the number of layers.
pub fn entries(layers: &[Layer]) -> (Vec<Entry>, usize) {
    let order = order(layers);
    // `x + f(x)` is written `f(x) + x` when `f(x)` comes just before: floating-point addition
    // of two values is commutative, and the chain then reads on without `->`.
    let mut inputs: Vec<Vec<Src>> = layers.iter().map(|l| l.inputs.clone()).collect();
    for w in order.windows(2) {
        let (before, i) = (Src::Layer(w[0]), w[1]);
        if layers[i].op == Op::Add
            && inputs[i].len() == 2
            && inputs[i][1] == before
            && inputs[i][0] != before
        {
            inputs[i].swap(0, 1);
        }
    }
    let mut consumers = vec![0usize; layers.len()];
    for ins in &inputs {
        for s in ins {
            if let Src::Layer(i) = s {
                consumers[*i] += 1;
            }
        }
    }
    let layer_names: HashSet<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    let mut used_entries: HashSet<String> = HashSet::new();
    // A chain's last layer is referred to by its entry's name.
    let mut entry_of: HashMap<usize, String> = HashMap::new();

    let mut out = Vec::new();
    let mut prev = Src::Input;
    let mut k = 0;
    while k < order.len() {
        // Extend a chain from order[k] as far as it goes.
        let mut chain = vec![order[k]];
        let mut prefix: Option<String> = None;
        while let Some(&next) = order.get(k + chain.len()) {
            let cur = chain[chain.len() - 1];
            if inputs[next].first() != Some(&Src::Layer(cur)) || consumers[cur] != 1 {
                break;
            }
            let p = match &prefix {
                Some(p) => {
                    if layers[next].name.rsplit_once('.').map(|(head, _)| head) != Some(p) {
                        break;
                    }
                    p.clone()
                }
                None => match common_parent(&layers[cur].name, &layers[next].name) {
                    Some(p)
                        if !layer_names.contains(p.as_str())
                            && !used_entries.contains(&p)
                            && p != crate::dsl::network::INPUT
                            && crate::dsl::read::is_valid_name(&p) =>
                    {
                        p
                    }
                    _ => break,
                },
            };
            prefix = Some(p);
            chain.push(next);
        }
        let name_of = |s: &Src| match s {
            Src::Input => crate::dsl::network::INPUT.to_string(),
            Src::Layer(i) => entry_of
                .get(i)
                .cloned()
                .unwrap_or_else(|| layers[*i].name.clone()),
        };
        let first = &inputs[chain[0]];
        let mut text = String::new();
        if first.first() != Some(&prev) {
            text.push_str(&name_of(&first[0]));
            text.push_str(" -> ");
        }
        let mut ops = Vec::new();
        for (pos, &i) in chain.iter().enumerate() {
            let l = &layers[i];
            let mut op = render(&l.op);
            if inputs[i].len() > 1 {
                let extra: Vec<String> = inputs[i][1..].iter().map(name_of).collect();
                op = format!("{op}({})", extra.join(", "));
            }
            if let Some(p) = &prefix {
                let suffix = &l.name[p.len() + 1..];
                if suffix != pos.to_string() {
                    op = format!("{op} as {suffix}");
                }
            }
            ops.push(op);
        }
        text.push_str(&ops.join(" | "));
        let name = match prefix {
            Some(p) => {
                used_entries.insert(p.clone());
                p
            }
            None => layers[chain[0]].name.clone(),
        };
        entry_of.insert(chain[chain.len() - 1], name.clone());
        out.push(Entry {
            name,
            expression: text,
        });
        prev = Src::Layer(chain[chain.len() - 1]);
        k += chain.len();
    }
    (out, order.len())
}

/// A YAML scalar: plain when it is a simple word, else double-quoted.
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        let mut q = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
                c => q.push(c),
            }
        }
        q.push('"');
        q
    }
}

const WIDTH: usize = 92;

/// The DSL file.
pub fn yaml(m: &Imported, weights_file: &str) -> String {
    let provenance: String = m
        .provenance
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(100)
        .collect();
    let mut y = format!(
        "# Imported by `adcnnc import` from ONNX ({provenance}).\n\
         network:\n  name: {}\n  input:\n    shape: [{}, {}, {}]\n",
        scalar(&m.name),
        m.input.c,
        m.input.h,
        m.input.w
    );
    if !m.weights.is_empty() {
        y.push_str(&format!("  weights: {}\n", scalar(weights_file)));
    }
    y.push_str("  layers:\n");
    for e in &m.entries {
        let head = format!("    - {}: ", scalar(&e.name));
        if head.len() + e.expression.len() <= WIDTH {
            y.push_str(&format!("{head}{}\n", e.expression));
            continue;
        }
        // Folded over several lines, breaking after ` |`.
        y.push_str(&format!("{head}>-\n"));
        let indent = "        ";
        let mut line = String::new();
        let parts: Vec<&str> = e.expression.split(" | ").collect();
        for (i, part) in parts.iter().enumerate() {
            let piece = if i + 1 < parts.len() {
                format!("{part} |")
            } else {
                part.to_string()
            };
            if !line.is_empty() && indent.len() + line.len() + 1 + piece.len() > WIDTH {
                y.push_str(&format!("{indent}{line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&piece);
        }
        y.push_str(&format!("{indent}{line}\n"));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_exactly() {
        for v in [
            1e-5f32,
            0.1,
            6.0,
            -3.5,
            f32::MAX,
            f32::MIN,
            1e-20,
            123456.79,
        ] {
            let s = num(v);
            assert_eq!(s.parse::<f64>().map(|x| x as f32), Ok(v), "{s}");
        }
        assert_eq!(num(1e-5), "1e-5");
        assert_eq!(num(0.1), "0.1");
    }

    #[test]
    fn chains_join_siblings() {
        assert_eq!(
            common_parent("layer1.0.conv1", "layer1.0.bn1").as_deref(),
            Some("layer1.0")
        );
        assert_eq!(common_parent("conv1", "bn1"), None);
        assert_eq!(common_parent("features.1.add", "features.2.conv.0"), None);
        assert_eq!(
            common_parent("features.10", "features.1").as_deref(),
            Some("features")
        );
    }
}
