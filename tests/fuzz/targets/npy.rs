//! `.npy`: one file's bytes, and the same bytes as a stream of arrays.

use adcnn_core::input::MAX_INPUT_ELEMENTS;
use adcnn_core::npy;

pub fn run(data: &[u8]) {
    let _ = npy::read_f32(data);
    let mut stream = data;
    // Each array read takes at least the 10 bytes of its header's start.
    for _ in 0..=data.len() / 10 {
        match npy::read_f32_from(&mut stream, MAX_INPUT_ELEMENTS) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}
