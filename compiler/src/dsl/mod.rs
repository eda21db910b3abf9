//! The YAML DSL: network and cluster files.
//!
//! A file holds `network:` and/or `cluster:`; `cluster:` may also name another file. Loading
//! collects every problem of every file involved as [`Diagnostics`].

pub mod cluster;
pub mod expr;
pub mod network;
pub mod ops;
pub mod read;
pub mod yaml;

use std::path::Path;

use crate::diag::{Diagnostic, Diagnostics, SourceMap};
use crate::dsl::read::Fields;
use crate::dsl::yaml::Value;
use adcnn_core::cluster::Cluster;

pub use network::NetworkSpec;

/// What one DSL file (plus a cluster file it names) describes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    pub network: Option<NetworkSpec>,
    pub cluster: Option<Cluster>,
}

/// Reads and lowers a DSL file. Files are added to `sources` so diagnostics can quote them.
pub fn load(path: &Path, sources: &mut SourceMap, diags: &mut Diagnostics) -> Document {
    match read_file(path, diags) {
        Some(text) => load_text(path, text, sources, diags),
        None => Document::default(),
    }
}

/// Like [`load`], for text already in memory; `path` names it in messages and anchors
/// relative paths (weights, cluster files).
pub fn load_text(
    path: &Path,
    text: String,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Document {
    let mut doc = Document::default();
    let Some(root) = parse_yaml(path, text, sources, diags) else {
        return doc;
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("network");
    let Some(mut f) = Fields::new(&root, "the file", diags) else {
        return doc;
    };
    let network = f.get("network");
    let cluster = f.get("cluster");
    f.finish(diags);
    if network.is_none() && cluster.is_none() {
        diags.push(
            Diagnostic::error("the file has neither `network:` nor `cluster:`").at(
                &root.span,
                "expected `network:` and/or `cluster:` at the top level",
            ),
        );
    }
    if let Some(n) = network {
        let key = root
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("network")))
            .map_or(n.span.clone(), |(k, _)| k.span.clone());
        doc.network = network::lower(n, &key, sources.text(n.span.file), dir, stem, diags);
    }
    if let Some(c) = cluster {
        doc.cluster = match &c.value {
            Value::Str(p) => load_cluster(&dir.join(p), sources, diags).or_else(|| {
                // Point at the reference too, so the user sees where the file was named.
                if diags.is_empty() {
                    diags.push(
                        Diagnostic::error(format!("`{p}` has no `cluster:`"))
                            .at(&c.span, "named here"),
                    );
                }
                None
            }),
            _ => cluster::lower(c, stem, diags),
        };
    }
    doc
}

/// Reads a file that must hold a `cluster:` section.
pub fn load_cluster(
    path: &Path,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Option<Cluster> {
    let text = read_file(path, diags)?;
    let root = parse_yaml(path, text, sources, diags)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("cluster");
    let mut f = Fields::new(&root, "a cluster file", diags)?;
    let c = f.require("cluster", diags);
    f.get("network");
    f.finish(diags);
    cluster::lower(c?, stem, diags)
}

/// Largest file read, in bytes.
const MAX_FILE_BYTES: u64 = yaml::MAX_YAML_BYTES as u64;

fn read_file(path: &Path, diags: &mut Diagnostics) -> Option<String> {
    if let Ok(m) = std::fs::metadata(path)
        && m.len() > MAX_FILE_BYTES
    {
        diags.push(Diagnostic::error(format!(
            "{}: {} bytes; network and cluster files are limited to {MAX_FILE_BYTES} bytes",
            path.display(),
            m.len()
        )));
        return None;
    }
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => Some(t),
            Err(_) => {
                diags.push(Diagnostic::error(format!(
                    "{}: not UTF-8 text",
                    path.display()
                )));
                None
            }
        },
        Err(e) => {
            diags.push(Diagnostic::error(format!(
                "cannot read {}: {e}",
                path.display()
            )));
            None
        }
    }
}

fn parse_yaml(
    path: &Path,
    text: String,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Option<yaml::Node> {
    let file = sources.add(path, text);
    match yaml::parse(sources.text(file), file) {
        Ok(root) => Some(root),
        Err(d) => {
            diags.push(d);
            None
        }
    }
}

/// Lowers only the `network:` section of DSL text, ignoring any `cluster:` (a plan carries its
/// cluster itself), and reading no other file.
pub fn load_network_text(
    path: &Path,
    text: String,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Option<NetworkSpec> {
    let root = parse_yaml(path, text, sources, diags)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("network");
    let (key, node) = root
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some("network"))?;
    network::lower(
        node,
        &key.span,
        sources.text(node.span.file),
        dir,
        stem,
        diags,
    )
}
