//! plan.bin: round trips, is self-contained (batch norms folded, weights inside, a node reads
//! only its own sections), refuses other versions naming both, and never panics on damage —
//! also damage behind valid checksums, which reaches the decoder's checks of the plan itself.

use std::path::Path;

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Options, Strategy};
use adcnn_core::format::{
    FORMAT_VERSION, FormatError, OLDEST_READABLE, PlanFile, SectionKind, decode, fnv1a,
};
use adcnn_core::ops::Op;
use proptest::prelude::*;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dsl-examples")
        .join(format!("{name}.yaml"))
}

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/cases")
        .join(format!("{name}.yaml"))
}

fn plan_bytes(net: &Path, cluster: Option<&Path>, strategy: Strategy) -> Vec<u8> {
    let opts = Options {
        strategy,
        ..Options::default()
    };
    build(net, cluster, &opts, 3).expect("builds").bytes
}

fn small() -> Vec<u8> {
    plan_bytes(&golden("conv_k3_p1"), None, Strategy::Halo)
}

#[test]
fn a_plan_with_file_weights_carries_them() {
    let bytes = plan_bytes(&golden("resnet_block"), None, Strategy::Halo);
    let p = decode(&bytes).expect("decodes");
    assert_eq!(p.header.plan.cluster.nodes.len(), 3);
    // The network's weights came from a .safetensors file, so they travel inside the plan,
    // each segment's with its segment.
    let tensors: usize = p.segments.iter().map(|s| s.weights().len()).sum();
    assert!(tensors >= 4, "{tensors} tensors");
    let names: Vec<&str> = p
        .segments
        .iter()
        .flat_map(|s| s.weights().names())
        .collect();
    assert!(names.contains(&"main.conv1.weight"), "{names:?}");
}

#[test]
fn batch_norms_are_folded_at_build_time() {
    // ResNet-18: every convolution is followed by a batch norm in its segment.
    let bytes = plan_bytes(
        &example("resnet18"),
        Some(&example("edge4")),
        Strategy::Halo,
    );
    let p = decode(&bytes).expect("decodes");
    let layers = p.segments.iter().flat_map(|s| s.layers());
    let ops: Vec<&Op> = layers.map(|l| &l.op).collect();
    assert!(!ops.iter().any(|op| matches!(op, Op::BatchNorm { .. })));
    let identities = ops.iter().filter(|op| matches!(op, Op::Identity)).count();
    assert_eq!(identities, 20, "one identity per folded batch norm");
    for seg in &p.segments {
        for l in seg.layers() {
            if let Op::Conv2d(c) = &l.op {
                assert!(c.bias, "`{}` gained the folded bias", l.name);
                assert!(
                    seg.weights()
                        .get_by_name(&format!("{}.bias", l.name))
                        .is_some()
                );
            }
        }
        // The batch norms' own tensors are gone.
        assert!(!seg.weights().names().any(|n| n.ends_with("running_mean")));
    }
}

#[test]
fn seeded_weights_travel_as_their_seed() {
    // VGG16's 138 M seeded parameters (no batch norm) stay seeds: the plan is small.
    let bytes = plan_bytes(&example("vgg16"), Some(&example("edge4")), Strategy::Auto);
    assert!(bytes.len() < 200_000, "{} bytes", bytes.len());
    let p = decode(&bytes).expect("decodes");
    assert!(
        p.tail
            .weights()
            .get_by_name("classifier.0.weight")
            .is_some()
    );
}

