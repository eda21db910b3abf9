//! `adcnn-run certs`: the cluster's certificates.

use std::path::PathBuf;

use adcnn_core::outln;
use adcnn_runtime::net::{cluster_file, tls};

/// Make the cluster's certificates: a cluster CA and one certificate per node, named after
/// it (the coordinator's is also its client certificate). Copy the folder to every device
/// (each needs ca.pem and its own NODE.pem and NODE.key; keep ca.key off the devices) and
/// pass it with --tls-dir.
#[derive(Debug, clap::Parser)]
#[command(name = "adcnn-run certs")]
pub struct CertsCli {
    /// The cluster file (its nodes' names and addresses).
    #[arg(long)]
    pub cluster: PathBuf,
    /// The folder to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn main(cli: &CertsCli) -> Result<(), String> {
    let nodes = cluster_file::read(&cli.cluster).map_err(|e| format!("error: {e}"))?;
    let nodes: Vec<(String, Option<String>)> =
        nodes.into_iter().map(|n| (n.name, n.address)).collect();
    let written = tls::generate(&nodes, &cli.output).map_err(|e| format!("error: {e}"))?;
    outln!(
        "wrote a cluster CA and {} node certificate(s) to {} ({} files)",
        nodes.len(),
        cli.output.display(),
        written.len()
    );
    Ok(())
}
