//! The layer graph: a validated DAG of layers with inferred shapes and per-layer figures.
//!
//! Architecture invariant: petgraph is an implementation detail of this module. Layers are
//! addressed by [`LayerId`] (their index in topological order) everywhere else.

pub mod shape;

pub use adcnn_core::net::{LayerId, Source};
pub use shape::{LayerStats, Receptive};

use std::collections::HashMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::{Diagnostic, Diagnostics, Span, did_you_mean};
use crate::dsl::network::{INPUT, InputSpec, NetworkSpec, WeightsSpec};
use adcnn_core::ops::{Hw, Op, Shape};

/// One layer with everything inferred about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Source>,
    pub shape: Shape,
    pub stats: LayerStats,
    /// Where the layer is written.
    pub span: Span,
}

/// Totals over a whole network.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct NetworkStats {
    pub layers: usize,
    pub params: u64,
    pub flops: u64,
    pub conv_flops: u64,
    pub weight_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct LayerGraph {
    pub name: String,
    pub input: InputSpec,
    pub weights: Option<WeightsSpec>,
    layers: Vec<Layer>,
    by_name: HashMap<String, LayerId>,
    consumers: Vec<Vec<LayerId>>,
}

impl adcnn_core::geometry::TileLayer for Layer {
    fn op(&self) -> &Op {
        &self.op
    }

    fn inputs(&self) -> &[Source] {
        &self.inputs
    }
}

impl LayerGraph {
    /// Resolves names, orders, shape-checks and measures a lowered network. Every problem
    /// found is returned, not just the first.
    pub fn build(spec: &NetworkSpec) -> Result<LayerGraph, Diagnostics> {
        let mut diags = Diagnostics::new();

        // 1. Names.
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, l) in spec.layers.iter().enumerate() {
            if let Some(&first) = index.get(l.name.as_str()) {
                diags.push(
                    Diagnostic::error(format!("two layers are named `{}`", l.name))
                        .at(&l.span, "second layer with this name")
                        .note(&spec.layers[first].span, "first defined here")
                        .help("layer names must be unique; rename one, or name chain members with `as`"),
                );
            } else {
                index.insert(&l.name, i);
            }
        }
        for (entry, last) in &spec.entries {
            if let (Some(&i), Some(&j)) = (index.get(entry.as_str()), index.get(last.as_str()))
                && i != j
            {
                diags.push(
                    Diagnostic::error(format!("`{entry}` names both an entry and another layer"))
                        .at(&spec.layers[i].span, "this layer")
                        .note(
                            &spec.layers[j].span,
                            format!("the entry `{entry}` ends here"),
                        ),
                );
            }
        }
        let entry_last: HashMap<&str, &str> = spec
            .entries
            .iter()
            .map(|(e, l)| (e.as_str(), l.as_str()))
            .collect();

