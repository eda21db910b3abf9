//! `adcnnc check`: load a DSL file, build and validate everything it describes.

use std::path::Path;

use crate::diag::{Diagnostics, SourceMap};
use crate::graph::LayerGraph;
use crate::weights::{self, Weights};
use adcnn_core::cluster::Cluster;

/// Everything a successful check produced, or every problem found.
#[derive(Debug, Default)]
pub struct Checked {
    pub sources: SourceMap,
    pub diagnostics: Diagnostics,
    pub network: Option<(LayerGraph, Weights)>,
    pub cluster: Option<Cluster>,
}

impl Checked {
    pub fn is_ok(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// The lines `check` prints on success: one for the network, one for the cluster.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((g, _)) = &self.network {
            lines.push(g.summary());
        }
        if let Some(c) = &self.cluster {
            lines.push(c.summary());
        }
        lines
    }

    /// The diagnostics as `check` prints them.
    pub fn render(&self) -> String {
        self.diagnostics.render(&self.sources)
    }
}

/// Checks `path` and, if given, a separate cluster file (which takes the place of any
/// `cluster:` in `path`).
pub fn check(path: &Path, cluster_file: Option<&Path>) -> Checked {
    let mut out = Checked::default();
    let doc = crate::dsl::load(path, &mut out.sources, &mut out.diagnostics);
    finish(out, doc, cluster_file)
}

/// [`check`] for text in memory (`path` names it and anchors relative paths).
pub fn check_text(path: &Path, text: String) -> Checked {
    let mut out = Checked::default();
    let doc = crate::dsl::load_text(path, text, &mut out.sources, &mut out.diagnostics);
    finish(out, doc, None)
}

fn finish(mut out: Checked, doc: crate::dsl::Document, cluster_file: Option<&Path>) -> Checked {
    out.cluster = match cluster_file {
        Some(c) => crate::dsl::load_cluster(c, &mut out.sources, &mut out.diagnostics),
        None => doc.cluster,
    };
    if let Some(spec) = &doc.network {
        // Shape errors are only meaningful once the DSL itself is sound.
        if out.diagnostics.is_empty() {
            match LayerGraph::build(spec) {
                Ok(graph) => {
                    if let Some(w) = weights::bind(&graph, &mut out.diagnostics) {
                        out.network = Some((graph, w));
                    }
                }
                Err(d) => out.diagnostics.extend(d),
            }
        }
    }
    out
}
