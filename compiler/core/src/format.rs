//! `plan.bin`: a self-contained, versioned, sectioned plan.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic        8 bytes  "ADCNNPLN"
//! format       u32      FORMAT_VERSION (4; format 3 is read too)
//! compiler     u16 len + UTF-8   version of the adcnn that wrote it
//! sections     u32      count
//! index        count × { kind u8, id u32, offset u64, length u64, hash u64 }
//! index hash   u64      FNV-1a 64 of every byte before it: the plan's identity
//! sections     the bytes the index points at, in index order
//! ```
//!
//! Section kinds: `plan` (one; JSON [`PlanHeader`]: the plan with its tile geometry, the
//! cluster, and what `adcnnc explain` shows of the network), `segment` (one per segment, id
//! = its index) and `tail` (one). A segment or tail section is a [`Program`]: its layers'
//! resolved operators (batch norms already folded into the convolutions before them) and
//! their weights:
//!
//! ```text
//! meta         u64 len + JSON   { first, input, layers: [{ name, op, inputs, shape }] }
//! tensors      u32 count, then per tensor:
//!              u16 len + name, u8 rank, u64 × rank dims,
//!              u8 kind: 0 = f32 × numel, 1 = seeded (u64 seed, f32 lo, f32 hi)
//! ```
//!
//! Each section has its own hash in the index, so a node reads (or is sent) exactly the
//! sections it needs and can check them alone; a segment's hash names its program in caches.
//! Seeded tensors (benchmarks' `random(seed=N)` weights that no folding changed) travel as
//! their generator. The decoder bounds every count and length before allocating, never
//! panics, and names the section it rejects.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::cluster::MAX_THREADS;
use crate::net::{Input, Layer, LayerId};
use crate::ops::Shape;
use crate::plan::Plan;
use crate::program::Program;
use crate::weights::{Seeded, Weights};

pub const MAGIC: &[u8; 8] = b"ADCNNPLN";
/// Bumped whenever the layout or the meaning of any field changes. Format 4 added operators
/// (arithmetic, hard-swish and friends, upsampling, transposed convolution) to format 3's.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format this version reads: every format-3 plan is a format-4 plan.
pub const OLDEST_READABLE: u32 = 3;
pub const COMPILER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bounds checked before allocating.
pub const MAX_SECTIONS: u32 = 1 << 16;
pub const MAX_JSON_BYTES: u64 = 64 << 20;
pub const MAX_TENSORS: u32 = 1 << 20;
pub const MAX_RANK: u8 = 8;
/// Elements of one tensor (1 GiB of f32; VGG16's largest has 103 M).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 28;
/// Elements all seeded tensors of one section may generate together (4 GiB of f32).
pub const MAX_SEEDED_ELEMENTS: u64 = 1 << 30;
/// Bytes of the fixed header before the index.
const HEADER_MAX: usize = 8 + 4 + 2 + u16::MAX as usize + 4;
const ENTRY_BYTES: usize = 1 + 4 + 8 + 8 + 8;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("not a plan file (it does not start with ADCNNPLN)")]
    NotAPlan,
    #[error(
        "this plan uses plan format {found} (written by adcnn {written_by}); this adcnn ({ours}) reads formats {OLDEST_READABLE} to {FORMAT_VERSION}: rebuild the plan with this version's `adcnnc build`"
    )]
    Version {
        found: u32,
        written_by: String,
        ours: &'static str,
    },
    #[error("the plan file is truncated: {0}")]
    Truncated(String),
    #[error("the plan file is corrupted: the {0} section's checksum does not match")]
    Checksum(String),
    #[error("the plan file is corrupted: the section index's checksum does not match")]
    IndexChecksum,
    #[error("the plan file is corrupted: {section}: {reason}")]
    Corrupt { section: String, reason: String },
    #[error("the plan file has no {0} section")]
    Missing(String),
    #[error("cannot read the plan: {0}")]
    Io(String),
}

fn corrupt(section: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        section: section.to_string(),
        reason: reason.into(),
    }
}

