//! Tensors as they cross the network: tile inputs (float32) and tile outputs (float32, or the
//! plan's q8/q4 codes with their per-channel ranges), each optionally compressed by a
//! lossless coder. Decoding checks every size against the declared shape before allocating
//! and never panics.

use adcnn_core::plan::Compression;
use adcnn_kernels::wire::{MAX_VALUES, Quantised, WireTile};
use ndarray::Array3;

use super::proto;
use crate::transport::TileInput;

/// The lossless coder applied after quantisation. Measured on VGG16's tile tensors
/// (`bench/loopback3.sh`, Zen 5): zstd level 1 leaves 48–64 % of the bytes at ~0.55 GB/s
/// encoding, LZ4 56–74 % at ~1 GB/s; below ~1 Gbit/s the bytes zstd saves take longer to
/// send than its extra CPU time, so `adcnn-run --coder auto` picks by the cluster's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Coder {
    /// Bytes as they are.
    None,
    /// zstd at level 1.
    Zstd,
    /// LZ4 (block format; the message says the raw length).
    #[default]
    Lz4,
}

impl Coder {
    pub const NAMES: [&str; 3] = ["none", "zstd", "lz4"];

    pub fn from_name(s: &str) -> Option<Coder> {
        match s {
            "none" => Some(Coder::None),
            "zstd" => Some(Coder::Zstd),
            "lz4" => Some(Coder::Lz4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Coder::None => "none",
            Coder::Zstd => "zstd",
            Coder::Lz4 => "lz4",
        }
    }

    fn proto(self) -> proto::Coder {
        match self {
            Coder::None => proto::Coder::None,
            Coder::Zstd => proto::Coder::Zstd,
            Coder::Lz4 => proto::Coder::Lz4,
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("tensor of {0} dimensions, expected [C, H, W]")]
    Rank(usize),
    #[error("tensor of shape {0:?} exceeds the limit of {MAX_VALUES} values")]
    TooLarge(Vec<u32>),
    #[error("tensor data: {found} bytes where its shape needs {expected}")]
    Length { expected: usize, found: usize },
    #[error("tensor ranges: {found} values where {expected} channels need {}", 2 * expected)]
    Ranges { expected: usize, found: usize },
    #[error("unknown tensor encoding {0}")]
    Encoding(i32),
    #[error("unknown lossless coder {0}")]
    Coder(i32),
    #[error("compressed tensor data does not decode: {0}")]
    Decompress(String),
}

/// `raw` compressed with `coder`, and the raw length (0 when not compressed).
fn compress(raw: Vec<u8>, coder: Coder) -> (Vec<u8>, Coder, u64) {
    let n = raw.len() as u64;
    let packed = match coder {
        Coder::None => return (raw, Coder::None, 0),
        Coder::Zstd => zstd::bulk::compress(&raw, 1).ok(),
        Coder::Lz4 => Some(lz4_flex::block::compress(&raw)),
    };
    match packed {
        // Incompressible data goes as it is.
        Some(p) if p.len() < raw.len() => (p, coder, n),
        _ => (raw, Coder::None, 0),
    }
}

/// The raw bytes of a tensor's data, which must be exactly `expected` long.
fn decompress(t: &proto::Tensor, expected: usize) -> Result<Vec<u8>, CodecError> {
    let coder = proto::Coder::try_from(t.coder).map_err(|_| CodecError::Coder(t.coder))?;
    let bad_length = |found: usize| CodecError::Length { expected, found };
    let raw = match coder {
        proto::Coder::None => t.data.to_vec(),
        _ if t.raw_length != expected as u64 => {
            return Err(bad_length(
                usize::try_from(t.raw_length).unwrap_or(usize::MAX),
            ));
        }
        proto::Coder::Zstd => zstd::bulk::decompress(&t.data, expected)
            .map_err(|e| CodecError::Decompress(e.to_string()))?,
        proto::Coder::Lz4 => lz4_flex::block::decompress(&t.data, expected)
            .map_err(|e| CodecError::Decompress(e.to_string()))?,
    };
    if raw.len() != expected {
        return Err(bad_length(raw.len()));
    }
    Ok(raw)
}

/// `[c, h, w]` of a wire tensor, checked against [`MAX_VALUES`].
fn dims(t: &proto::Tensor) -> Result<(usize, usize, usize), CodecError> {
    let [c, h, w] = t.dims[..] else {
        return Err(CodecError::Rank(t.dims.len()));
    };
    // Three u32s multiply past u64: checked, like the limit. Every axis counts, even beside
    // an empty one: ndarray refuses a shape whose non-zero axes multiply past `isize`.
    let n = u64::from(c.max(1))
        .checked_mul(u64::from(h.max(1)))
        .and_then(|n| n.checked_mul(u64::from(w.max(1))));
    if n.is_none_or(|n| n > MAX_VALUES as u64) {
        return Err(CodecError::TooLarge(t.dims.clone()));
    }
    Ok((c as usize, h as usize, w as usize))
}

/// A float32 tensor for the wire.
pub fn encode_f32(a: &Array3<f32>, coder: Coder) -> proto::Tensor {
    let (c, h, w) = a.dim();
    let mut raw = Vec::with_capacity(4 * a.len());
    for v in a.iter() {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    let (data, coder, raw_length) = compress(raw, coder);
    proto::Tensor {
        dims: vec![c as u32, h as u32, w as u32],
        encoding: proto::Encoding::F32 as i32,
        ranges: Vec::new(),
        data: data.into(),
        coder: coder.proto() as i32,
        raw_length,
    }
}

/// A float32 tensor from the wire.
pub fn decode_f32(t: &proto::Tensor) -> Result<Array3<f32>, CodecError> {
    if t.encoding != proto::Encoding::F32 as i32 {
        return Err(CodecError::Encoding(t.encoding));
    }
    let (c, h, w) = dims(t)?;
    let raw = decompress(t, 4 * c * h * w)?;
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array3::from_shape_vec((c, h, w), values).map_err(|_| CodecError::Length {
        expected: 4 * c * h * w,
        found: raw.len(),
    })
}

/// A tile's input for the wire: its values, or its pixels.
pub fn encode_input(input: &TileInput, coder: Coder) -> proto::Tensor {
    match input {
        TileInput::Values(a) => encode_f32(a, coder),
        TileInput::Quantised(q) => encode_tile(&WireTile::Quantised(q.clone()), coder),
        TileInput::Pixels(p) => {
            let (c, h, w) = p.dim();
            let raw: Vec<u8> = p.iter().copied().collect();
            let (data, coder, raw_length) = compress(raw, coder);
            proto::Tensor {
                dims: vec![c as u32, h as u32, w as u32],
                encoding: proto::Encoding::Pixels as i32,
                ranges: Vec::new(),
                data: data.into(),
                coder: coder.proto() as i32,
                raw_length,
            }
        }
    }
}

/// A tile's input from the wire.
pub fn decode_input(t: &proto::Tensor) -> Result<TileInput, CodecError> {
    if t.encoding != proto::Encoding::Pixels as i32 {
        return decode_tile(t).map(|w| match w {
            WireTile::Exact(a) => TileInput::Values(a),
            WireTile::Quantised(q) => TileInput::Quantised(q),
        });
    }
    let (c, h, w) = dims(t)?;
    let raw = decompress(t, c * h * w)?;
    Array3::from_shape_vec((c, h, w), raw)
        .map(TileInput::Pixels)
        .map_err(|_| CodecError::Length {
            expected: c * h * w,
            found: 0,
        })
}

/// A tile output for the wire.
pub fn encode_tile(t: &WireTile, coder: Coder) -> proto::Tensor {
    match t {
        WireTile::Exact(a) => encode_f32(a, coder),
        WireTile::Quantised(q) => {
            let (c, h, w) = q.dim;
            let (data, coder, raw_length) = compress(q.codes.clone(), coder);
            proto::Tensor {
                dims: vec![c as u32, h as u32, w as u32],
                encoding: match q.how {
                    Compression::Q4 => proto::Encoding::Q4,
                    _ => proto::Encoding::Q8,
                } as i32,
                ranges: q.ranges.iter().flatten().copied().collect(),
                data: data.into(),
                coder: coder.proto() as i32,
                raw_length,
            }
        }
    }
}

/// A tile output from the wire.
pub fn decode_tile(t: &proto::Tensor) -> Result<WireTile, CodecError> {
    let how = match proto::Encoding::try_from(t.encoding) {
        Ok(proto::Encoding::F32) => return decode_f32(t).map(WireTile::Exact),
        Ok(proto::Encoding::Q8) => Compression::Q8,
        Ok(proto::Encoding::Q4) => Compression::Q4,
        Ok(proto::Encoding::Pixels) | Err(_) => return Err(CodecError::Encoding(t.encoding)),
    };
    let (c, h, w) = dims(t)?;
    if t.ranges.len() != 2 * c {
        return Err(CodecError::Ranges {
            expected: c,
            found: t.ranges.len(),
        });
    }
    let codes = decompress(t, c * how.code_bytes(h * w))?;
    Ok(WireTile::Quantised(Quantised {
        how,
        dim: (c, h, w),
        ranges: t.ranges.chunks_exact(2).map(|r| [r[0], r[1]]).collect(),
        codes,
    }))
}

/// Bytes a tensor takes in its message (data and ranges).
pub fn wire_bytes(t: &proto::Tensor) -> usize {
    t.data.len() + 4 * t.ranges.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use adcnn_kernels::wire;

    fn sample() -> Array3<f32> {
        Array3::from_shape_fn((3, 5, 7), |(c, h, w)| ((c * 35 + h * 7 + w) as f32).sin())
    }

    #[test]
    fn tensors_round_trip_through_every_coder_and_encoding() {
        for coder in [Coder::None, Coder::Zstd, Coder::Lz4] {
            let a = sample();
            assert_eq!(decode_f32(&encode_f32(&a, coder)).expect("decodes"), a);
            for how in [Compression::None, Compression::Q8, Compression::Q4] {
                let (t, _) = wire::encode(a.clone(), how);
                let back = decode_tile(&encode_tile(&t, coder)).expect("decodes");
                assert_eq!(back, t, "{coder:?} {how:?}");
            }
        }
    }

    #[test]
    fn inputs_round_trip_as_values_and_as_pixels() {
        let pixels = Array3::from_shape_fn((3, 4, 5), |(c, h, w)| (c * 20 + h * 5 + w) as u8);
        let WireTile::Quantised(q) = wire::encode(sample(), Compression::Q4).0 else {
            panic!("q4 quantises");
        };
        for input in [
            TileInput::Values(sample()),
            TileInput::Pixels(pixels),
            TileInput::Quantised(q),
        ] {
            for coder in [Coder::None, Coder::Lz4, Coder::Zstd] {
                let t = encode_input(&input, coder);
                assert_eq!(decode_input(&t).expect("decodes"), input);
            }
        }
    }

    #[test]
    fn compressible_data_shrinks_and_incompressible_goes_raw() {
        let zeros = Array3::<f32>::zeros((8, 32, 32));
        for coder in [Coder::Zstd, Coder::Lz4] {
            let t = encode_f32(&zeros, coder);
            assert!(
                t.data.len() < 4 * zeros.len() / 10,
                "{coder:?}: {}",
                t.data.len()
            );
            assert_eq!(t.raw_length, 4 * zeros.len() as u64);
        }
        let noise = sample();
        let t = encode_f32(&noise, Coder::Lz4);
        assert!(t.data.len() <= 4 * noise.len());
    }

    #[test]
    fn malformed_tensors_are_errors() {
        let good = encode_f32(&sample(), Coder::None);
        let mut t = good.clone();
        t.dims = vec![3, 5];
        assert_eq!(decode_f32(&t), Err(CodecError::Rank(2)));
        let mut t = good.clone();
        t.dims = vec![1 << 20, 1 << 20, 1 << 20];
        assert!(matches!(decode_f32(&t), Err(CodecError::TooLarge(_))));
        // The product of three u32s overflows u64 (found by the `grpc` fuzz target).
        for dims in [
            [u32::MAX; 3],
            [0xffff_fef6, 0xffff_fe59, 0x1f1],
            [0, u32::MAX, 9],
        ] {
            t.dims = dims.to_vec();
            assert!(matches!(decode_f32(&t), Err(CodecError::TooLarge(_))));
            assert!(matches!(decode_input(&t), Err(CodecError::TooLarge(_))));
        }
        let mut t = good.clone();
        t.data = t.data.slice(1..);
        assert!(matches!(decode_f32(&t), Err(CodecError::Length { .. })));
        let mut t = encode_f32(&Array3::zeros((4, 16, 16)), Coder::Zstd);
        t.raw_length = 1 << 40;
        assert!(matches!(decode_f32(&t), Err(CodecError::Length { .. })));
        let mut t = encode_f32(&Array3::zeros((4, 16, 16)), Coder::Lz4);
        t.data = vec![0xff; 40].into();
        assert!(decode_f32(&t).is_err());
        let mut t = good.clone();
        t.encoding = 9;
        assert_eq!(decode_tile(&t), Err(CodecError::Encoding(9)));
        let (q, _) = wire::encode(sample(), Compression::Q8);
        let mut t = encode_tile(&q, Coder::None);
        t.ranges.pop();
        assert!(matches!(decode_tile(&t), Err(CodecError::Ranges { .. })));
    }
}