        // 2. Inputs.
        let mut graph = DiGraph::<usize, ()>::new();
        let nodes: Vec<NodeIndex> = (0..spec.layers.len()).map(|i| graph.add_node(i)).collect();
        let mut inputs: Vec<Vec<Option<usize>>> = Vec::with_capacity(spec.layers.len());
        for (i, l) in spec.layers.iter().enumerate() {
            let mut resolved = Vec::new();
            for r in &l.inputs {
                let target = if r.text == INPUT {
                    Some(None)
                } else if let Some(&j) = index.get(r.text.as_str()) {
                    Some(Some(j))
                } else {
                    entry_last
                        .get(r.text.as_str())
                        .and_then(|l| index.get(l))
                        .map(|j| Some(*j))
                };
                match target {
                    Some(t) => {
                        if let Some(j) = t {
                            graph.add_edge(nodes[j], nodes[i], ());
                        }
                        resolved.push(t);
                    }
                    None => {
                        let names = index
                            .keys()
                            .copied()
                            .chain(entry_last.keys().copied())
                            .chain([INPUT]);
                        let help = match did_you_mean(&r.text, names) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => "inputs name an earlier or later layer, an entry, or `input`"
                                .to_string(),
                        };
                        diags.push(
                            Diagnostic::error(format!("no layer is named `{}`", r.text))
                                .at(&r.span, "unknown layer")
                                .help(help),
                        );
                    }
                }
            }
            let (min, max) = l.op.arity();
            let n = l.inputs.len();
            if n < min || n > max {
                let want = if max == 1 {
                    "one input".to_string()
                } else {
                    format!("at least {min} inputs")
                };
                diags.push(
                    Diagnostic::error(format!(
                        "`{}` takes {want}, layer `{}` has {n}",
                        l.op.kind(),
                        l.name
                    ))
                    .at(
                        &l.span,
                        format!("{n} input{}", if n == 1 { "" } else { "s" }),
                    )
                    .help(if max == 1 {
                        "only `add` and `concat` join several inputs"
                    } else {
                        "name the other inputs: `add(other)` or `a, b -> add`"
                    }),
                );
            }
            inputs.push(resolved);
        }
        if !diags.is_empty() {
            return Err(diags);
        }

        // 3. Order.
        let order = match toposort(&graph, None) {
            Ok(order) => order,
            Err(_) => {
                for scc in tarjan_scc(&graph) {
                    let is_cycle = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
                    if !is_cycle {
                        continue;
                    }
                    let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
                    members.sort_unstable();
                    let names: Vec<&str> = members
                        .iter()
                        .map(|&i| spec.layers[i].name.as_str())
                        .collect();
                    let first = &spec.layers[members[0]];
                    let mut d = Diagnostic::error(format!(
                        "layers form a cycle: {} → {}",
                        names.join(" → "),
                        names[0]
                    ))
                    .at(&first.span, "this layer depends on itself through the cycle")
                    .help("a network is a DAG: every input must be computable before the layer that uses it");
                    for &m in &members[1..] {
                        d = d.note(&spec.layers[m].span, "part of the cycle");
                    }
                    diags.push(d);
                }
                return Err(diags);
            }
        };

        // 4. Shapes, in order; a layer whose input failed is skipped silently.
        let mut id_of = vec![LayerId(0); spec.layers.len()];
        for (pos, n) in order.iter().enumerate() {
            id_of[graph[*n]] = LayerId(pos as u32);
        }
        let mut layers: Vec<Layer> = Vec::with_capacity(spec.layers.len());
        let mut failed = vec![false; spec.layers.len()];
        for n in &order {
            let i = graph[*n];
            let l = &spec.layers[i];
            let sources: Vec<Source> = inputs[i]
                .iter()
                .map(|t| t.map_or(Source::Input, |j| Source::Layer(id_of[j])))
                .collect();
            let mut shapes = Vec::new();
            let mut receptive = Vec::new();
            let mut upstream_failed = false;
            for s in &sources {
                match s {
                    Source::Input => {
                        shapes.push(spec.input.shape);
                        receptive.push(Some(Receptive {
                            field: Hw::square(1),
                            stride: Hw::square(1),
                        }));
                    }
                    Source::Layer(id) => match layers.get(id.index()) {
                        Some(src) if !failed[graph[order[id.index()]]] => {
                            shapes.push(src.shape);
                            receptive.push(src.stats.receptive);
                        }
                        _ => upstream_failed = true,
                    },
                }
            }
            let mut op = l.op.clone();
            let result = if upstream_failed {
                None
            } else {
                shape::infer(&mut op, &shapes, l, &mut diags)
            };
            let Some(out) = result else {
                failed[i] = true;
                layers.push(Layer {
                    name: l.name.clone(),
                    op,
                    inputs: sources,
                    shape: Shape::new(0, 0, 0),
                    stats: LayerStats::default(),
                    span: l.span.clone(),
                });
                continue;
            };
            let stats = shape::stats(&op, &shapes, out, &receptive);
            layers.push(Layer {
                name: l.name.clone(),
                op,
                inputs: sources,
                shape: out,
                stats,
                span: l.span.clone(),
            });
        }

        // 5. Every layer must lead to the output (the last layer written).
        if let Some(last) = spec.layers.len().checked_sub(1) {
            let mut live = vec![false; spec.layers.len()];
            let mut stack = vec![nodes[last]];
            while let Some(n) = stack.pop() {
                if !std::mem::replace(&mut live[graph[n]], true) {
                    stack.extend(graph.neighbors_directed(n, petgraph::Direction::Incoming));
                }
            }
            for (i, l) in spec.layers.iter().enumerate() {
                if !live[i] {
                    diags.push(
                        Diagnostic::error(format!("layer `{}` is never used", l.name))
                            .at(&l.span, "its output reaches no later layer")
                            .help(format!(
                                "the network's output is its last layer, `{}`; join this branch with `add` or `concat`, or remove it",
                                spec.layers[last].name
                            )),
                    );
                }
            }
        }

        if !diags.is_empty() {
            return Err(diags);
        }
        let by_name = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), LayerId(i as u32)))
            .collect();
        let mut consumers = vec![Vec::new(); layers.len()];
        for (i, l) in layers.iter().enumerate() {
            for s in &l.inputs {
                if let Source::Layer(src) = s {
                    consumers[src.index()].push(LayerId(i as u32));
                }
            }
        }
        Ok(LayerGraph {
            name: spec.name.clone(),
            input: spec.input.clone(),
            weights: spec.weights.clone(),
            layers,
            by_name,
            consumers,
        })
    }

    /// Layers in topological order (a layer's inputs come before it).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn layer(&self, id: LayerId) -> &Layer {
        &self.layers[id.index()]
    }

    pub fn find(&self, name: &str) -> Option<LayerId> {
        self.by_name.get(name).copied()
    }

    /// The layers that read `id`'s output.
    pub fn consumers(&self, id: LayerId) -> &[LayerId] {
        &self.consumers[id.index()]
    }

    /// The output layer: the last in topological order is the last written, as every other
    /// layer leads to it.
    pub fn output(&self) -> LayerId {
        LayerId(self.layers.len().saturating_sub(1) as u32)
    }

    pub fn output_shape(&self) -> Shape {
        self.layers.last().map_or(self.input.shape, |l| l.shape)
    }

    pub fn stats(&self) -> NetworkStats {
        let mut s = NetworkStats {
            layers: self.layers.len(),
            ..NetworkStats::default()
        };
        for l in &self.layers {
            s.params += l.stats.params;
            s.flops += l.stats.flops;
            s.weight_bytes += l.stats.weight_bytes;
            if matches!(l.op, Op::Conv2d(_)) {
                s.conv_flops += l.stats.flops;
            }
        }
        s
    }

    /// The one-line summary `adcnnc check` prints.
    pub fn summary(&self) -> String {
        let s = self.stats();
        format!(
            "{}: {} layers, {} parameters, {:.2} GFLOPs ({:.2} in convolutions), input {}, output {}",
            self.name,
            s.layers,
            human_count(s.params),
            s.flops as f64 / 1e9,
            s.conv_flops as f64 / 1e9,
            self.input.shape,
            flat_or_full(self.output_shape())
        )
    }

    /// One line per layer: name, operator, inputs, output shape, MFLOPs, parameters, and the
    /// receptive field and cumulative stride of spatial layers (`adcnnc check --layers`).
    pub fn layer_table(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:<26} {:<36} {:<24} {:>16} {:>9} {:>10} {:>9} {:>6}",
            "layer", "operator", "inputs", "output", "MFLOPs", "params", "field", "stride"
        );
        for l in &self.layers {
            let inputs: Vec<&str> = l
                .inputs
                .iter()
                .map(|s| match s {
                    Source::Input => "input",
                    Source::Layer(id) => self.layer(*id).name.as_str(),
                })
                .collect();
            let (field, stride) =
                l.stats
                    .receptive
                    .map_or(("-".to_string(), "-".to_string()), |r| {
                        (
                            format!("{}×{}", r.field.h, r.field.w),
                            r.stride.h.to_string(),
                        )
                    });
            let _ = writeln!(
                o,
                "{:<26} {:<36} {:<24} {:>16} {:>9.2} {:>10} {:>9} {:>6}",
                l.name,
                l.op.to_string(),
                inputs.join(", "),
                flat_or_full(l.shape),
                l.stats.flops as f64 / 1e6,
                human_count(l.stats.params),
                field,
                stride
            );
        }
        o
    }
}

/// `[1000]` for a flat vector, `[C, H, W]` otherwise.
pub fn flat_or_full(s: Shape) -> String {
    if s.is_flat() {
        format!("[{}]", s.c)
    } else {
        s.to_string()
    }
}

/// `138.36 M`, `11.7 k`, `42`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}