/// What a section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SectionKind {
    Plan,
    Segment(u32),
    Tail,
}

impl SectionKind {
    /// The kind's number and id in the section index.
    pub fn code(self) -> (u8, u32) {
        match self {
            SectionKind::Plan => (0, 0),
            SectionKind::Segment(i) => (1, i),
            SectionKind::Tail => (2, 0),
        }
    }

    /// The kind a section index entry names.
    pub fn from_code(kind: u8, id: u32) -> Option<SectionKind> {
        match kind {
            0 => Some(SectionKind::Plan),
            1 => Some(SectionKind::Segment(id)),
            2 => Some(SectionKind::Tail),
            _ => None,
        }
    }
}

impl std::fmt::Display for SectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SectionKind::Plan => f.write_str("plan"),
            SectionKind::Segment(i) => write!(f, "segment {i}"),
            SectionKind::Tail => f.write_str("tail"),
        }
    }
}

/// One entry of the section index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    pub kind: SectionKind,
    pub offset: u64,
    pub length: u64,
    /// FNV-1a 64 of the section's bytes.
    pub hash: u64,
}

/// What `adcnnc explain` shows of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub name: String,
    /// The operator as a DSL expression.
    pub op: String,
    pub shape: Shape,
    pub flops: u64,
    /// Receptive field and cumulative stride (rows, columns) for layers of the spatial head.
    pub receptive: Option<[usize; 4]>,
}

/// The network as a plan carries it for people: its name, input, and per-layer figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub input: Input,
    pub layers: Vec<LayerInfo>,
}

impl NetworkInfo {
    pub fn output_shape(&self) -> Shape {
        self.layers.last().map_or(self.input.shape, |l| l.shape)
    }

    pub fn flops(&self) -> u64 {
        self.layers.iter().map(|l| l.flops).sum()
    }
}

/// The `plan` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    pub plan: Plan,
    pub network: NetworkInfo,
}

impl PlanHeader {
    /// Checks that the plan fits its network: segments cover the head in order and the
    /// tail the rest, tiles name existing nodes, every tile has a region per layer.
    fn check(&self) -> Result<(), FormatError> {
        let fail = |r: String| Err(corrupt("plan", r));
        let p = &self.plan;
        let n = self.network.layers.len();
        let nodes = p.cluster.nodes.len();
        if nodes == 0 || p.cluster.coordinator >= nodes {
            return fail("the cluster has no such coordinator".into());
        }
        if p.node_busy_ms.len() != nodes {
            return fail("per-node figures do not match the nodes".into());
        }
        if let Some(n) = p
            .cluster
            .nodes
            .iter()
            .find(|n| !(1..=MAX_THREADS).contains(&n.threads))
        {
            return fail(format!(
                "node {} has {} threads (1 to {MAX_THREADS})",
                n.name, n.threads
            ));
        }
        let mut at = 0usize;
        for (i, s) in p.segments.iter().enumerate() {
            if s.first.index() != at || s.end.index() <= at || s.end.index() > n {
                return fail(format!("segment {i} does not follow the one before"));
            }
            let input_ok = match s.input {
                crate::net::Source::Input => at == 0,
                crate::net::Source::Layer(l) => l.index() + 1 == at,
            };
            if !input_ok {
                return fail(format!(
                    "segment {i} reads something other than the live tensor"
                ));
            }
            if s.tiles.is_empty() {
                return fail(format!("segment {i} has no tiles"));
            }
            let layers = s.end.index() - s.first.index();
            for (t, tile) in s.tiles.iter().enumerate() {
                if tile.node >= nodes || !p.cluster.nodes[tile.node].worker {
                    return fail(format!("segment {i} tile {t} goes to no worker"));
                }
                if tile.regions.len() != layers {
                    return fail(format!(
                        "segment {i} tile {t} has {} regions",
                        tile.regions.len()
                    ));
                }
            }
            at = s.end.index();
        }
        if p.tail_start.index() != at {
            return fail("the tail does not start after the last segment".into());
        }
        Ok(())
    }
}

