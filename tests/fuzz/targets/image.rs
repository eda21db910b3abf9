//! Images as a network's input: decoded, resized, cropped and normalised for a small input
//! (the length's parity picks one of two preprocessings, so every seed reaches both).

use adcnn_core::input::from_image_bytes;
use adcnn_core::net::{ImagePreprocess, Input};
use adcnn_core::ops::Shape;

pub fn run(data: &[u8]) {
    let (spec, pre) = if data.len().is_multiple_of(2) {
        (
            Input {
                shape: Shape::new(3, 32, 32),
                image: None,
            },
            ImagePreprocess {
                resize: Some(36),
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
        )
    } else {
        (
            Input {
                shape: Shape::new(1, 16, 24),
                image: None,
            },
            ImagePreprocess {
                resize: None,
                mean: vec![0.5],
                std: vec![0.25],
            },
        )
    };
    let spec = Input {
        image: Some(pre.clone()),
        ..spec
    };
    if let Ok(t) = from_image_bytes(data, &spec, &pre) {
        let s = spec.shape;
        assert_eq!(
            t.dim(),
            (s.c, s.h, s.w),
            "the input has the network's shape"
        );
    }
}
