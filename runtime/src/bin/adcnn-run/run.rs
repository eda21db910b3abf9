//! `adcnn-run PLAN --input …`: frames through a plan, on the cluster's workers or in this
//! process.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use adcnn_core::format::{ProgramLayers, decode};
use adcnn_core::plan::{Compression, Plan};
use adcnn_core::program::Program;
use adcnn_core::tensor::rel_l2;
use adcnn_core::{boxes, npy, outln, report};
use adcnn_runtime::coordinator::{Coordinator, RunError, RunReport};
use adcnn_runtime::local::LocalCluster;
use adcnn_runtime::telemetry::Telemetry;
use adcnn_runtime::trace::Trace;
use adcnn_runtime::transport::Transport;
use adcnn_runtime::worker::Kernels;
use ndarray::Array3;

/// Frames whose latencies the summary of a folder or stream is taken over (the latest).
const LATENCY_WINDOW: usize = 1 << 16;

use crate::adapt::{self, Adapt};
use crate::frames::{self, Frame};
use crate::remote::{self, Remote, open_plan, plan_error};
use crate::status::Status;

/// Run a plan built by `adcnnc build` on a cluster of edge devices: the coordinator here, the
/// workers on the hosts the plan's cluster names (gRPC, mutual TLS, the cluster token), or
/// every node in this process with `--local`.
///
/// Start a worker on each device first: `adcnn-run worker --listen HOST:PORT --token-file TOKEN
/// [--tls-dir CERTS --name NODE]`; make the certificates once with `adcnn-run certs`.
///
/// The input is a .npy float32 tensor ([C, H, W] or [1, C, H, W]), an image (PNG, JPEG —
/// resized and normalised as the network's `input.image` says), a folder of them (run in
/// name order), or `-` for a stream of .npy arrays on stdin. (A network file runs on the
/// reference interpreter with `adcnnc run`.)
///
/// Other commands: `adcnn-run worker`, `adcnn-run certs`, `adcnn-run bench`, `adcnn-run
/// calibrate`, `adcnn-run report` (each with --help).
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run", version, about, long_about)]
pub struct Cli {
    /// plan.bin
    pub plan: PathBuf,
    /// The input: .npy tensor, image, folder, or `-` (stdin).
    #[arg(long)]
    pub input: PathBuf,
    /// Write the output tensor here (.npy); for a folder or stream of inputs, a folder that
    /// gets one NAME.npy per frame.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// How many classes to print for a classifier.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// For a network whose output is one probability map (a text detector such as the
    /// bundled `ppocr-det.yaml`): draw the regions found in it into this PNG, over the input
    /// image. The regions are printed either way.
    #[arg(long, value_name = "PNG")]
    pub boxes: Option<PathBuf>,
    /// Probability above which a pixel of a one-channel output belongs to a region.
    #[arg(long, default_value_t = 0.3)]
    pub box_threshold: f32,
    /// Frames on their way at once (pipelining: the next frame's tiles are on the workers
    /// while this one's tail runs).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Write a Chrome trace-event JSON of the run (one track per node, arrows for
    /// transfers; open in Perfetto).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Write per-frame and per-node figures (JSON): latency, busy time, bytes, achieved
    /// GFLOP/s, link rate and round trip.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Tile kernels: `jit` (compiled: host GEMM, Winograd for 3×3 convolutions, Cranelift),
    /// `gemm` (compiled, no Winograd: a quarter of the 3×3 layers' prepared weight memory)
    /// or `reference` (the plain operators).
    #[arg(long, default_value = "jit")]
    pub kernels: String,
    /// Run every node in this process (threads, no network) instead of on the cluster's
    /// workers.
    #[arg(long)]
    pub local: bool,
    /// Keep the plan's tiles whatever the nodes measure (by default the tiles are
    /// re-planned when a node's speed drifts, or a node is lost or back, unless --steal;
    /// see the options below).
    #[arg(long)]
    pub no_replan: bool,
    #[command(flatten)]
    pub adapt: Adapt,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn kernels(name: &str) -> Result<Kernels, String> {
    Kernels::from_name(name).ok_or_else(|| {
        let names = Kernels::NAMES.map(|n| format!("`{n}`")).join(", ");
        format!("error: --kernels takes {names}, not `{name}`")
    })
}

/// Prints one finished frame's figures and writes its output (`--output`).
#[allow(clippy::too_many_arguments, reason = "the run's parts, for one frame")]
fn report_frame(
    cli: &Cli,
    r: &RunReport,
    stem: &str,
    input: Option<&Array3<f32>>,
    plan: &Plan,
    how: &str,
    segments: &[Arc<Program>],
    tail: &Program,
    many: bool,
) -> Result<(), String> {
    // The output first: a frame's line means its file is there.
    let written = match &cli.output {
        Some(out) => {
            let path = frames::output_path(out, stem, many);
            npy::write_f32_file(&path, &r.output.clone().into_dyn())
                .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
            (!many).then_some(path)
        }
        None => None,
    };
    // A one-channel output's regions: printed for a single frame, compared with the exact
    // network's when the deviation is measured.
    let deviation = input.is_some() && !segments.is_empty();
    let regions = match one_channel_map(&r.output).filter(|_| !many || deviation) {
        Some(map) => Some(boxes::find_boxes(map, &box_options(cli)?)),
        None => None,
    };
    if many {
        let top = report::top_k(&r.output, 1)
            .and_then(|t| t.first().copied())
            .map_or(String::new(), |(c, p)| {
                format!("  class {c:>4}  p = {p:.4}")
            });
        outln!("{stem:<24} {:>9.2} ms{top}", r.measured_ms);
    } else if let (Some(map), Some(found)) = (one_channel_map(&r.output), &regions) {
        print_boxes(found);
        if let Some(png) = &cli.boxes {
            let (h, w) = map.dim();
            boxes::draw_into(&cli.input, w, h, found, png).map_err(|e| format!("error: {e}"))?;
            outln!("drew {} box(es) into {}", found.len(), png.display());
        }
    } else {
        report::print_top_k(&r.output, cli.top_k);
    }
    if !many {
        outln!("per node: busy measured / predicted");
        for (i, n) in plan.cluster.nodes.iter().enumerate() {
            outln!(
                "  {:<10} {:>9.2} ms / {:>9.2} ms",
                n.name,
                r.node_busy_ms[i],
                plan.node_busy_ms[i]
            );
        }
        outln!(
            "latency: measured {:.2} ms ({how}), predicted {:.2} ms on {}",
            r.measured_ms,
            plan.predicted_ms,
            plan.cluster.name
        );
        outln!(
            "tile outputs on the wire: {:.1} KiB",
            r.wire_bytes as f64 / 1024.0
        );
        if plan.compression != Compression::None {
            outln!(
                "{} compression error on tile outputs: relative L2 {:.2e}",
                plan.compression.name(),
                r.compression_error
            );
        }
    }
    if let Some(x) = input.filter(|_| !segments.is_empty()) {
        let want = exact(segments, tail, x)?;
        let dev = rel_l2(r.output.iter(), want.iter());
        outln!("deviation of the output from the exact network: relative L2 {dev:.2e}");
        if let (Some(got), Some(exact)) = (&regions, one_channel_map(&want)) {
            let exact = boxes::find_boxes(exact, &box_options(cli)?);
            let (same, extra, missed) = boxes::compare(got, &exact);
            outln!(
                "boxes against the exact network's {}: {same} the same (IoU ≥ 0.5), {extra} \
                 extra, {missed} missed",
                exact.len()
            );
        }
    }
    if let Some(path) = written {
        outln!("wrote {}", path.display());
    }
    Ok(())
}

/// The output as one `H × W` probability map, when it is one (one channel, not a vector).
fn one_channel_map(y: &Array3<f32>) -> Option<ndarray::ArrayView2<'_, f32>> {
    let (c, h, w) = y.dim();
    (c == 1 && h * w > 1).then(|| y.index_axis(ndarray::Axis(0), 0))
}

