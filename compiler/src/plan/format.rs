//! `plan.bin`: a self-contained, versioned, checksummed plan.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic        8 bytes  "ADCNNPLN"
//! format       u32      FORMAT_VERSION
//! compiler     u16 len + UTF-8   version of the adcnn that wrote it
//! meta         u64 len + JSON    PlanMeta: the plan, the network's DSL text, weight source
//! tensors      u32 count, then per tensor:
//!              u16 len + name, u8 rank, u64 × rank dims, f32 × numel data
//! checksum     u64      FNV-1a 64 of every byte before it
//! ```
//!
//! Seeded random weights travel as their seed (the network text says `random(seed=N)`);
//! weights from a file travel as tensors. The network travels as its DSL text, which the
//! reader checks again, so a plan needs nothing else.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostics, SourceMap};
use crate::dsl::network::WeightsSource;
use crate::graph::LayerGraph;
use crate::plan::Plan;
use crate::weights::{self, Weights};

pub const MAGIC: &[u8; 8] = b"ADCNNPLN";
/// Bumped whenever the layout or the meaning of any field changes.
pub const FORMAT_VERSION: u32 = 1;
pub const COMPILER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bounds checked before allocating.
const MAX_META_BYTES: u64 = 64 << 20;
const MAX_TENSORS: u32 = 1 << 20;
const MAX_RANK: u8 = 8;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("not a plan file (it does not start with ADCNNPLN)")]
    NotAPlan,
    #[error(
        "this plan uses plan format {found} (written by adcnn {written_by}); this adcnn ({ours}) reads format {FORMAT_VERSION}: rebuild the plan with `adcnnc build`"
    )]
    Version {
        found: u32,
        written_by: String,
        ours: &'static str,
    },
    #[error("the plan file is truncated: {0}")]
    Truncated(&'static str),
    #[error("the plan file is corrupted: checksum mismatch")]
    Checksum,
    #[error("the plan file is corrupted: {0}")]
    Corrupt(String),
    #[error("the plan's network does not check:\n{0}")]
    Network(String),
}

/// Everything in a plan file besides the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PlanMeta {
    plan: Plan,
    /// The network's DSL text, and the name it had (for messages).
    network_source: String,
    network_name: String,
}

/// A decoded plan with the network rebuilt from it.
#[derive(Clone, Debug)]
pub struct LoadedPlan {
    pub plan: Plan,
    pub graph: LayerGraph,
    pub weights: Weights,
    /// The DSL text of the network, as embedded.
    pub network_source: String,
    /// The file's checksum (FNV-1a 64 of its bytes): the key under which a process caches
    /// the plan's compiled kernels.
    pub hash: u64,
}

