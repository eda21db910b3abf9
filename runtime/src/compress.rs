//! Wire compression of tile outputs: clip to each channel's range and quantise uniformly to
//! 8 or 4 bits, with a per-tile, per-channel offset and scale.

use adcnn_compiler::plan::Compression;
use ndarray::Array3;

/// What a tile output looks like after crossing the wire (quantised, then dequantised), and
/// the bytes it took.
pub fn roundtrip(t: &Array3<f32>, how: Compression) -> (Array3<f32>, usize) {
    let (c, _, _) = t.dim();
    let bytes = how.wire_bytes(t.len(), c);
    let levels = match how {
        Compression::None => return (t.clone(), bytes),
        Compression::Q8 => 255.0,
        Compression::Q4 => 15.0,
    };
    let mut out = t.clone();
    for mut ch in out.outer_iter_mut() {
        let (lo, hi) = ch
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let scale = if hi > lo { (hi - lo) / levels } else { 0.0 };
        ch.mapv_inplace(|v| {
            if scale == 0.0 {
                lo
            } else {
                lo + ((v - lo) / scale).round() * scale
            }
        });
    }
    (out, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_error_is_within_half_a_step() {
        let t = Array3::from_shape_fn((2, 3, 5), |(c, y, x)| {
            (c * 15 + y * 5 + x) as f32 * 0.37 - 2.0
        });
        for (how, levels) in [(Compression::Q8, 255.0), (Compression::Q4, 15.0)] {
            let (q, bytes) = roundtrip(&t, how);
            for ch in 0..2 {
                let orig = t.index_axis(ndarray::Axis(0), ch);
                let (lo, hi) = orig
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let step = (hi - lo) / levels;
                for (a, b) in orig.iter().zip(q.index_axis(ndarray::Axis(0), ch).iter()) {
                    assert!((a - b).abs() <= step / 2.0 + 1e-5, "{how:?}: {a} vs {b}");
                }
            }
            assert!(bytes < 4 * t.len());
        }
        assert_eq!(roundtrip(&t, Compression::None).0, t);
    }
}
