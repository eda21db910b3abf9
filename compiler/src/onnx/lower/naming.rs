//! Layer names after PyTorch module paths: from the node names of the TorchScript exporter or
//! the scopes the dynamo exporter records, else the weights' names, else the op type.

use std::collections::HashSet;

use crate::onnx::proto::NodeProto;
use crate::onnx::types::Layer;

/// The node's scope as a TorchScript-style name: the dynamo exporter names nodes
/// `node_relu_1` but records `pkg.torch.onnx.name_scopes` =
/// `['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1']`, which becomes
/// `/layer1/layer1.0/layer1.0.relu/relu_1`.
pub(super) fn scope_name(node: &NodeProto) -> String {
    let scopes = node
        .metadata_props
        .iter()
        .find(|p| p.key() == "pkg.torch.onnx.name_scopes")
        .map(|p| p.value());
    match scopes {
        Some(list) if list.starts_with('[') && list.ends_with(']') => list[1..list.len() - 1]
            .split(',')
            .map(|s| s.trim().trim_matches(['\'', '"']))
            .filter(|s| !s.is_empty())
            .fold(String::new(), |acc, s| format!("{acc}/{s}")),
        _ => node.name().to_string(),
    }
}

/// `/layer1/layer1.0/conv1/Conv` → (`layer1.0.conv1`, `conv`). Torch names each scope by
/// its qualified name from the last non-numeric atom on (`features.1`, `conv`, `conv.0.2`),
/// so a scope's last atom is its attribute name in the parent scope.
pub(super) fn module_path(node_name: &str) -> (String, String) {
    let segs: Vec<&str> = node_name.split('/').filter(|s| !s.is_empty()).collect();
    let Some((last, scopes)) = segs.split_last() else {
        return (String::new(), String::new());
    };
    let mut path = String::new();
    for s in scopes {
        if path.is_empty() {
            path = s.to_string();
        } else {
            let atom = s.rsplit('.').next().unwrap_or(s);
            path = format!("{path}.{atom}");
        }
    }
    (sanitize(&path), sanitize(&last.to_lowercase()))
}

/// Keeps `[A-Za-z0-9_.]`, maps anything else to `_`, drops empty dot-segments.
fn sanitize(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    mapped
        .split('.')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(".")
}

/// Gives every layer a unique valid name: the weight's PyTorch name, else the node's module
/// path (plus the op for nodes directly inside a container module), else the op type.
pub(super) fn name_layers(layers: &mut [Layer]) {
    let mut prefixes: HashSet<String> = HashSet::new();
    for l in layers.iter() {
        for name in [Some(&l.path), l.preferred.as_ref()].into_iter().flatten() {
            let mut p = name.as_str();
            while let Some((head, _)) = p.rsplit_once('.') {
                prefixes.insert(head.to_string());
                p = head;
            }
        }
    }
    let names: Vec<String> = layers
        .iter()
        .map(|l| {
            if let Some(p) = &l.preferred {
                return p.clone();
            }
            // A module with sub-modules: name its own nodes `module.op`. A module called
            // several times (one ReLU reused) gets `_1`, `_2`, … when names are made unique.
            let container = prefixes.contains(&l.path);
            // The op part of a node name (`GlobalAveragePool_1`) in DSL words (`global_avgpool_1`).
            let op_type = l.op_type.to_lowercase();
            let op = match l.op_seg.strip_prefix(&op_type) {
                Some(rest) => format!("{}{rest}", l.op.kind()),
                None if l.op_seg.is_empty() => l.op.kind().to_string(),
                None => l.op_seg.clone(),
            };
            let name = if l.path.is_empty() {
                op
            } else if container {
                format!("{}.{op}", l.path)
            } else {
                l.path.clone()
            };
            let name = sanitize(&name);
            if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                name
            } else {
                format!("{}_{name}", l.op_type.to_lowercase())
            }
        })
        .collect();
    let mut taken: HashSet<String> = HashSet::new();
    taken.insert(crate::dsl::network::INPUT.to_string());
    for (l, base) in layers.iter_mut().zip(names) {
        let mut name = base.clone();
        let mut k = 1;
        while taken.contains(&name) || !crate::dsl::read::is_valid_name(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        taken.insert(name.clone());
        l.name = name;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_torch_scopes() {
        assert_eq!(
            module_path("/layer1/layer1.0/conv1/Conv"),
            ("layer1.0.conv1".into(), "conv".into())
        );
        assert_eq!(
            module_path("/features/features.0/Conv"),
            ("features.0".into(), "conv".into())
        );
        assert_eq!(
            module_path("/features/features.1/conv/conv.0/conv.0.2/Clip"),
            ("features.1.conv.0.2".into(), "clip".into())
        );
        assert_eq!(module_path("/Flatten"), (String::new(), "flatten".into()));
        assert_eq!(module_path(""), (String::new(), String::new()));
        assert_eq!(sanitize("a/b c..d"), "a_b_c.d");
    }
}
