//! The `cluster:` section.

use crate::diag::{Diagnostic, Diagnostics};
use crate::dsl::read::{self, Fields};
use crate::dsl::yaml::Node;
use adcnn_core::cluster::{Cluster, Node as ClusterNode};

/// Most nodes in one cluster.
pub const MAX_NODES: usize = 1024;

pub fn lower(node: &Node, default_name: &str, diags: &mut Diagnostics) -> Option<Cluster> {
    let mut f = Fields::new(node, "`cluster`", diags)?;
    let name = match f.get("name") {
        Some(n) => read::string(n, "`name`", diags)
            .unwrap_or(default_name)
            .to_string(),
        None => default_name.to_string(),
    };
    let coordinator = f.require("coordinator", diags);
    let nodes_node = f.require("nodes", diags);
    f.finish(diags);
    let before = diags.len();
    let items = read::list(nodes_node?, "`nodes`", diags)?;
    if items.len() > MAX_NODES {
        diags.push(
            Diagnostic::error(format!("more than {MAX_NODES} nodes"))
                .at(&nodes_node?.span, "too many"),
        );
        return None;
    }
    let mut nodes: Vec<(ClusterNode, &Node)> = Vec::new();
    for item in items {
        let Some(n) = lower_node(item, diags) else {
            continue;
        };
        if let Some((_, first)) = nodes.iter().find(|(m, _)| m.name == n.name) {
            diags.push(
                Diagnostic::error(format!("two nodes are named `{}`", n.name))
                    .at(&item.span, "second definition")
                    .note(&first.span, "first defined here"),
            );
            continue;
        }
        nodes.push((n, item));
    }
    let coordinator = coordinator.and_then(|c| {
        let name = read::string(c, "`coordinator`", diags)?;
        let i = nodes.iter().position(|(n, _)| n.name == name);
        if i.is_none() {
            let names: Vec<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
            diags.push(
                Diagnostic::error(format!("the coordinator `{name}` is not one of the nodes"))
                    .at(&c.span, "unknown node")
                    .help(format!("nodes: {}", names.join(", "))),
            );
        }
        i
    });
    if !nodes.is_empty() && !nodes.iter().any(|(n, _)| n.worker) {
        diags.push(
            Diagnostic::error("the cluster has no worker")
                .at(&nodes_node?.span, "every node has `worker: false`")
                .help("at least one node must process tiles"),
        );
    }
    if nodes.is_empty() && diags.len() == before {
        diags.push(Diagnostic::error("the cluster has no nodes").at(&nodes_node?.span, "empty"));
    }
    let coordinator = coordinator?;
    for (i, (n, item)) in nodes.iter().enumerate() {
        if i != coordinator && n.mbps.is_none() {
            diags.push(
                Diagnostic::error(format!("node `{}` has no `mbps`", n.name))
                    .at(&item.span, "link bandwidth to the coordinator missing")
                    .help("every node but the coordinator declares its link: `mbps: 100, latency_ms: 2`"),
            );
        }
    }
    (diags.len() == before).then(|| Cluster {
        name,
        nodes: nodes.into_iter().map(|(n, _)| n).collect(),
        coordinator,
    })
}

fn lower_node(node: &Node, diags: &mut Diagnostics) -> Option<ClusterNode> {
    let mut f = Fields::new(node, "a cluster node", diags)?;
    let name = f.require("name", diags);
    let address = f.get("address");
    let gflops = f.require("gflops", diags);
    let mbps = f.get("mbps");
    let latency = f.get("latency_ms");
    let worker = f.get("worker");
    let threads = f.get("threads");
    f.finish(diags);
    let before = diags.len();
    let name = read::string(name?, "a node name", diags).map(str::to_string);
    if let (Some(n), Some(node)) = (&name, f_name_node(node))
        && !read::is_valid_name(n)
    {
        diags.push(
            Diagnostic::error(format!("`{n}` is not a valid node name"))
                .at(&node.span, "invalid name")
                .help("names start with a letter or `_` and use letters, digits, `_` and `.`"),
        );
    }
    let address = address.and_then(|a| {
        let s = read::string(a, "`address`", diags)?;
        if let Err(why) = check_address(s) {
            diags.push(
                Diagnostic::error(format!("`{s}` is not a valid node address: {why}"))
                    .at(&a.span, "expected HOST:PORT")
                    .help("e.g. `192.168.1.20:7070` or `jetson-3.local:7070`"),
            );
        }
        Some(s.to_string())
    });
    let gflops = gflops.and_then(|g| {
        read::number(
            g,
            "`gflops`",
            "a positive number",
            |v| v > 0.0 && v < 1e9,
            diags,
        )
    });
    // `Some(None)`: no link declared (fine for the coordinator); `None`: invalid.
    let mbps = match mbps {
        Some(m) => read::number(
            m,
            "`mbps`",
            "a positive number",
            |v| v > 0.0 && v < 1e9,
            diags,
        )
        .map(Some),
        None => Some(None),
    };
    let latency_ms = match latency {
        Some(l) => read::number(
            l,
            "`latency_ms`",
            "a number ≥ 0",
            |v| (0.0..1e7).contains(&v),
            diags,
        ),
        None => Some(0.0),
    };
    let worker = match worker {
        Some(w) => read::boolean(w, "`worker`", diags),
        None => Some(true),
    };
    let threads = match threads {
        Some(t) => {
            let most = adcnn_core::cluster::MAX_THREADS as i64;
            read::integer(t, "`threads`", 1, most, diags).map(|t| t as usize)
        }
        None => Some(1),
    };
    if diags.len() != before {
        return None;
    }
    Some(ClusterNode {
        name: name?,
        address,
        gflops: gflops?,
        mbps: mbps?,
        latency_ms: latency_ms?,
        worker: worker?,
        threads: threads?,
    })
}

fn f_name_node(node: &Node) -> Option<&Node> {
    node.get("name")
}

fn check_address(s: &str) -> Result<(), &'static str> {
    let (host, port) = s.rsplit_once(':').ok_or("no `:PORT`")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err("the host has characters that are not allowed");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("the port must be 1–65535"),
    }
}
