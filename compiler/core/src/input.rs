//! Input tensors for a run: a `.npy` float32 tensor, or an image file (PNG, JPEG) turned
//! into the network's input as its `input.image` section says.

use std::path::Path;

use crate::net::{ImagePreprocess, Input};
use crate::npy;
use image::imageops::FilterType;
use ndarray::{Array3, ArrayView3, Ix3};

/// Largest image accepted, in pixels per side (bounded before decoding).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most values an input tensor may have (a network's input is limited the same way).
pub const MAX_INPUT_ELEMENTS: usize = 1 << 28;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Npy { path: String, source: npy::NpyError },
    #[error(
        "{path}: the tensor has shape {found:?}; the network takes {expected} (or [1, C, H, W])"
    )]
    Shape {
        path: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{path}: not a readable image: {reason}")]
    Image { path: String, reason: String },
    #[error(
        "{path} is an image, but the network declares no `input.image` preprocessing; pass a .npy tensor"
    )]
    NotAnImageNetwork { path: String },
}

/// Loads `path` as the input of a network with input `spec`.
pub fn load(path: &Path, spec: &Input) -> Result<Array3<f32>, InputError> {
    let shown = path.display().to_string();
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        let t = npy::read_f32_file(path).map_err(|source| InputError::Npy {
            path: shown.clone(),
            source,
        })?;
        let s = spec.shape;
        let found = t.shape().to_vec();
        let ok = match found.as_slice() {
            [c, h, w] | [1, c, h, w] => (*c, *h, *w) == (s.c, s.h, s.w),
            _ => false,
        };
        if !ok {
            return Err(InputError::Shape {
                path: shown,
                found,
                expected: s.to_string(),
            });
        }
        let t = t
            .into_shape_with_order((s.c, s.h, s.w))
            .map_err(|_| InputError::Shape {
                path: shown.clone(),
                found: found.clone(),
                expected: s.to_string(),
            })?;
        return t
            .into_dimensionality::<Ix3>()
            .map_err(|_| InputError::Shape {
                path: shown,
                found,
                expected: s.to_string(),
            });
    }
    let Some(pre) = &spec.image else {
        return Err(InputError::NotAnImageNetwork { path: shown });
    };
    let bytes = std::fs::read(path).map_err(|source| InputError::Io {
        path: shown.clone(),
        source,
    })?;
    from_image_bytes(&bytes, spec, pre).map_err(|reason| InputError::Image {
        path: shown,
        reason,
    })
}

/// Decodes an image and applies the network's preprocessing: scale to [0, 1], resize the
/// shorter side to `resize` (or straight to H×W), centre-crop H×W, normalise per channel.
pub fn from_image_bytes(
    bytes: &[u8],
    spec: &Input,
    pre: &ImagePreprocess,
) -> Result<Array3<f32>, String> {
    Ok(normalize(image_pixels(bytes, spec, pre)?.view(), pre))
}

/// An input frame: the network's input tensor, and for an image the 8-bit pixels it was
/// normalised from (`[C, H, W]`), which can travel in a quarter of the tensor's bytes and
/// be normalised where they arrive, to the same bits.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub tensor: Array3<f32>,
    pub pixels: Option<Array3<u8>>,
}

impl From<Array3<f32>> for Frame {
    fn from(tensor: Array3<f32>) -> Frame {
        Frame {
            tensor,
            pixels: None,
        }
    }
}

/// [`load`], keeping an image's pixels.
pub fn load_frame(path: &Path, spec: &Input) -> Result<Frame, InputError> {
    let is_npy = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let pre = match (&spec.image, is_npy) {
        (Some(pre), false) => pre,
        _ => return load(path, spec).map(Frame::from),
    };
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| InputError::Io {
        path: shown.clone(),
        source,
    })?;
    let pixels = image_pixels(&bytes, spec, pre).map_err(|reason| InputError::Image {
        path: shown,
        reason,
    })?;
    Ok(Frame {
        tensor: normalize(pixels.view(), pre),
        pixels: Some(pixels),
    })
}

