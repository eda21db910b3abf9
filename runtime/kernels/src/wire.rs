//! Tile outputs as they cross the wire: exact float32, or quantised per channel to 8 or 4
//! bits (`q8`/`q4`, [`Compression`]).
//!
//! Quantisation of one channel `v[0..p]` of a tile's output:
//!
//! ```text
//! lo = min v, hi = max v, L = 255 (q8) or 15 (q4)
//! step = (hi − lo) / L,  inv = L / (hi − lo)      (both 0 when hi = lo)
//! q[i] = round_ties_even((v[i] − lo) · inv)       (0 ≤ q ≤ L)
//! decoded v'[i] = lo + q[i] · step
//! ```
//!
//! in f32, operation for operation, in the generated epilogues (`jit/clif/epilogue.rs`) and in
//! [`quantise`] (the host version and the oracle), so both give the same codes. `q8` stores a
//! channel's codes one per byte; `q4` two per byte, low nibble first, each channel starting
//! on a byte (a channel of odd size leaves the last high nibble zero).
//!
//! [`Quantised::to_bytes`] / [`Quantised::from_bytes`] are the message format; the decoder
//! checks every size against the message before allocating and never panics.

use ndarray::{Array3, ArrayViewMut3};

use adcnn_core::plan::Compression;

/// Quantisation levels above the lowest: 255 for q8, 15 for q4, `None` for exact.
pub fn levels(how: Compression) -> Option<u32> {
    match how {
        Compression::None => None,
        Compression::Q8 => Some(255),
        Compression::Q4 => Some(15),
    }
}

/// Bytes of codes for one channel of `pixels` values.
pub fn channel_code_bytes(how: Compression, pixels: usize) -> usize {
    match how {
        Compression::None => 4 * pixels,
        Compression::Q8 => pixels,
        Compression::Q4 => pixels.div_ceil(2),
    }
}

/// A quantised tile output `[c, h, w]`: per channel `lo` and `step`, then the codes.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantised {
    pub how: Compression,
    pub dim: (usize, usize, usize),
    /// Per channel: `[lo, step]`.
    pub ranges: Vec<[f32; 2]>,
    /// `c × channel_code_bytes(how, h·w)` bytes.
    pub codes: Vec<u8>,
}

/// What quantisation cost, in the squared L2 sense: `Σ (v − v')²` and `Σ v²` over the tile
/// (the runtime reports `sqrt(err / sq)` per run).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuantError {
    pub err: f64,
    pub sq: f64,
}

impl QuantError {
    pub fn add(&mut self, other: QuantError) {
        self.err += other.err;
        self.sq += other.sq;
    }
}

/// A tile output ready to send.
#[derive(Clone, Debug, PartialEq)]
pub enum WireTile {
    Exact(Array3<f32>),
    Quantised(Quantised),
}

impl WireTile {
    pub fn dim(&self) -> (usize, usize, usize) {
        match self {
            WireTile::Exact(t) => t.dim(),
            WireTile::Quantised(q) => q.dim,
        }
    }

    /// Bytes it takes on the wire (payload and per-channel ranges; what
    /// [`Compression::wire_bytes`] predicts).
    pub fn wire_bytes(&self) -> usize {
        match self {
            WireTile::Exact(t) => 4 * t.len(),
            WireTile::Quantised(q) => q.codes.len() + 8 * q.ranges.len(),
        }
    }

