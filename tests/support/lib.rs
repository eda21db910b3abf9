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
    ("mobilenetv3-small", 0.11),
    ("mobilenetv3-large", 0.43),
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

/// Every float32 tensor in a `.safetensors` file, by name.
pub fn read_safetensors(path: &Path) -> std::collections::BTreeMap<String, ndarray::ArrayD<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            assert_eq!(
                t.dtype(),
                safetensors::Dtype::F32,
                "{name} in {}",
                path.display()
            );
            let v: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let a = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(t.shape()), v)
                .expect("shape matches data");
            (name, a)
        })
        .collect()
}

/// ‖a − b‖₂ / ‖b‖₂ over all elements (in f64; `adcnn_core::tensor::rel_l2`), for tensors
/// that must not be empty.
pub fn relative_l2<'a>(
    a: impl IntoIterator<Item = &'a f32>,
    b: impl IntoIterator<Item = &'a f32>,
) -> f64 {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.into_iter().copied().collect(),
        b.into_iter().copied().collect(),
    );
    assert!(
        !b.is_empty() && a.len() == b.len(),
        "tensors of {} and {} values",
        a.len(),
        b.len()
    );
    adcnn_core::tensor::rel_l2(&a, &b)
}
