//! What the runtime reads of a cluster file: its nodes' names and addresses (the rest is the
//! planner's business). `adcnn-run PLAN --cluster FILE` takes the workers' addresses from it,
//! by node name; `adcnn-run certs --cluster FILE` names a certificate after every node.

use std::path::Path;

use serde::Deserialize;

/// Largest cluster file read (the DSL's own limit).
pub const MAX_CLUSTER_FILE_BYTES: u64 = 4 << 20;

/// One node: its name and `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub name: String,
    pub address: Option<String>,
}

#[derive(Deserialize)]
struct File {
    cluster: Option<Cluster>,
}

#[derive(Deserialize)]
struct Cluster {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    name: String,
    address: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path} has no `cluster:` section")]
    NoCluster { path: String },
}

/// The nodes of the cluster in `path`, in file order.
pub fn read(path: &Path) -> Result<Vec<NodeAddress>, ClusterFileError> {
    let shown = path.display().to_string();
    let read = |reason: String| ClusterFileError::Read {
        path: shown.clone(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| read(e.to_string()))?;
    if meta.len() > MAX_CLUSTER_FILE_BYTES {
        return Err(read(format!("larger than {MAX_CLUSTER_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let options = serde_saphyr::options! { with_snippet: false };
    let file: File = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
        ClusterFileError::Parse {
            path: shown.clone(),
            reason: e.to_string(),
        }
    })?;
    let cluster = file
        .cluster
        .ok_or(ClusterFileError::NoCluster { path: shown })?;
    Ok(cluster
        .nodes
        .into_iter()
        .map(|n| NodeAddress {
            name: n.name,
            address: n.address,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_example_clusters_and_refuses_what_is_not_one() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let nodes = read(&root.join("dsl-examples/edge4.yaml")).expect("reads");
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[1].name, "edge1");
        assert_eq!(nodes[1].address.as_deref(), Some("10.77.0.11:7070"));
        let dir = std::env::temp_dir().join(format!("adcnn-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.yaml");
        std::fs::write(&f, "network: {}\n").expect("write");
        assert!(matches!(read(&f), Err(ClusterFileError::NoCluster { .. })));
        std::fs::write(&f, "cluster: { nodes: [ { name: a, address: [1, 2] } ] }\n")
            .expect("write");
        assert!(matches!(read(&f), Err(ClusterFileError::Parse { .. })));
        assert!(matches!(
            read(&dir.join("missing.yaml")),
            Err(ClusterFileError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