    /// Writes the (decoded) values into `out`, which must have the tile's shape.
    pub fn write_into(&self, mut out: ArrayViewMut3<f32>) -> Result<(), WireError> {
        if out.dim() != self.dim() {
            return Err(WireError::Shape {
                expected: self.dim(),
                found: out.dim(),
            });
        }
        match self {
            WireTile::Exact(t) => out.assign(t),
            WireTile::Quantised(q) => q.decode_into(&mut out),
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("tile message truncated: {0}")]
    Truncated(&'static str),
    #[error("tile message: unknown compression tag {0}")]
    Tag(u8),
    #[error("tile message: shape {0}×{1}×{2} exceeds the limit of {3} values")]
    TooLarge(u64, u64, u64, usize),
    #[error("tile message has {0} bytes after its end")]
    Trailing(usize),
    #[error("tile of shape {expected:?} written into a region of shape {found:?}")]
    Shape {
        expected: (usize, usize, usize),
        found: (usize, usize, usize),
    },
}

/// The most values a tile message may declare (1 GiB of float32).
pub const MAX_VALUES: usize = 1 << 28;

/// Quantises the `channels × pixels` values of `y` (channel-major) into `codes`
/// (`channels × channel_code_bytes`) and `ranges`, and returns the error it made. The host
/// version of what the generated quantising epilogue does.
pub fn quantise(
    y: &[f32],
    channels: usize,
    pixels: usize,
    how: Compression,
    codes: &mut [u8],
    ranges: &mut [[f32; 2]],
) -> QuantError {
    let Some(levels) = levels(how) else {
        return QuantError::default();
    };
    let l = levels as f32;
    let row_bytes = channel_code_bytes(how, pixels);
    let mut total = QuantError::default();
    for ch in 0..channels {
        let v = &y[ch * pixels..(ch + 1) * pixels];
        let out = &mut codes[ch * row_bytes..(ch + 1) * row_bytes];
        let (lo, hi) = v
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (if x < a { x } else { a }, if b < x { x } else { b })
            });
        let (step, inv) = if hi > lo {
            ((hi - lo) / l, l / (hi - lo))
        } else {
            (0.0, 0.0)
        };
        let (mut err, mut sq) = (0.0f64, 0.0f64);
        for (i, &x) in v.iter().enumerate() {
            let r = ((x - lo) * inv).round_ties_even();
            // `r` is within 0..=levels for finite values; the bound keeps non-finite ones in
            // their nibble (the generated code saturates the same way).
            let q = (r as u32).min(levels) as u8;
            let e = x - (lo + r * step);
            err += f64::from(e * e);
            sq += f64::from(x * x);
            match how {
                Compression::Q4 if i % 2 == 1 => out[i / 2] |= q << 4,
                Compression::Q4 => out[i / 2] = q,
                _ => out[i] = q,
            }
        }
        ranges[ch] = [lo, step];
        total.add(QuantError { err, sq });
    }
    total
}

/// `t` as it goes on the wire with `how`, and the error quantisation made (zero for exact).
pub fn encode(t: Array3<f32>, how: Compression) -> (WireTile, QuantError) {
    if how == Compression::None {
        return (WireTile::Exact(t), QuantError::default());
    }
    let (c, h, w) = t.dim();
    let t = t.as_standard_layout();
    let y = t.as_slice().expect("standard layout");
    let mut q = Quantised::zeroed(how, (c, h, w));
    let e = quantise(y, c, h * w, how, &mut q.codes, &mut q.ranges);
    (WireTile::Quantised(q), e)
}

impl Quantised {
    /// Codes and ranges of the right sizes for `dim`, all zero.
    pub fn zeroed(how: Compression, dim: (usize, usize, usize)) -> Quantised {
        let (c, h, w) = dim;
        Quantised {
            how,
            dim,
            ranges: vec![[0.0; 2]; c],
            codes: vec![0; c * channel_code_bytes(how, h * w)],
        }
    }

    /// The decoded value `lo + q·step` of every position, into `out` (shape checked by the
    /// caller).
    fn decode_into(&self, out: &mut ArrayViewMut3<f32>) {
        let (_, h, w) = self.dim;
        let row_bytes = channel_code_bytes(self.how, h * w);
        for (ch, mut plane) in out.outer_iter_mut().enumerate() {
            let [lo, step] = self.ranges[ch];
            let codes = &self.codes[ch * row_bytes..(ch + 1) * row_bytes];
            for (i, v) in plane.iter_mut().enumerate() {
                let q = match self.how {
                    Compression::Q4 => (codes[i / 2] >> (4 * (i % 2))) & 15,
                    _ => codes[i],
                };
                *v = lo + f32::from(q) * step;
            }
        }
    }

