//! Rendering a plan for people (text, the form snapshots hold; SVG pictures) and tools (JSON).

use std::fmt::Write as _;

use adcnn_core::format::{NetworkInfo, PlanHeader};
use adcnn_core::net::{LayerId, Source};
use adcnn_core::ops::Shape;

use crate::plan::{Mode, Plan, Segment};

fn layer_name(graph: &NetworkInfo, id: LayerId) -> &str {
    graph
        .layers
        .get(id.index())
        .map_or("?", |l| l.name.as_str())
}

fn shape(graph: &NetworkInfo, s: Source) -> Shape {
    match s {
        Source::Input => graph.input.shape,
        Source::Layer(id) => graph
            .layers
            .get(id.index())
            .map_or(Shape::new(0, 0, 0), |l| l.shape),
    }
}

fn source_name(graph: &NetworkInfo, s: Source) -> &str {
    match s {
        Source::Input => "input",
        Source::Layer(id) => layer_name(graph, id),
    }
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

/// The plan as stable, readable text.
pub fn text(header: &PlanHeader) -> String {
    let (plan, graph) = (&header.plan, &header.network);
    let mut o = String::new();
    let c = &plan.cluster;
    let _ = writeln!(
        o,
        "plan: {} on {} (strategy {}, compression {})",
        plan.network,
        c.name,
        plan.strategy.name(),
        plan.compression.name()
    );
    let _ = writeln!(
        o,
        "network: {} layers, {:.3} GFLOPs, input {}, output {}",
        graph.layers.len(),
        graph.flops() as f64 / 1e9,
        graph.input.shape,
        crate::graph::flat_or_full(graph.output_shape())
    );
    let _ = writeln!(o, "\nnodes:");
    for (i, n) in c.nodes.iter().enumerate() {
        let role = match (i == c.coordinator, n.worker) {
            (true, true) => "coordinator+worker",
            (true, false) => "coordinator",
            (false, _) => "worker",
        };
        let link = match n.mbps {
            Some(m) if i != c.coordinator => format!("{m:>7.1} Mbit/s {:>5.1} ms", n.latency_ms),
            _ => "local".to_string(),
        };
        let threads = if n.threads > 1 {
            format!(" ({} threads)", n.threads)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {:<10} {:<18} {:>7.1} GFLOP/s  {link}{threads}",
            n.name,
            role,
            n.speed()
        );
    }
    for (i, s) in plan.segments.iter().enumerate() {
        segment_text(&mut o, i, s, plan, graph);
    }
    let tail: Vec<&str> = graph
        .layers
        .get(plan.tail_start.index()..)
        .unwrap_or_default()
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let _ = writeln!(o);
    if tail.is_empty() {
        let _ = writeln!(o, "tail: none");
    } else {
        let shown = if tail.len() > 6 {
            format!(
                "{} … {} ({} layers)",
                tail[..3].join(", "),
                tail[tail.len() - 1],
                tail.len()
            )
        } else {
            tail.join(", ")
        };
        let _ = writeln!(
            o,
            "tail on {}: {shown}, {:.3} GFLOPs, {:.2} ms",
            c.nodes[c.coordinator].name,
            plan.tail_flops as f64 / 1e9,
            plan.tail_ms
        );
    }
    let _ = writeln!(o, "\nper node (predicted busy time):");
    for (n, busy) in c.nodes.iter().zip(&plan.node_busy_ms) {
        let share = if plan.predicted_ms > 0.0 {
            100.0 * busy / plan.predicted_ms
        } else {
            0.0
        };
        let _ = writeln!(o, "  {:<10} {:>9.2} ms  {:>5.1} %", n.name, busy, share);
    }
    let _ = writeln!(
        o,
        "\npredicted latency: {:.2} ms (ideal bound {:.2} ms: all FLOPs at the workers' summed speed + the input over all links)",
        plan.predicted_ms, plan.ideal_ms
    );
    if !plan.is_exact() {
        let _ = writeln!(
            o,
            "approximate: FDSP segments change the output near tile borders (see each segment's affected pixels)"
        );
        if let Some(d) = plan.deviation {
            let _ = writeln!(
                o,
                "deviation from the exact network: relative L2 {d:.1e} (measured at build on a seeded random input)"
            );
        }
    }
    o
}

fn segment_text(o: &mut String, i: usize, s: &Segment, plan: &Plan, graph: &NetworkInfo) {
    let first = layer_name(graph, s.first);
    let last = layer_name(graph, s.output());
    let n = s.end.0 - s.first.0;
    let out = shape(graph, Source::Layer(s.output()));
    let in_shape = shape(graph, s.input);
    let mode = if s.tiles.len() == 1 {
        "single"
    } else {
        s.mode.name()
    };
    let _ = writeln!(
        o,
        "\nsegment {i}: {first} … {last} ({n} layers), {mode}, grid {}×{}",
        s.grid.0, s.grid.1
    );
    let _ = writeln!(
        o,
        "  input {} {in_shape} → output {out}",
        source_name(graph, s.input)
    );
    let r = graph
        .layers
        .get(s.output().index())
        .and_then(|l| l.receptive);
    let rf = r.map_or("-".to_string(), |[fh, fw, _, _]| format!("{fh}×{fw}"));
    let st = r.map_or("-".to_string(), |[_, _, sh, _]| format!("{sh}"));
    let _ = writeln!(
        o,
        "  {:.3} GFLOPs, tiles compute {:.3} ({:+.1} %), receptive field {rf}, cumulative stride {st}",
        s.flops as f64 / 1e9,
        s.tile_flops as f64 / 1e9,
        100.0 * s.redundancy()
    );
    if s.mode == Mode::Fdsp {
        let _ = writeln!(
            o,
            "  fdsp: {:.1} % of output pixels see a tile border and may differ from the exact result",
            100.0 * s.affected_fraction
        );
    }
    let _ = writeln!(
        o,
        "  tile  output rows×cols   input rows×cols    node        GFLOPs   in KiB  out KiB     ms"
    );
    for t in &s.tiles {
        let _ = writeln!(
            o,
            "  {:<5} {:<18} {:<18} {:<10} {:>7.3} {:>8.1} {:>8.1} {:>6.2}",
            format!("{},{}", t.row, t.col),
            format!(
                "{}..{}×{}..{}",
                t.output.r0, t.output.r1, t.output.c0, t.output.c1
            ),
            format!(
                "{}..{}×{}..{}",
                t.input.r0, t.input.r1, t.input.c0, t.input.c1
            ),
            plan.cluster.nodes[t.node].name,
            t.flops as f64 / 1e9,
            kib(t.input_bytes),
            kib(t.output_bytes),
            t.predicted_ms
        );
    }
    let _ = writeln!(o, "  predicted {:.2} ms", s.predicted_ms);
}

/// The plan for tools: the plan's own fields plus layer names.
pub fn json(header: &PlanHeader) -> String {
    let (plan, graph) = (&header.plan, &header.network);
    let layers: Vec<serde_json::Value> = graph
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "op": l.op,
                "shape": [l.shape.c, l.shape.h, l.shape.w],
                "flops": l.flops,
            })
        })
        .collect();
    let v = serde_json::json!({ "plan": plan, "layers": layers });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Node colours for pictures (colour-blind-friendly palette).
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999",
];