/// Pixels as the network's input: `(p / 255 − mean[c]) / std[c]`, the same f32 operations
/// wherever it runs.
pub fn normalize(pixels: ArrayView3<u8>, pre: &ImagePreprocess) -> Array3<f32> {
    let mut out = Array3::zeros(pixels.dim());
    for ((ch, y, x), v) in out.indexed_iter_mut() {
        let p = f32::from(pixels[(ch, y, x)]) / 255.0;
        let (m, s) = (
            pre.mean.get(ch).copied().unwrap_or(0.0),
            pre.std.get(ch).copied().unwrap_or(1.0),
        );
        *v = (p - m) / s;
    }
    out
}

/// Decodes an image (PNG, JPEG, …) within the size limits.
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    reader.decode().map_err(|e| e.to_string())
}

/// Decodes an image, resized and cropped as the network says, as `[C, H, W]` pixels.
pub fn image_pixels(
    bytes: &[u8],
    spec: &Input,
    pre: &ImagePreprocess,
) -> Result<Array3<u8>, String> {
    let img = decode_image(bytes)?;
    let (h, w) = (spec.shape.h as u32, spec.shape.w as u32);
    let img = match pre.resize {
        Some(short) => {
            let (iw, ih) = (img.width().max(1), img.height().max(1));
            let scale = f64::from(short as u32) / f64::from(iw.min(ih));
            let (rw, rh) = (
                ((f64::from(iw) * scale).round() as u32).max(w),
                ((f64::from(ih) * scale).round() as u32).max(h),
            );
            // A thin image grows with its shorter side: 8965×1 would become 322 740×36.
            if rw > MAX_IMAGE_SIDE || rh > MAX_IMAGE_SIDE {
                return Err(format!(
                    "a {iw}×{ih} image resized to a shorter side of {short} would be {rw}×{rh}, \
                     more than {MAX_IMAGE_SIDE} pixels a side: its sides are too unequal"
                ));
            }
            let resized = img.resize_exact(rw, rh, FilterType::Triangle);
            resized.crop_imm((rw - w) / 2, (rh - h) / 2, w, h)
        }
        None => img.resize_exact(w, h, FilterType::Triangle),
    };
    let c = spec.shape.c;
    let pixels: Vec<u8> = if c == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    };
    let (hh, ww) = (spec.shape.h, spec.shape.w);
    if pixels.len() != c * hh * ww || pre.mean.len() < c || pre.std.len() < c {
        return Err(format!(
            "the image decodes to {} values, the network takes {c}×{hh}×{ww} with {} means and {} deviations",
            pixels.len(),
            pre.mean.len(),
            pre.std.len()
        ));
    }
    Ok(Array3::from_shape_fn((c, hh, ww), |(ch, y, x)| {
        pixels[(y * ww + x) * c + ch]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Shape;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::GrayImage::from_pixel(w, h, image::Luma([128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .expect("encodes");
        out.into_inner()
    }

    /// Resizing the shorter side multiplies the longer one: a thin image is refused before
    /// it is resized to hundreds of millions of pixels (found by the `image` fuzz target:
    /// an 8965×1 JPEG).
    #[test]
    fn an_image_too_thin_to_resize_is_an_error() {
        let spec = Input {
            shape: Shape::new(1, 16, 16),
            image: None,
        };
        let pre = ImagePreprocess {
            resize: Some(256),
            mean: vec![0.5],
            std: vec![0.25],
        };
        let e = image_pixels(&png(200, 1), &spec, &pre).expect_err("too thin");
        assert!(e.contains("200×1") && e.contains("51200×256"), "{e}");
        // Within the bound (64 × 256 = 16 384): resized and cropped.
        let p = image_pixels(&png(64, 1), &spec, &pre).expect("resizes");
        assert_eq!(p.dim(), (1, 16, 16));
    }
}