    /// The decoded tile.
    pub fn decode(&self) -> Array3<f32> {
        let mut t = Array3::zeros(self.dim);
        self.decode_into(&mut t.view_mut());
        t
    }

    /// The message: tag (1 = q8, 2 = q4), c, h, w as little-endian u32, `[lo, step]` per
    /// channel as f32, then the codes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let tag = match self.how {
            Compression::Q8 => 1u8,
            Compression::Q4 => 2,
            Compression::None => 0,
        };
        let (c, h, w) = self.dim;
        let mut out = Vec::with_capacity(13 + 8 * c + self.codes.len());
        out.push(tag);
        for d in [c, h, w] {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        for [lo, step] in &self.ranges {
            out.extend_from_slice(&lo.to_le_bytes());
            out.extend_from_slice(&step.to_le_bytes());
        }
        out.extend_from_slice(&self.codes);
        out
    }

    /// Parses a message written by [`Self::to_bytes`]. Sizes are checked against the
    /// message's length before anything is allocated.
    pub fn from_bytes(bytes: &[u8]) -> Result<Quantised, WireError> {
        let (&tag, mut rest) = bytes
            .split_first()
            .ok_or(WireError::Truncated("no header"))?;
        let how = match tag {
            1 => Compression::Q8,
            2 => Compression::Q4,
            t => return Err(WireError::Tag(t)),
        };
        let mut dims = [0u64; 3];
        for d in &mut dims {
            let (head, tail) = rest
                .split_first_chunk::<4>()
                .ok_or(WireError::Truncated("shape"))?;
            *d = u64::from(u32::from_le_bytes(*head));
            rest = tail;
        }
        let [c, h, w] = dims;
        // Every axis counts, even beside an empty one: ndarray refuses a shape whose
        // non-zero axes multiply past `isize` (0 × 2³² × 2³²), so such a tile could not decode.
        let values = c
            .max(1)
            .checked_mul(h.max(1))
            .and_then(|v| v.checked_mul(w.max(1)));
        let dim = match values {
            Some(v) if v <= MAX_VALUES as u64 => (c as usize, h as usize, w as usize),
            _ => return Err(WireError::TooLarge(c, h, w, MAX_VALUES)),
        };
        let range_bytes = 8 * dim.0;
        let code_bytes = dim.0 * channel_code_bytes(how, dim.1 * dim.2);
        if rest.len() < range_bytes + code_bytes {
            return Err(WireError::Truncated("ranges and codes"));
        }
        if rest.len() > range_bytes + code_bytes {
            return Err(WireError::Trailing(rest.len() - range_bytes - code_bytes));
        }
        let (r, codes) = rest.split_at(range_bytes);
        let f = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let ranges = r.chunks_exact(8).map(|b| [f(b), f(&b[4..])]).collect();
        Ok(Quantised {
            how,
            dim,
            ranges,
            codes: codes.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(c: usize, h: usize, w: usize) -> Array3<f32> {
        Array3::from_shape_fn((c, h, w), |(c, y, x)| {
            ((c * 31 + y * 7 + x * 13) % 23) as f32 * 0.37 - 2.0 + c as f32
        })
    }

    #[test]
    fn error_is_within_half_a_step_and_reported() {
        let t = sample(3, 3, 5);
        for how in [Compression::Q8, Compression::Q4] {
            let l = levels(how).expect("quantises") as f32;
            let (wire, e) = encode(t.clone(), how);
            let back = match &wire {
                WireTile::Quantised(q) => q.decode(),
                WireTile::Exact(_) => panic!("{how:?} sent exact"),
            };
            let mut err = 0.0;
            for ch in 0..3 {
                let orig = t.index_axis(ndarray::Axis(0), ch);
                let (lo, hi) = orig
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let step = (hi - lo) / l;
                for (a, b) in orig.iter().zip(back.index_axis(ndarray::Axis(0), ch)) {
                    assert!((a - b).abs() <= step / 2.0 + 1e-5, "{how:?}: {a} vs {b}");
                    err += f64::from(a - b).powi(2);
                }
            }
            assert!(err > 0.0);
            assert!(
                (e.err - err).abs() <= 1e-6 * err,
                "{how:?}: {} vs {err}",
                e.err
            );
            let sq: f64 = t.iter().map(|v| f64::from(*v).powi(2)).sum();
            assert!((e.sq - sq).abs() <= 1e-6 * sq, "{} vs {sq}", e.sq);
            assert_eq!(wire.wire_bytes(), how.wire_bytes(t.len(), 3));
        }
        let (exact, e) = encode(t.clone(), Compression::None);
        assert_eq!(exact, WireTile::Exact(t));
        assert_eq!(e, QuantError::default());
    }

    #[test]
    fn q4_packs_two_codes_per_byte_per_channel() {
        // Two channels of three values: each channel is two bytes, the second's high nibble 0.
        let t =
            Array3::from_shape_vec((2, 1, 3), vec![0.0, 15.0, 7.0, 1.0, 1.0, 1.0]).expect("shape");
        let (WireTile::Quantised(q), _) = encode(t, Compression::Q4) else {
            panic!("not quantised")
        };
        assert_eq!(q.codes, vec![0xF0, 0x07, 0x00, 0x00]);
        assert_eq!(q.ranges, vec![[0.0, 1.0], [1.0, 0.0]]);
        let back: Vec<f32> = q.decode().iter().copied().collect();
        assert_eq!(back, vec![0.0, 15.0, 7.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_errors() {
        for how in [Compression::Q8, Compression::Q4] {
            let (WireTile::Quantised(q), _) = encode(sample(4, 5, 3), how) else {
                panic!("not quantised")
            };
            let bytes = q.to_bytes();
            assert_eq!(Quantised::from_bytes(&bytes), Ok(q.clone()));
            for cut in 0..bytes.len() {
                assert!(
                    Quantised::from_bytes(&bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Quantised::from_bytes(&long), Err(WireError::Trailing(1)));
        }
        let mut huge = vec![1u8];
        for d in [u32::MAX, u32::MAX, 2] {
            huge.extend_from_slice(&d.to_le_bytes());
        }
        assert!(matches!(
            Quantised::from_bytes(&huge),
            Err(WireError::TooLarge(..))
        ));
        assert_eq!(Quantised::from_bytes(&[9]), Err(WireError::Tag(9)));
        // No channels, but a plane of 2⁶⁴ pixels: empty, yet no array can have that shape
        // (found by the `wire` fuzz target; `decode` panicked).
        let mut empty = vec![2u8];
        for d in [0, u32::MAX - 2, u32::MAX] {
            empty.extend_from_slice(&d.to_le_bytes());
        }
        assert!(matches!(
            Quantised::from_bytes(&empty),
            Err(WireError::TooLarge(..))
        ));
        // An empty tile of a reasonable shape still parses and decodes.
        let mut fine = vec![1u8];
        for d in [0u32, 3, 4] {
            fine.extend_from_slice(&d.to_le_bytes());
        }
        let q = Quantised::from_bytes(&fine).expect("an empty tile");
        assert_eq!(q.decode().dim(), (0, 3, 4));
    }

    #[test]
    fn writing_checks_the_region_shape() {
        let (wire, _) = encode(sample(2, 2, 2), Compression::Q8);
        let mut out = Array3::zeros((2, 2, 3));
        assert!(wire.write_into(out.view_mut()).is_err());
        let mut out = Array3::zeros((2, 2, 2));
        wire.write_into(out.view_mut()).expect("fits");
        assert!(out.iter().any(|v| *v != 0.0));
    }
}