fn box_options(cli: &Cli) -> Result<boxes::BoxOptions, String> {
    if !(0.0..1.0).contains(&cli.box_threshold) {
        return Err(format!(
            "error: --box-threshold takes a probability in [0, 1), not {}",
            cli.box_threshold
        ));
    }
    Ok(boxes::BoxOptions {
        threshold: cli.box_threshold,
        ..boxes::BoxOptions::default()
    })
}

fn print_boxes(found: &[boxes::Box2]) {
    outln!(
        "{} region(s) in the output map (x0, y0 – x1, y1 in output pixels, mean probability):",
        found.len()
    );
    for b in found {
        outln!(
            "  {:>6.1}, {:>6.1} – {:>6.1}, {:>6.1}   {:.3}",
            b.x0,
            b.y0,
            b.x1,
            b.y1,
            b.score
        );
    }
}

/// The network the plan computes, whole (every segment's program on whole tensors, then the
/// tail): what an approximate plan or a compressed wire deviates from.
fn exact(
    segments: &[Arc<Program>],
    tail: &Program,
    x: &Array3<f32>,
) -> Result<Array3<f32>, String> {
    let mut current = x.clone();
    for p in segments {
        current = p.run(&current).map_err(|e| format!("error: {e}"))?;
    }
    tail.run(&current).map_err(|e| format!("error: {e}"))
}

