//! `adcnn-run report`: a `--trace` file drawn as a per-node Gantt chart (SVG): one row per
//! node, a bar per span (tiles coloured by segment), markers where a node was lost or the
//! tiles were re-planned.

use std::fmt::Write as _;
use std::path::PathBuf;

use adcnn_core::outln;

/// `adcnn-run report TRACE.json -o gantt.svg`: draws a trace written by `adcnn-run --trace`
/// (or `bench`) as a Gantt chart, one row per node over time: tiles coloured by segment,
/// the coordinator's scatter, stitch and tail in grey, a red line where a node was lost and
/// a blue one where the tiles were re-planned (hover for the span's name in a browser).
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run report")]
pub struct ReportCli {
    /// A trace from `adcnn-run --trace` (Chrome trace-event JSON).
    trace: PathBuf,
    /// The SVG to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Only spans starting in this window of the trace, in ms from its start: `FROM..TO`
    /// (e.g. `0..500`, the first half second).
    #[arg(long, value_name = "FROM..TO")]
    window: Option<String>,
    /// Width of the chart in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
}

/// Traces larger than this are refused (a trace holds about 200 bytes per span).
const MAX_TRACE_BYTES: u64 = 1 << 30;

/// One bar or marker.
#[derive(Clone, Debug, PartialEq)]
struct Span {
    node: usize,
    name: String,
    start_ms: f64,
    dur_ms: f64,
}

/// Node names and spans of a trace.
fn read_trace(text: &str) -> Result<(Vec<String>, Vec<Span>), String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let events = json
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .ok_or("no `traceEvents` list: not a trace from `adcnn-run --trace`")?;
    let mut names: Vec<String> = Vec::new();
    let mut spans = Vec::new();
    for e in events {
        let tid = e.get("tid").and_then(serde_json::Value::as_u64);
        let Some(node) = tid
            .and_then(|t| usize::try_from(t).ok())
            .filter(|&t| t < 4096)
        else {
            continue;
        };
        match e.get("ph").and_then(|p| p.as_str()) {
            Some("M") => {
                if let Some(n) = e.pointer("/args/name").and_then(|n| n.as_str()) {
                    if names.len() <= node {
                        names.resize(node + 1, String::new());
                    }
                    names[node] = n.to_string();
                }
            }
            // Transfers are drawn as the tiles' gaps; their zero-length ends are skipped.
            Some("X") if e.get("cat").and_then(|c| c.as_str()) != Some("transfer") => {
                let num = |k: &str| e.get(k).and_then(serde_json::Value::as_f64);
                let (Some(ts), Some(dur)) = (num("ts"), num("dur")) else {
                    continue;
                };
                if !(ts.is_finite() && dur.is_finite() && dur >= 0.0) {
                    continue;
                }
                let name = e.get("name").and_then(|n| n.as_str()).unwrap_or("");
                spans.push(Span {
                    node,
                    name: name.to_string(),
                    start_ms: ts / 1e3,
                    dur_ms: dur / 1e3,
                });
            }
            _ => {}
        }
    }
    let rows = spans.iter().map(|s| s.node + 1).max().unwrap_or(0);
    if names.len() < rows {
        names.resize(rows, String::new());
    }
    for (i, n) in names.iter_mut().enumerate() {
        if n.is_empty() {
            *n = format!("node {i}");
        }
    }
    if spans.is_empty() {
        return Err("no spans in it".into());
    }
    Ok((names, spans))
}

fn window(arg: &str) -> Result<(f64, f64), String> {
    let bad = || format!("error: --window takes FROM..TO in ms (e.g. 0..500), not `{arg}`");
    let (a, b) = arg.split_once("..").ok_or_else(bad)?;
    let (a, b): (f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && a >= 0.0 && b > a) {
        return Err(bad());
    }
    Ok((a, b))
}

/// Segment colours (colour-blind-friendly palette), by segment index.
const COLOURS: [&str; 7] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
];

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The segment a tile span belongs to (`segment S tile R,C`, `send segment S tile T`).
fn segment_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("segment ")?;
    rest.split(' ').next()?.parse().ok()
}

