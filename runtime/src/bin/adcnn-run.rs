//! `adcnn-run`: run a network on an input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use adcnn_compiler::check::check;
use adcnn_compiler::{npy, reference};
use adcnn_runtime::{input, report};
use clap::Parser;

/// Run a CNN described in adcnn's YAML DSL on one input, with the reference interpreter.
///
/// The input is a .npy float32 tensor ([C, H, W] or [1, C, H, W]) or an image (PNG, JPEG),
/// resized and normalised as the network's `input.image` section says.
#[derive(Debug, Parser)]
#[command(name = "adcnn-run", version, about)]
struct Cli {
    /// The network (YAML).
    network: PathBuf,
    /// The input: .npy tensor or image.
    #[arg(long)]
    input: PathBuf,
    /// Write the output tensor here (.npy).
    #[arg(long)]
    output: Option<PathBuf>,
    /// How many classes to print for a classifier.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let checked = check(&cli.network, None);
    let Some((graph, weights)) = checked.network.as_ref().filter(|_| checked.is_ok()) else {
        if checked.is_ok() {
            eprintln!("error: {} describes no network", cli.network.display());
        } else {
            eprint!("{}", checked.render());
        }
        return ExitCode::FAILURE;
    };
    let x = match input::load(&cli.input, &graph.input) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let out = match reference::run(graph, weights, &x) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed();
    println!("{}", graph.summary());
    println!(
        "ran on the reference interpreter in {:.1} ms",
        elapsed.as_secs_f64() * 1e3
    );
    match report::top_k(&out, cli.top_k) {
        Some(top) => {
            println!("top-{}:", top.len());
            for (rank, (class, p)) in top.iter().enumerate() {
                println!("  {:>2}. class {class:>4}  p = {p:.4}", rank + 1);
            }
        }
        None => println!("output {}", graph.output_shape()),
    }
    if let Some(path) = &cli.output {
        if let Err(e) = npy::write_f32_file(path, &out.into_dyn()) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