pub fn main(cli: &Cli) -> Result<(), String> {
    let which = kernels(&cli.kernels)?;
    box_options(cli)?;
    let npy = cli.input.extension().is_some_and(|e| e == "npy");
    if cli.boxes.is_some() && (npy || cli.input.is_dir() || cli.input.as_os_str() == "-") {
        return Err(
            "error: --boxes draws over the input image: give one image (PNG, JPEG) as --input"
                .into(),
        );
    }
    if cli.local {
        let bytes = std::fs::read(&cli.plan)
            .map_err(|e| format!("error: cannot read {}: {e}", cli.plan.display()))?;
        let plan = decode(&bytes).map_err(|e| plan_error(&cli.plan, &e))?;
        let steal = cli.adapt.stealing()?;
        let replan = (!cli.no_replan && steal.is_none())
            .then(|| cli.adapt.config())
            .transpose()?;
        let mut cluster = LocalCluster::with_kernels(plan, which, None);
        if let Some(e) = cluster.compile_error() {
            eprintln!("warning: {e}; that node runs the reference kernels");
        }
        let segments = cluster.segments().to_vec();
        if let Some(config) = replan {
            let layers = segments.iter().map(|p| ProgramLayers::of(p)).collect();
            adapt::enable(cluster.coordinator(), config, layers)?;
        }
        cluster.coordinator().set_stealing(steal);
        let tail = Arc::new(cluster.tail().clone());
        return frames_through(cli, cluster.coordinator(), "in-process", &segments, &tail);
    }
    let (file, header) = open_plan(&cli.plan)?;
    let tail = Arc::new(file.tail(&header).map_err(|e| plan_error(&cli.plan, &e))?);
    // The segments, for the deviation of an approximate or compressed plan only.
    let segments: Vec<Arc<Program>> =
        if header.plan.is_exact() && header.plan.compression == Compression::None {
            Vec::new()
        } else {
            (0..header.plan.segments.len())
                .map(|i| file.segment(&header, i).map(Arc::new))
                .collect::<Result<_, _>>()
                .map_err(|e| plan_error(&cli.plan, &e))?
        };
    // Checked before any worker is reached.
    let deadlines = cli.remote.deadlines()?;
    let steal = cli.adapt.stealing()?;
    let replan = match cli.no_replan || steal.is_some() {
        true => None,
        false => Some((cli.adapt.config()?, adapt::layers_of(&file, &header)?)),
    };
    let transport = cli.remote.connect(&file, &header, which)?;
    for l in &transport.links {
        let shipped = if l.shipped_sections == 0 {
            "plan cached".to_string()
        } else {
            format!(
                "{} section(s), {:.1} MiB shipped",
                l.shipped_sections,
                l.shipped_bytes as f64 / (1 << 20) as f64
            )
        };
        let compiled = if l.cached {
            "kernels cached".to_string()
        } else {
            format!("kernels compiled in {:.0} ms", l.compile_ms)
        };
        let emulated = if l.emulated_latency_ms > 0.0 {
            format!(
                ", {:.1} ms latency emulated each way",
                l.emulated_latency_ms
            )
        } else {
            String::new()
        };
        // The plan was made for the cluster file's threads; a worker started with others
        // computes at another speed than planned (re-planning, if on, will notice).
        let planned = header
            .plan
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == l.name)
            .map_or(1, |n| n.threads);
        let differs = if l.threads as usize != planned {
            format!(" (the plan assumed {planned})")
        } else {
            String::new()
        };
        outln!(
            "worker {:<10} {:<22} {shipped}, {compiled}, {} thread(s){differs}{emulated}",
            l.name,
            l.address,
            l.threads
        );
    }
    let mut coordinator = remote::coordinator(header, Arc::clone(&tail), transport, which)?;
    coordinator.set_deadlines(deadlines);
    coordinator.set_stealing(steal);
    if let Some((config, layers)) = replan {
        adapt::enable(&mut coordinator, config, layers)?;
    }
    frames_through(cli, &mut coordinator, "gRPC", &segments, &tail)
}