fn gantt(names: &[String], spans: &[Span], width: f64) -> String {
    let (left, right, top, row) = (110.0, 20.0, 50.0, 30.0);
    let t0 = spans
        .iter()
        .map(|s| s.start_ms)
        .fold(f64::INFINITY, f64::min);
    let t1 = spans
        .iter()
        .map(|s| s.start_ms + s.dur_ms)
        .fold(f64::NEG_INFINITY, f64::max);
    let span_ms = (t1 - t0).max(1e-3);
    let plot = (width - left - right).max(100.0);
    let x = |ms: f64| left + (ms - t0) / span_ms * plot;
    let height = top + row * names.len() as f64 + 60.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="20" font-size="14">{} spans on {} nodes over {span_ms:.1} ms</text>"#,
        spans.len(),
        names.len()
    );
    // Rows.
    for (i, name) in names.iter().enumerate() {
        let y = top + i as f64 * row;
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#ffffff" };
        let _ = writeln!(
            o,
            r#"<rect x="{left}" y="{y}" width="{plot}" height="{row}" fill="{fill}"/><text x="8" y="{:.1}">{}</text>"#,
            y + row / 2.0 + 4.0,
            xml(name)
        );
    }
    // Time axis: about ten ticks at a round step.
    let raw = span_ms / 10.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let axis = top + row * names.len() as f64;
    let mut tick = 0.0;
    while tick <= span_ms + 1e-9 {
        let tx = x(t0 + tick);
        let _ = writeln!(
            o,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.1}" stroke="#ccc" stroke-width="0.5"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"##,
            axis + 4.0,
            axis + 16.0
        );
        tick += step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">ms</text>"#,
        left + plot / 2.0,
        axis + 32.0
    );
    // Bars, then markers on top.
    for s in spans.iter().filter(|s| s.dur_ms > 0.0) {
        let y = top + s.node as f64 * row + 4.0;
        let colour = match segment_of(&s.name) {
            Some(seg) => COLOURS[seg % COLOURS.len()],
            None if s.name.starts_with("send segment") => "#bbbbbb",
            None => "#777777",
        };
        let w = (x(s.start_ms + s.dur_ms) - x(s.start_ms)).max(0.5);
        let _ = writeln!(
            o,
            r#"<rect x="{:.2}" y="{y:.1}" width="{w:.2}" height="{:.1}" fill="{colour}" stroke="white" stroke-width="0.3"><title>{} ({:.2} ms)</title></rect>"#,
            x(s.start_ms),
            row - 8.0,
            xml(&s.name),
            s.dur_ms
        );
    }
    for s in spans.iter().filter(|s| s.dur_ms == 0.0) {
        let colour = if s.name.starts_with("lost") {
            "#D55E00"
        } else if s.name.starts_with("re-plan") {
            "#0072B2"
        } else {
            continue;
        };
        let mx = x(s.start_ms);
        let _ = writeln!(
            o,
            r#"<line x1="{mx:.1}" y1="{top}" x2="{mx:.1}" y2="{axis}" stroke="{colour}" stroke-width="1.5"><title>{}</title></line>"#,
            xml(&s.name)
        );
    }
    // Legend: the segments seen.
    let mut segs: Vec<usize> = spans.iter().filter_map(|s| segment_of(&s.name)).collect();
    segs.sort_unstable();
    segs.dedup();
    let ly = height - 14.0;
    let mut lx = left;
    for seg in segs.iter().take(12) {
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{ly}">segment {seg}</text>"#,
            ly - 10.0,
            COLOURS[seg % COLOURS.len()],
            lx + 16.0
        );
        lx += 90.0;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="#777777"/><text x="{:.1}" y="{ly}">coordinator work</text>"##,
        ly - 10.0,
        lx + 16.0
    );
    let _ = writeln!(o, "</svg>");
    o
}

pub fn main(cli: &ReportCli) -> Result<(), String> {
    let path = &cli.trace;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?
        .len();
    if size > MAX_TRACE_BYTES {
        return Err(format!(
            "error: {} is {size} bytes; traces over {MAX_TRACE_BYTES} are refused (write one of fewer frames)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("error: cannot read {}: {e}", path.display()))?;
    let (names, mut spans) =
        read_trace(&text).map_err(|e| format!("error: {}: {e}", path.display()))?;
    if let Some(w) = &cli.window {
        let (a, b) = window(w)?;
        let t0 = spans
            .iter()
            .map(|s| s.start_ms)
            .fold(f64::INFINITY, f64::min);
        spans.retain(|s| s.start_ms - t0 >= a && s.start_ms - t0 < b);
        if spans.is_empty() {
            return Err(format!("error: no span starts in {a}..{b} ms of the trace"));
        }
    }
    if !(200..=20_000).contains(&cli.width) {
        return Err(format!(
            "error: --width takes 200 to 20000 pixels, not {}",
            cli.width
        ));
    }
    let svg = gantt(&names, &spans, f64::from(cli.width));
    adcnn_core::npy::write_atomically(&cli.output, svg.as_bytes())
        .map_err(|e| format!("error: cannot write {}: {e}", cli.output.display()))?;
    outln!(
        "wrote {} ({} spans, {} nodes)",
        cli.output.display(),
        spans.len(),
        names.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_read_with_its_node_names_and_spans() {
        let text = r#"{"traceEvents": [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "gw"}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "w1"}},
            {"name": "segment 0 tile 0,0", "ph": "X", "pid": 1, "tid": 1, "ts": 1000, "dur": 2000},
            {"name": "x", "ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 0, "cat": "transfer"},
            {"name": "tail", "ph": "X", "pid": 1, "tid": 0, "ts": 3000, "dur": 500},
            {"name": "re-plan: why", "ph": "X", "pid": 1, "tid": 0, "ts": 3600, "dur": 0}
        ]}"#;
        let (names, spans) = read_trace(text).expect("reads");
        assert_eq!(names, ["gw", "w1"]);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].start_ms, 1.0);
        assert_eq!(spans[0].dur_ms, 2.0);
        let svg = gantt(&names, &spans, 800.0);
        assert_eq!(svg.matches("<rect").count() - 1, 2 + 2 + 2, "{svg}");
        assert!(svg.contains(">gw</text>") && svg.contains(">w1</text>"));
        assert!(svg.contains("re-plan: why"));
        assert_eq!(segment_of("segment 12 tile 0,1"), Some(12));
        assert_eq!(segment_of("scatter segment 1"), None);
    }

    #[test]
    fn bad_traces_and_windows_are_errors() {
        assert!(read_trace("{").is_err());
        assert!(read_trace("[]").is_err());
        assert!(read_trace(r#"{"traceEvents": []}"#).is_err());
        assert!(
            read_trace(r#"{"traceEvents": [{"ph": "X", "tid": 99999999999, "ts": 0, "dur": 1}]}"#)
                .is_err()
        );
        assert!(window("0..500").is_ok());
        for bad in ["500..0", "a..b", "5", "-1..3", "NaN..4"] {
            assert!(window(bad).is_err(), "{bad}");
        }
    }
}
