//! `adcnn-run`: runs plans built by `adcnnc build` — on the workers of the plan's cluster
//! over gRPC, or every node in this process with `--local` — and runs the worker daemons.

mod adapt;
mod bench;
mod calibrate;
mod certs;
mod frames;
mod remote;
mod report;
mod run;
mod status;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = || std::env::args().skip(1);
    let result = match std::env::args().nth(1).as_deref() {
        Some("bench") => bench::main(&bench::BenchCli::parse_from(args())),
        Some("worker") => worker::main(&worker::WorkerCli::parse_from(args())),
        Some("certs") => certs::main(&certs::CertsCli::parse_from(args())),
        Some("report") => report::main(&report::ReportCli::parse_from(args())),
        Some("calibrate") => calibrate::main(&calibrate::CalibrateCli::parse_from(args())),
        _ => run::main(&run::Cli::parse()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