/// A whole decoded plan: what the coordinator of an in-process run needs.
#[derive(Clone, Debug)]
pub struct DecodedPlan {
    pub header: PlanHeader,
    pub segments: Vec<Program>,
    pub tail: Program,
    /// The plan's identity ([`PlanFile::hash`]).
    pub hash: u64,
}

/// Encodes a plan: its header, one program per segment (in order), and the tail's.
pub fn encode(
    header: &PlanHeader,
    segments: &[Program],
    tail: &Program,
) -> Result<Vec<u8>, FormatError> {
    let mut sections: Vec<(SectionKind, Vec<u8>)> = Vec::with_capacity(segments.len() + 2);
    let json = serde_json::to_vec(header).map_err(|e| corrupt("plan", e.to_string()))?;
    sections.push((SectionKind::Plan, json));
    for (i, p) in segments.iter().enumerate() {
        let kind = SectionKind::Segment(i as u32);
        sections.push((kind, encode_program(p, kind)?));
    }
    sections.push((SectionKind::Tail, encode_program(tail, SectionKind::Tail)?));
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    put_str16(&mut out, COMPILER_VERSION);
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    let mut offset = (out.len() + sections.len() * ENTRY_BYTES + 8) as u64;
    for (kind, bytes) in &sections {
        let (k, id) = kind.code();
        out.push(k);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&fnv1a(bytes).to_le_bytes());
        offset += bytes.len() as u64;
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    for (_, bytes) in sections {
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// A program's layers without its weights (the `meta` at the start of a segment or tail
/// section): what re-planning needs to know of a segment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramLayers {
    pub first: LayerId,
    pub input: Shape,
    pub layers: Vec<Layer>,
}

impl ProgramLayers {
    pub fn of(p: &Program) -> ProgramLayers {
        ProgramLayers {
            first: p.first(),
            input: p.input_shape(),
            layers: p.layers().to_vec(),
        }
    }
}

fn encode_program(p: &Program, kind: SectionKind) -> Result<Vec<u8>, FormatError> {
    let meta = ProgramLayers::of(p);
    let json = serde_json::to_vec(&meta).map_err(|e| corrupt(&kind.to_string(), e.to_string()))?;
    let mut out = Vec::with_capacity(json.len() + p.weights().bytes() + 1024);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    let w = p.weights();
    out.extend_from_slice(&(w.len() as u32).to_le_bytes());
    for name in w.names() {
        let Some(t) = w.get_by_name(name) else {
            continue;
        };
        put_str16(&mut out, name);
        out.push(t.ndim() as u8);
        for d in t.shape() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        match w.seeded(name) {
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&s.seed.to_le_bytes());
                out.extend_from_slice(&s.lo.to_le_bytes());
                out.extend_from_slice(&s.hi.to_le_bytes());
            }
            None => {
                out.push(0);
                for v in t.iter() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    Ok(out)
}

/// Where a plan file's bytes come from: all in memory, or a file read section by section.
#[derive(Debug)]
enum Bytes<'a> {
    Memory(&'a [u8]),
    File(std::cell::RefCell<File>, u64),
}

/// A plan file whose header and section index have been read and checked; sections are
/// read (and checked) one at a time, on request.
#[derive(Debug)]
pub struct PlanFile<'a> {
    bytes: Bytes<'a>,
    pub written_by: String,
    pub sections: Vec<SectionEntry>,
    /// FNV-1a 64 of the header and index (which hold every section's hash): the plan's
    /// identity, under which nodes cache what they compiled from it.
    pub hash: u64,
}

impl<'a> PlanFile<'a> {
    /// Reads the header and index of a plan held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<PlanFile<'a>, FormatError> {
        let total = bytes.len() as u64;
        let head = &bytes[..bytes.len().min(HEADER_MAX)];
        let (written_by, count, pos) = parse_header(head)?;
        let index_len = index_len(count)?;
        let end = pos
            .checked_add(index_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| FormatError::Truncated("the section index".into()))?;
        let (sections, hash) = parse_index(&bytes[..end], pos, count, total)?;
        Ok(PlanFile {
            bytes: Bytes::Memory(bytes),
            written_by,
            sections,
            hash,
        })
    }

    /// Opens a plan file and reads its header and index only.
    pub fn open(path: &Path) -> Result<PlanFile<'static>, FormatError> {
        let io = |e: std::io::Error| FormatError::Io(format!("{}: {e}", path.display()));
        let mut f = File::open(path).map_err(io)?;
        let total = f.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(HEADER_MAX);
        (&mut f)
            .take(HEADER_MAX as u64)
            .read_to_end(&mut head)
            .map_err(io)?;
        let (written_by, count, pos) = parse_header(&head)?;
        let index_len = index_len(count)?;
        let end = pos + index_len;
        if (end as u64) > total {
            return Err(FormatError::Truncated("the section index".into()));
        }
        let mut all = vec![0u8; end];
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.read_exact(&mut all).map_err(io)?;
        let (sections, hash) = parse_index(&all, pos, count, total)?;
        Ok(PlanFile {
            bytes: Bytes::File(std::cell::RefCell::new(f), total),
            written_by,
            sections,
            hash,
        })
    }

    pub fn entry(&self, kind: SectionKind) -> Result<SectionEntry, FormatError> {
        self.sections
            .iter()
            .find(|e| e.kind == kind)
            .copied()
            .ok_or_else(|| FormatError::Missing(kind.to_string()))
    }

    /// The bytes of a section, checked against its hash.
    pub fn section(&self, kind: SectionKind) -> Result<Vec<u8>, FormatError> {
        let e = self.entry(kind)?;
        let bytes = match &self.bytes {
            Bytes::Memory(b) => {
                let range = usize::try_from(e.offset)
                    .ok()
                    .zip(usize::try_from(e.length).ok())
                    .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                    .filter(|r| r.end <= b.len())
                    .ok_or_else(|| FormatError::Truncated(format!("the {kind} section")))?;
                b[range].to_vec()
            }
            Bytes::File(f, total) => {
                if e.offset
                    .checked_add(e.length)
                    .is_none_or(|end| end > *total)
                {
                    return Err(FormatError::Truncated(format!("the {kind} section")));
                }
                let len = usize::try_from(e.length)
                    .map_err(|_| corrupt(&kind.to_string(), "too long"))?;
                let mut f = f.borrow_mut();
                let io = |err: std::io::Error| FormatError::Io(err.to_string());
                f.seek(SeekFrom::Start(e.offset)).map_err(io)?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf).map_err(io)?;
                buf
            }
        };
        if fnv1a(&bytes) != e.hash {
            return Err(FormatError::Checksum(kind.to_string()));
        }
        Ok(bytes)
    }

    /// The plan section, checked against itself (segments cover the head, tiles name
    /// workers, regions per layer).
    pub fn header(&self) -> Result<PlanHeader, FormatError> {
        let h = decode_header(&self.section(SectionKind::Plan)?)?;
        let segments = self
            .sections
            .iter()
            .filter(|e| matches!(e.kind, SectionKind::Segment(_)))
            .count();
        if segments != h.plan.segments.len() {
            return Err(corrupt(
                "plan",
                format!(
                    "{} segments, but {segments} segment sections",
                    h.plan.segments.len()
                ),
            ));
        }
        Ok(h)
    }

    /// Segment `i`'s program, checked against the plan's tiles for it.
    pub fn segment(&self, header: &PlanHeader, i: usize) -> Result<Program, FormatError> {
        let kind = SectionKind::Segment(i as u32);
        let seg = header
            .plan
            .segments
            .get(i)
            .ok_or_else(|| FormatError::Missing(kind.to_string()))?;
        let e = self.entry(kind)?;
        let p = decode_program(&self.section(kind)?, kind)?.with_id(e.hash);
        p.check_tiles(seg)
            .map_err(|r| corrupt(&kind.to_string(), r))?;
        Ok(p)
    }

    /// The programs of the segments `node` has tiles in, by segment index: a worker's share.
    /// Reads and checks those sections only.
    pub fn node_programs(
        &self,
        header: &PlanHeader,
        node: usize,
    ) -> Result<std::collections::BTreeMap<usize, Program>, FormatError> {
        header
            .plan
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.tiles.iter().any(|t| t.node == node))
            .map(|(i, _)| Ok((i, self.segment(header, i)?)))
            .collect()
    }

    /// The tail's program.
    pub fn tail(&self, header: &PlanHeader) -> Result<Program, FormatError> {
        let p = decode_program(&self.section(SectionKind::Tail)?, SectionKind::Tail)?;
        let n = header.network.layers.len();
        if p.first() != header.plan.tail_start || p.end().index() != n {
            return Err(corrupt(
                "tail",
                "does not cover the layers after the last segment",
            ));
        }
        Ok(p)
    }
}

