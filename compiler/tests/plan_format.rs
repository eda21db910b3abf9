//! plan.bin: round trips, refuses other versions naming both, and never panics on damage.

use std::path::Path;

use adcnn_compiler::build::build;
use adcnn_compiler::plan::format::{FORMAT_VERSION, FormatError, decode};
use adcnn_compiler::plan::{Options, Strategy};
use proptest::prelude::*;

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/cases")
        .join(format!("{name}.yaml"))
}

fn plan_bytes(name: &str) -> Vec<u8> {
    let opts = Options {
        strategy: Strategy::Halo,
        ..Options::default()
    };
    build(&golden(name), None, &opts, 3).expect("builds").bytes
}

#[test]
fn a_plan_with_file_weights_carries_them() {
    let bytes = plan_bytes("resnet_block");
    let lp = decode(&bytes).expect("decodes");
    assert_eq!(lp.plan.cluster.nodes.len(), 3);
    // The network's weights came from a .safetensors file, so they travel inside the plan.
    assert!(lp.weights.len() >= 10, "{} tensors", lp.weights.len());
    assert!(lp.weights.get_by_name("main.conv1.weight").is_some());
}

#[test]
fn another_format_version_is_refused_naming_both() {
    let mut bytes = plan_bytes("conv_k3_p1");
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let err = decode(&bytes).expect_err("other version");
    assert!(
        matches!(err, FormatError::Version { found, .. } if found == FORMAT_VERSION + 1),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("plan format {}", FORMAT_VERSION + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("reads format {FORMAT_VERSION}")),
        "{message}"
    );
}

#[test]
fn damage_is_a_clear_error() {
    let bytes = plan_bytes("conv_k3_p1");
    assert_eq!(
        decode(&bytes[..bytes.len() / 2]).expect_err("cut"),
        FormatError::Checksum
    );
    assert!(matches!(
        decode(&bytes[..10]).expect_err("cut"),
        FormatError::Truncated(_)
    ));
    let mut flipped = bytes.clone();
    flipped[40] ^= 0x10;
    assert_eq!(
        decode(&flipped).expect_err("flipped"),
        FormatError::Checksum
    );
    assert_eq!(
        decode(b"not a plan at all").expect_err("junk"),
        FormatError::NotAPlan
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let mut with_magic = b"ADCNNPLN\x01\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn truncations_and_flips_never_panic(cut in 0usize..4000, flip in 0usize..4000, bit in 0u8..8) {
        let bytes = plan_bytes("conv_k3_p1");
        let _ = decode(&bytes[..cut.min(bytes.len())]);
        let mut b = bytes.clone();
        let i = flip % b.len();
        b[i] ^= 1 << bit;
        let _ = decode(&b);
    }
}
