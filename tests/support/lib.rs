//! Helpers shared by the workspace-level integration tests in `tests/`.

use std::path::{Path, PathBuf};

/// The repository root (the workspace's own manifest folder).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The six example networks and their conv GFLOPs as the literature counts them
/// (FLOP = 2 × multiply-accumulate, convolutions only).
pub const EXAMPLE_NETS: &[(&str, f64)] = &[
    ("alexnet", 1.31),
    ("vgg16", 30.69),
    ("resnet18", 3.63),
    ("resnet50", 8.17),
    ("mobilenetv2", 0.60),
    ("yolov2-tiny", 6.97),
];

/// The example clusters.
pub const EXAMPLE_CLUSTERS: &[&str] = &["edge4", "lan8"];

/// `dsl-examples/NAME.yaml`, relative to the repository root (tests run there).
pub fn example(name: &str) -> PathBuf {
    PathBuf::from("dsl-examples").join(format!("{name}.yaml"))
}

/// The `.yaml` files in `dir` (relative to the repository root), sorted by name.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| Path::new(dir).join(p.file_name().unwrap_or_default()))
        .collect();
    files.sort();
    files
}