fn parse_header(head: &[u8]) -> Result<(String, u32, usize), FormatError> {
    let mut r = Reader::new(head, "header");
    if r.take(8).ok() != Some(MAGIC.as_slice()) {
        return Err(FormatError::NotAPlan);
    }
    let version = r.u32()?;
    let written_by = r.str16().unwrap_or_else(|_| "unknown".into());
    if !(OLDEST_READABLE..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::Version {
            found: version,
            written_by,
            ours: COMPILER_VERSION,
        });
    }
    let count = r.u32()?;
    if count == 0 || count > MAX_SECTIONS {
        return Err(corrupt("header", format!("{count} sections")));
    }
    Ok((written_by, count, r.pos))
}

fn index_len(count: u32) -> Result<usize, FormatError> {
    (count as usize)
        .checked_mul(ENTRY_BYTES)
        .and_then(|n| n.checked_add(8))
        .ok_or_else(|| corrupt("header", "index too large"))
}

/// Parses the index from `bytes` (header + index), checks its hash and that sections lie
/// within the file, in order, without overlapping, each kind at most once.
fn parse_index(
    bytes: &[u8],
    pos: usize,
    count: u32,
    total: u64,
) -> Result<(Vec<SectionEntry>, u64), FormatError> {
    let mut r = Reader::new(bytes, "section index");
    r.pos = pos;
    let mut sections = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let kind = r.u8()?;
        let id = r.u32()?;
        let offset = r.u64()?;
        let length = r.u64()?;
        let hash = r.u64()?;
        let kind = SectionKind::from_code(kind, id)
            .ok_or_else(|| corrupt("section index", format!("unknown section kind {kind}")))?;
        sections.push(SectionEntry {
            kind,
            offset,
            length,
            hash,
        });
    }
    let body = r.pos;
    let sum = r.u64()?;
    if fnv1a(&bytes[..body]) != sum {
        return Err(FormatError::IndexChecksum);
    }
    let mut at = (body + 8) as u64;
    let mut seen = std::collections::HashSet::new();
    for e in &sections {
        let end = e.offset.checked_add(e.length);
        if e.offset != at || end.is_none_or(|end| end > total) {
            return Err(FormatError::Truncated(format!("the {} section", e.kind)));
        }
        if !seen.insert(e.kind) {
            return Err(corrupt("section index", format!("two {} sections", e.kind)));
        }
        at = end.unwrap_or(total);
    }
    if at != total {
        return Err(corrupt(
            "section index",
            "trailing bytes after the last section",
        ));
    }
    Ok((sections, sum))
}