/// Runs the frames `cli.input` names through `coordinator` and reports them.
fn frames_through<T: Transport>(
    cli: &Cli,
    coordinator: &mut Coordinator<T>,
    how: &str,
    segments: &[Arc<Program>],
    tail: &Program,
) -> Result<(), String> {
    let header = coordinator.header().clone();
    let plan = &header.plan;
    let input: Box<dyn Iterator<Item = Frame>> = frames::frames(&cli.input, &header.network.input)?;
    let many = cli.input.is_dir() || cli.input.as_os_str() == "-";
    if let Some(out) = cli.output.as_ref().filter(|_| many) {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("error: cannot create {}: {e}", out.display()))?;
    }
    outln!(
        "{} on {} ({how}, strategy {}, compression {})",
        plan.network,
        plan.cluster.name,
        plan.strategy.name(),
        plan.compression.name()
    );
    let names: Vec<String> = plan.cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let mut trace = Trace::new(names.clone());
    // The latest LATENCY_WINDOW frames' latencies, for the summary: an endless stream must
    // not keep one per frame.
    let mut latencies = VecDeque::with_capacity(LATENCY_WINDOW);
    let mut frame_metrics = Vec::new();
    let mut first_error: Option<String> = None;
    // A single frame runs twice: first-touch allocations and thread start-up are not the
    // plan's cost.
    let single = !many;
    let (frames, input): (Vec<Frame>, Box<dyn Iterator<Item = Frame>>) = if single {
        (input.collect(), Box::new(std::iter::empty()))
    } else {
        (Vec::new(), input)
    };
    if single {
        let (_, x) = frames.first().cloned().ok_or("error: no input")??;
        coordinator
            .run_frame(x.clone())
            .map_err(|e| format!("error: {e}"))?;
    }
    let source: Box<dyn Iterator<Item = Frame>> = if single {
        Box::new(frames.into_iter())
    } else {
        input
    };
    let mut status = Status::of(coordinator, many);
    let started = std::time::Instant::now();
    // Frames on their way, in order: their names, and their inputs when the deviation from
    // the exact network is wanted. Each finished frame is reported and written at once, so
    // a stream's outputs appear as it goes and an error loses no finished frame.
    let on_the_way: RefCell<VecDeque<(String, Option<Array3<f32>>)>> = RefCell::default();
    let mut stream = source.map(|f| match f {
        Ok((stem, x)) => {
            let keep = (!segments.is_empty()).then(|| x.tensor.clone());
            on_the_way.borrow_mut().push_back((stem, keep));
            Ok(x)
        }
        Err(e) => {
            first_error.get_or_insert(e.clone());
            Err(RunError::Input(e))
        }
    });
    let in_flight = cli.in_flight.max(1);
    let mut i = 0usize;
    let replanning = coordinator.replanning();
    let result = coordinator.run_stream(&mut stream, in_flight, |r| {
        let (stem, x) = on_the_way.borrow_mut().pop_front().unwrap_or_default();
        status.frame(&r);
        let name = |node: usize| names.get(node).map_or("?", String::as_str);
        let late: Vec<String> = r
            .redispatched
            .iter()
            .filter(|d| d.late)
            .map(|d| {
                format!(
                    "segment {} tile {} {} → {}",
                    d.segment,
                    d.tile,
                    name(d.from),
                    name(d.to)
                )
            })
            .collect();
        if !late.is_empty() {
            status.suspend(|| {
                eprintln!(
                    "warning: frame {stem}: {} tile(s) late, sent again: {} (a late node gets no \
                     new tiles until it answers)",
                    late.len(),
                    late.join(", ")
                );
            });
        }
        for e in &r.telemetry {
            match e {
                Telemetry::Lost { node, reason } => status.suspend(|| {
                    eprintln!(
                        "warning: node {} was lost ({reason}); its tiles run on the other \
                         workers of their segments from frame {stem} on",
                        name(*node)
                    );
                }),
                Telemetry::Rejoined { node } => status.suspend(|| {
                    if replanning {
                        eprintln!(
                            "note: node {} is back at frame {stem}; it gets tiles again once \
                             they are re-planned for it",
                            name(*node)
                        );
                    } else {
                        eprintln!(
                            "note: node {} is back; it gets its tiles again from frame {stem} on",
                            name(*node)
                        );
                    }
                }),
                Telemetry::Replan {
                    frame,
                    reason,
                    predicted_ms,
                    current_ms,
                    before,
                    after,
                    ..
                } => status.suspend(|| {
                    let share = |v: &[f64]| {
                        v.iter()
                            .enumerate()
                            .filter(|(_, s)| **s > 0.0)
                            .map(|(n, s)| format!("{} {:.0}%", name(n), 100.0 * s))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    eprintln!(
                        "note: re-planned ({reason}): from frame {frame} on the tiles give {} \
                         (were {}); head predicted {predicted_ms:.1} ms, {current_ms:.1} ms with \
                         the old tiles",
                        share(after),
                        share(before)
                    );
                }),
                _ => {}
            }
        }
        if latencies.len() == LATENCY_WINDOW {
            latencies.pop_front();
        }
        latencies.push_back(r.measured_ms);
        let delivered = status
            .suspend(|| report_frame(cli, &r, &stem, x.as_ref(), plan, how, segments, tail, many));
        delivered.map_err(RunError::Output)?;
        if cli.metrics.is_some() {
            frame_metrics.push(serde_json::json!({
                "frame": i,
                "name": stem,
                "latency_ms": r.measured_ms,
                "node_busy_ms": r.node_busy_ms,
                "wire_bytes": r.wire_bytes,
                "compression_error": r.compression_error,
                "redispatched": r.redispatched,
                "replans": r.telemetry.iter().filter(|e| matches!(e, Telemetry::Replan { .. })).collect::<Vec<_>>(),
            }));
        }
        if cli.trace.is_some() {
            trace.extend(r.trace);
        }
        i += 1;
        Ok(())
    });
    drop(stream);
    status.finish();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(e);
    }
    result.map_err(|e| match e {
        RunError::Output(m) => m,
        e => format!("error: {e}"),
    })?;
    if many {
        let mut sorted: Vec<f64> = latencies.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let over = if i > sorted.len() {
            format!(" (of the last {})", sorted.len())
        } else {
            String::new()
        };
        let pick = |p: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        outln!(
            "{i} frames in {elapsed:.2} s: {:.2} frames/s, latency p50 {:.2} ms, p99 {:.2} ms{over} ({} in flight)",
            i as f64 / elapsed.max(1e-9),
            pick(0.5),
            pick(0.99),
            in_flight
        );
        if let Some(out) = &cli.output {
            outln!("wrote {i} outputs to {}", out.display());
        }
    }
    if let Some(path) = &cli.trace {
        npy::write_atomically(path, trace.to_json().as_bytes())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote trace {}", path.display());
    }
    if let Some(path) = &cli.metrics {
        let json = serde_json::json!({
            "plan": { "network": plan.network, "cluster": plan.cluster.name,
                      "strategy": plan.strategy.name(), "compression": plan.compression.name(),
                      "predicted_ms": plan.predicted_ms },
            "transport": how,
            "in_flight": in_flight,
            "elapsed_s": elapsed,
            "frames": frame_metrics,
            "nodes": status.figures.nodes,
        });
        let text = serde_json::to_string_pretty(&json).map_err(|e| format!("error: {e}"))?;
        npy::write_atomically(path, text.as_bytes())
            .map_err(|e| format!("error: cannot write {}: {e}", path.display()))?;
        outln!("wrote metrics {}", path.display());
    }
    Ok(())
}