/// A worker reads the plan section and its own segments: damage anywhere else is not its
/// concern (and a full decode names the damaged section).
#[test]
fn a_node_loads_only_its_own_segments() {
    let bytes = plan_bytes(
        &example("resnet18"),
        Some(&example("edge4")),
        Strategy::Auto,
    );
    let file = PlanFile::parse(&bytes).expect("parses");
    let header = file.header().expect("header");
    let segs = &header.plan.segments;
    // A node with tiles in some segments but not in all.
    let (node, skipped) = (0..header.plan.cluster.nodes.len())
        .find_map(|n| {
            let mine: Vec<bool> = segs
                .iter()
                .map(|s| s.tiles.iter().any(|t| t.node == n))
                .collect();
            let other = mine.iter().position(|m| !m)?;
            mine.contains(&true).then_some((n, other))
        })
        .expect("a node without tiles in some segment");
    let entry = file
        .entry(SectionKind::Segment(skipped as u32))
        .expect("entry");
    let mut damaged = bytes.clone();
    let at = (entry.offset + entry.length / 2) as usize;
    damaged[at] ^= 0x55;
    let dir = std::env::temp_dir().join(format!("adcnn-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("plan.bin");
    std::fs::write(&path, &damaged).expect("writes");
    let file = PlanFile::open(&path).expect("opens");
    let header = file.header().expect("the plan section is intact");
    let share = file
        .node_programs(&header, node)
        .expect("its own sections are intact");
    assert!(!share.contains_key(&skipped));
    let want: Vec<usize> = (0..segs.len())
        .filter(|&i| segs[i].tiles.iter().any(|t| t.node == node))
        .collect();
    assert_eq!(share.keys().copied().collect::<Vec<_>>(), want);
    assert_eq!(
        decode(&damaged).expect_err("damaged"),
        FormatError::Checksum(format!("segment {skipped}"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_format_version_is_refused_naming_both() {
    for version in [1, FORMAT_VERSION + 1] {
        let mut bytes = small();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let err = decode(&bytes).expect_err("other version");
        assert!(
            matches!(err, FormatError::Version { found, .. } if found == version),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("plan format {version}")),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "reads formats {OLDEST_READABLE} to {FORMAT_VERSION}"
            )),
            "{message}"
        );
        assert!(message.contains("rebuild the plan"), "{message}");
    }
}

/// Format 4 only added operators: a plan that uses none of them, written as format 3,
/// still decodes to the same plan.
#[test]
fn a_format_3_plan_still_decodes() {
    let bytes = small();
    let mut old = bytes.clone();
    old[8..12].copy_from_slice(&OLDEST_READABLE.to_le_bytes());
    // The index hash covers the header: magic, version, compiler string, count, index.
    let name = u16::from_le_bytes([old[12], old[13]]) as usize;
    let at = 14 + name;
    let count = u32::from_le_bytes(old[at..at + 4].try_into().expect("4 bytes")) as usize;
    let hash_at = at + 4 + count * (1 + 4 + 8 + 8 + 8);
    let hash = fnv1a(&old[..hash_at]);
    old[hash_at..hash_at + 8].copy_from_slice(&hash.to_le_bytes());
    let (new, old) = (
        decode(&bytes).expect("format 4"),
        decode(&old).expect("format 3"),
    );
    assert_eq!(new.header, old.header);
    assert_eq!(new.segments, old.segments);
}

#[test]
fn damage_is_a_clear_error() {
    let bytes = small();
    assert!(matches!(
        decode(&bytes[..bytes.len() / 2]).expect_err("cut"),
        FormatError::Truncated(_)
    ));
    assert!(matches!(
        decode(&bytes[..10]).expect_err("cut"),
        FormatError::Truncated(_)
    ));
    let mut flipped = bytes.clone();
    flipped[30] ^= 0x10;
    assert_eq!(
        decode(&flipped).expect_err("flipped"),
        FormatError::IndexChecksum
    );
    let file = PlanFile::parse(&bytes).expect("parses");
    let plan = file.entry(SectionKind::Plan).expect("plan section");
    let mut flipped = bytes.clone();
    flipped[plan.offset as usize + 5] ^= 0x10;
    assert_eq!(
        decode(&flipped).expect_err("flipped"),
        FormatError::Checksum("plan".into())
    );
    assert_eq!(
        decode(b"not a plan at all").expect_err("junk"),
        FormatError::NotAPlan
    );
}

/// `bytes` with byte `at` of a section xor-ed with `mask`, and that section's hash and the
/// index's hash made to match: damage the checksums cannot catch.
fn rehashed(bytes: &[u8], at: usize, mask: u8) -> Vec<u8> {
    let file = PlanFile::parse(bytes).expect("parses");
    let index_end = file.sections[0].offset as usize - 8;
    let mut out = bytes.to_vec();
    out[at] ^= mask;
    let Some((k, e)) = file
        .sections
        .iter()
        .enumerate()
        .find(|(_, e)| (e.offset as usize..(e.offset + e.length) as usize).contains(&at))
    else {
        return out;
    };
    let hash = fnv1a(&out[e.offset as usize..(e.offset + e.length) as usize]);
    // Entry k's hash is its last 8 bytes: entries are 29 bytes, after the header.
    let entry_end = index_end - (file.sections.len() - 1 - k) * 29;
    out[entry_end - 8..entry_end].copy_from_slice(&hash.to_le_bytes());
    let sum = fnv1a(&out[..index_end]);
    out[index_end..index_end + 8].copy_from_slice(&sum.to_le_bytes());
    out
}

#[test]
fn rehashing_gives_a_file_that_decodes_when_nothing_changed() {
    let bytes = small();
    let file = PlanFile::parse(&bytes).expect("parses");
    let seg = file.entry(SectionKind::Segment(0)).expect("segment");
    // Flipping a bit twice changes nothing: the helper's hashes are right.
    let once = rehashed(&bytes, seg.offset as usize + 3, 1);
    assert!(decode(&once).is_err() || once != bytes);
    let twice = rehashed(&once, seg.offset as usize + 3, 1);
    assert_eq!(twice, bytes);
    decode(&twice).expect("decodes");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let mut with_magic = b"ADCNNPLN\x02\x00\x00\x00".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn truncations_and_flips_never_panic(cut in 0usize..8000, flip in 0usize..8000, bit in 0u8..8) {
        let bytes = small();
        let _ = decode(&bytes[..cut.min(bytes.len())]);
        let mut b = bytes.clone();
        let i = flip % b.len();
        b[i] ^= 1 << bit;
        let _ = decode(&b);
    }

    /// Damage with valid checksums: every check of the decoder (JSON, shapes, weights, tile
    /// geometry) must turn it into an error, never a panic.
    #[test]
    fn damage_behind_valid_checksums_never_panics(at in 0usize..8000, mask in 1u8..=255) {
        let bytes = small();
        let b = rehashed(&bytes, at % bytes.len(), mask);
        if let Ok(p) = decode(&b) {
            // What decodes must run: every tile of every segment, on the plain operators.
            for (seg, prog) in p.header.plan.segments.iter().zip(&p.segments) {
                for tile in &seg.tiles {
                    let s = prog.input_shape();
                    let x = ndarray::Array3::zeros((s.c, tile.input.rows(), tile.input.cols()));
                    let _ = prog.run_tile(seg, tile, &x);
                }
            }
        }
    }
}