/// Each segment's tile grid over the segment's input, coloured by node, with each tile's
/// halo (the input it reads beyond its own block) shaded.
pub fn svg(header: &PlanHeader) -> String {
    let (plan, graph) = (&header.plan, &header.network);
    let size = 220.0;
    let gap = 40.0;
    let n = plan.segments.len().max(1) as f64;
    let width = n * (size + gap) + gap;
    let height = size + 110.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{gap}" y="20" font-size="14">{} on {}: strategy {}, predicted {:.1} ms</text>"#,
        xml(&plan.network),
        xml(&plan.cluster.name),
        plan.strategy.name(),
        plan.predicted_ms
    );
    for (i, s) in plan.segments.iter().enumerate() {
        let x0 = gap + i as f64 * (size + gap);
        let y0 = 40.0;
        let in_shape = shape(graph, s.input);
        let out = shape(graph, Source::Layer(s.output()));
        let (sy, sx) = (
            size / in_shape.h.max(1) as f64,
            size / in_shape.w.max(1) as f64,
        );
        let _ = writeln!(
            o,
            r##"<rect x="{x0}" y="{y0}" width="{size}" height="{size}" fill="none" stroke="#333"/>"##
        );
        for t in &s.tiles {
            // The tile's own block of the input (its output scaled back), then its halo.
            let own = |a: usize, len_out: usize, len_in: usize| {
                (a * len_in) as f64 / len_out.max(1) as f64
            };
            let (r0, r1) = (
                own(t.output.r0, out.h, in_shape.h),
                own(t.output.r1, out.h, in_shape.h),
            );
            let (c0, c1) = (
                own(t.output.c0, out.w, in_shape.w),
                own(t.output.c1, out.w, in_shape.w),
            );
            let colour = COLOURS[t.node % COLOURS.len()];
            let _ = writeln!(
                o,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.55" stroke="white"/>"#,
                x0 + c0 * sx,
                y0 + r0 * sy,
                (c1 - c0) * sx,
                (r1 - r0) * sy
            );
            let _ = writeln!(
                o,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.12" stroke="{colour}" stroke-dasharray="3,2"/>"#,
                x0 + t.input.c0 as f64 * sx,
                y0 + t.input.r0 as f64 * sy,
                t.input.cols() as f64 * sx,
                t.input.rows() as f64 * sy
            );
        }
        let mode = if s.tiles.len() == 1 {
            "single"
        } else {
            s.mode.name()
        };
        let _ = writeln!(
            o,
            r#"<text x="{x0}" y="{:.1}">segment {i}: {} … {}</text>"#,
            y0 + size + 16.0,
            xml(layer_name(graph, s.first)),
            xml(layer_name(graph, s.output()))
        );
        let _ = writeln!(
            o,
            r#"<text x="{x0}" y="{:.1}">{mode} {}×{}, {:+.0} % FLOPs, {:.1} ms</text>"#,
            y0 + size + 30.0,
            s.grid.0,
            s.grid.1,
            100.0 * s.redundancy(),
            s.predicted_ms
        );
    }
    // Legend.
    for (i, node) in plan.cluster.nodes.iter().enumerate() {
        let x = gap + i as f64 * 90.0;
        let y = height - 22.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            y,
            xml(&node.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