/// Encodes a plan. `source` is the network's DSL text, `weights` its bound weights (left out
/// when the network's weights are seeded).
pub fn encode(
    plan: &Plan,
    graph: &LayerGraph,
    weights: &Weights,
    source: &str,
    source_name: &str,
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    put_str16(&mut out, COMPILER_VERSION);
    let meta = PlanMeta {
        plan: plan.clone(),
        network_source: source.to_string(),
        network_name: source_name.to_string(),
    };
    let json = serde_json::to_vec(&meta)
        .map_err(|e| FormatError::Corrupt(format!("cannot encode the plan: {e}")))?;
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    let seeded = matches!(
        graph.weights.as_ref().map(|w| &w.source),
        Some(WeightsSource::Random { .. })
    );
    let names: Vec<&str> = if seeded {
        Vec::new()
    } else {
        weights.names().collect()
    };
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for name in names {
        let Some(t) = weights.get_by_name(name) else {
            continue;
        };
        put_str16(&mut out, name);
        out.push(t.ndim() as u8);
        for d in t.shape() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        for v in t.iter() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Decodes a plan file and rebuilds its network. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<LoadedPlan, FormatError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(8, "magic").ok() != Some(MAGIC.as_slice()) {
        return Err(FormatError::NotAPlan);
    }
    let version = r.u32("format version")?;
    let written_by = r
        .str16("compiler version")
        .unwrap_or_else(|_| "unknown".into());
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            found: version,
            written_by,
            ours: COMPILER_VERSION,
        });
    }
    if bytes.len() < r.pos + 8 {
        return Err(FormatError::Truncated("no checksum"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(
        sum.try_into()
            .map_err(|_| FormatError::Truncated("checksum"))?,
    );
    if fnv1a(body) != sum {
        return Err(FormatError::Checksum);
    }
    let mut r = Reader {
        bytes: body,
        pos: r.pos,
    };
    let meta_len = r.u64("metadata length")?;
    if meta_len > MAX_META_BYTES {
        return Err(FormatError::Corrupt(format!(
            "metadata of {meta_len} bytes"
        )));
    }
    let meta_bytes = r.take(meta_len as usize, "metadata")?;
    let meta: PlanMeta = serde_json::from_slice(meta_bytes)
        .map_err(|e| FormatError::Corrupt(format!("metadata: {e}")))?;
    let count = r.u32("tensor count")?;
    if count > MAX_TENSORS {
        return Err(FormatError::Corrupt(format!("{count} tensors")));
    }
    let mut embedded = Weights::new();
    for _ in 0..count {
        let name = r.str16("tensor name")?;
        let rank = r.u8("tensor rank")?;
        if rank > MAX_RANK {
            return Err(FormatError::Corrupt(format!(
                "tensor `{name}` of rank {rank}"
            )));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        let mut numel: usize = 1;
        for _ in 0..rank {
            let d = usize::try_from(r.u64("tensor dims")?)
                .map_err(|_| FormatError::Corrupt("dimension".into()))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| FormatError::Corrupt(format!("tensor `{name}` too large")))?;
            dims.push(d);
        }
        let bytes_needed = numel
            .checked_mul(4)
            .ok_or_else(|| FormatError::Corrupt("tensor too large".into()))?;
        let data = r.take(bytes_needed, "tensor data")?;
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let t = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), values)
            .map_err(|e| FormatError::Corrupt(format!("tensor `{name}`: {e}")))?;
        embedded.insert(name, t);
    }
    if r.pos != body.len() {
        return Err(FormatError::Corrupt("trailing bytes".into()));
    }
    rebuild(meta, embedded, sum)
}

fn rebuild(meta: PlanMeta, embedded: Weights, hash: u64) -> Result<LoadedPlan, FormatError> {
    let mut sources = SourceMap::new();
    let mut diags = Diagnostics::new();
    let name = Path::new(&meta.network_name);
    let spec =
        crate::dsl::load_network_text(name, meta.network_source.clone(), &mut sources, &mut diags);
    let fail = |d: &Diagnostics, s: &SourceMap| FormatError::Network(d.render(s));
    let spec = spec.ok_or_else(|| fail(&diags, &sources))?;
    let graph = LayerGraph::build(&spec).map_err(|d| fail(&d, &sources))?;
    let weights = match graph.weights.as_ref().map(|w| &w.source) {
        Some(WeightsSource::Random { .. }) | None => {
            weights::bind(&graph, &mut diags).ok_or_else(|| fail(&diags, &sources))?
        }
        Some(WeightsSource::File(_)) => embedded,
    };
    if meta
        .plan
        .segments
        .iter()
        .any(|s| s.end.index() > graph.layers().len())
        || meta.plan.tail_start.index() > graph.layers().len()
        || meta
            .plan
            .segments
            .iter()
            .flat_map(|s| &s.tiles)
            .any(|t| t.node >= meta.plan.cluster.nodes.len())
    {
        return Err(FormatError::Corrupt(
            "the plan does not match its network".into(),
        ));
    }
    Ok(LoadedPlan {
        plan: meta.plan,
        graph,
        weights,
        network_source: meta.network_source,
        hash,
    })
}

/// FNV-1a, 64 bits: detects corruption (not tampering).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::Truncated(what))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str16(&mut self, what: &'static str) -> Result<String, FormatError> {
        let b = self.take(2, what)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| FormatError::Corrupt(format!("{what} is not UTF-8")))
    }
}