/// Decodes a plan section into a checked [`PlanHeader`].
pub fn decode_header(bytes: &[u8]) -> Result<PlanHeader, FormatError> {
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(corrupt("plan", format!("{} bytes of JSON", bytes.len())));
    }
    let h: PlanHeader =
        serde_json::from_slice(bytes).map_err(|e| corrupt("plan", e.to_string()))?;
    h.check()?;
    Ok(h)
}

/// Decodes a segment or tail section into a checked [`Program`].
pub fn decode_program(bytes: &[u8], kind: SectionKind) -> Result<Program, FormatError> {
    let section = kind.to_string();
    let mut r = Reader::new(bytes, "program");
    r.section = section.clone();
    let meta = read_layers(&mut r)?;
    let count = r.u32()?;
    if count > MAX_TENSORS {
        return Err(corrupt(&section, format!("{count} tensors")));
    }
    let mut weights = Weights::new();
    let mut generated: u64 = 0;
    for _ in 0..count {
        let name = r.str16()?;
        let rank = r.u8()?;
        if rank > MAX_RANK {
            return Err(corrupt(&section, format!("tensor `{name}` of rank {rank}")));
        }
        let mut dims = Vec::with_capacity(rank as usize);
        let mut numel: u64 = 1;
        for _ in 0..rank {
            let d = r.u64()?;
            numel = numel
                .checked_mul(d)
                .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| corrupt(&section, format!("tensor `{name}` is too large")))?;
            dims.push(d as usize);
        }
        match r.u8()? {
            0 => {
                let data = r.take(numel as usize * 4)?;
                let values: Vec<f32> = data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let t = ArrayD::from_shape_vec(IxDyn(&dims), values)
                    .map_err(|e| corrupt(&section, format!("tensor `{name}`: {e}")))?;
                weights.insert(name, t);
            }
            1 => {
                let seed = r.u64()?;
                let lo = f32::from_bits(r.u32()?);
                let hi = f32::from_bits(r.u32()?);
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    return Err(corrupt(
                        &section,
                        format!("tensor `{name}`: range {lo}..{hi}"),
                    ));
                }
                generated += numel;
                if generated > MAX_SEEDED_ELEMENTS {
                    return Err(corrupt(&section, "seeded tensors too large"));
                }
                weights.insert_seeded(name, &dims, Seeded { seed, lo, hi });
            }
            k => return Err(corrupt(&section, format!("tensor `{name}` of kind {k}"))),
        }
    }
    if r.pos != bytes.len() {
        return Err(corrupt(&section, "trailing bytes"));
    }
    Program::new(meta.first, meta.layers, meta.input, weights)
        .map_err(|e| corrupt(&section, e.to_string()))
}

