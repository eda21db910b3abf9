//! plan.bin behind valid checksums. Random bytes rarely pass a plan's section and index
//! hashes, so this target starts from real plans (built once per process), edits one
//! section with the fuzzer's bytes and writes the file again with every offset and hash
//! recomputed: the edits reach the decoder's checks of the JSON, shapes, weights and tile
//! geometry. Whatever decodes must run (see `plan::run_decoded`).
//!
//! Input: byte 0 picks the base plan, byte 1 the section, byte 2 the edit: even, the rest
//! is (u16 offset, xor mask) triples applied to the section; odd, the rest replaces it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use adcnn_compiler::build::build;
use adcnn_compiler::plan::{Options, Strategy};
use adcnn_core::format::{FORMAT_VERSION, MAGIC, PlanFile, fnv1a};

/// A plan's sections: (kind code, id, bytes), in file order.
pub type Sections = Vec<(u8, u32, Vec<u8>)>;

/// The base plans: small golden networks under a halo, an FDSP and a layer-wise plan.
const BASES: [(&str, Strategy); 4] = [
    ("conv_k3_p1", Strategy::Halo),
    ("conv_k3_p1", Strategy::Fdsp),
    ("resnet_block", Strategy::Halo),
    ("concat2", Strategy::Layerwise),
];

/// The repository root: the first folder above the including crate's manifest that holds
/// the golden cases.
fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| d.join("tests/golden/cases").is_dir())
        .unwrap_or(here)
        .to_path_buf()
}

/// The base plans' sections, built on first use.
pub fn bases() -> &'static [Sections] {
    static BASES_BUILT: OnceLock<Vec<Sections>> = OnceLock::new();
    BASES_BUILT.get_or_init(|| {
        let cases = repo_root().join("tests/golden/cases");
        BASES
            .iter()
            .map(|(name, strategy)| {
                let opts = Options {
                    strategy: *strategy,
                    ..Options::default()
                };
                let net = cases.join(format!("{name}.yaml"));
                let bytes = build(&net, None, &opts, 3)
                    .unwrap_or_else(|e| panic!("{}: {e}", net.display()))
                    .bytes;
                sections(&bytes)
            })
            .collect()
    })
}

/// Splits a valid plan into its sections.
pub fn sections(bytes: &[u8]) -> Sections {
    let file = PlanFile::parse(bytes).expect("a built plan parses");
    file.sections
        .iter()
        .map(|e| {
            let (kind, id) = e.kind.code();
            let (start, len) = (e.offset as usize, e.length as usize);
            (kind, id, bytes[start..start + len].to_vec())
        })
        .collect()
}

/// Writes `sections` as a plan file, with their offsets, hashes and the index hash.
pub fn assemble(sections: &Sections) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let writer = b"fuzz";
    out.extend_from_slice(&(writer.len() as u16).to_le_bytes());
    out.extend_from_slice(writer);
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    let mut offset = (out.len() + sections.len() * 29 + 8) as u64;
    for (kind, id, bytes) in sections {
        out.push(*kind);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&fnv1a(bytes).to_le_bytes());
        offset += bytes.len() as u64;
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    for (_, _, bytes) in sections {
        out.extend_from_slice(bytes);
    }
    out
}

/// The plan `data` describes (see the module's comment).
pub fn edited(data: &[u8]) -> Option<Vec<u8>> {
    let [base, section, mode, rest @ ..] = data else {
        return None;
    };
    let bases = bases();
    let mut s = bases[usize::from(*base) % bases.len()].clone();
    let k = usize::from(*section) % s.len();
    let target = &mut s[k].2;
    if mode % 2 == 0 {
        for edit in rest.chunks_exact(3) {
            if target.is_empty() {
                break;
            }
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % target.len();
            target[at] ^= edit[2];
        }
    } else {
        *target = rest.to_vec();
    }
    Some(assemble(&s))
}

pub fn run(data: &[u8]) {
    if let Some(bytes) = edited(data) {
        crate::plan::run(&bytes);
    }
}