/// Decodes only the layers of a segment or tail section (its weights are not read).
pub fn decode_program_layers(
    bytes: &[u8],
    kind: SectionKind,
) -> Result<ProgramLayers, FormatError> {
    let mut r = Reader::new(bytes, "program");
    r.section = kind.to_string();
    read_layers(&mut r)
}

fn read_layers(r: &mut Reader<'_>) -> Result<ProgramLayers, FormatError> {
    let len = r.u64()?;
    if len > MAX_JSON_BYTES {
        return Err(corrupt(&r.section, format!("{len} bytes of JSON")));
    }
    let json = r.take(len as usize)?;
    serde_json::from_slice(json).map_err(|e| corrupt(&r.section, e.to_string()))
}

/// Decodes a whole plan held in memory.
pub fn decode(bytes: &[u8]) -> Result<DecodedPlan, FormatError> {
    let file = PlanFile::parse(bytes)?;
    let header = file.header()?;
    let segments = (0..header.plan.segments.len())
        .map(|i| file.segment(&header, i))
        .collect::<Result<Vec<_>, _>>()?;
    let tail = file.tail(&header)?;
    Ok(DecodedPlan {
        header,
        segments,
        tail,
        hash: file.hash,
    })
}

/// FNV-1a, 64 bits: detects corruption (not tampering).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..n]);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    section: String,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], section: &str) -> Self {
        Reader {
            bytes,
            pos: 0,
            section: section.to_string(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| FormatError::Truncated(format!("the {} section", self.section)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn str16(&mut self) -> Result<String, FormatError> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt(&self.section, "a name is not UTF-8"))
    }
}
