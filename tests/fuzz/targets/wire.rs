//! A quantised tile message (`Quantised::from_bytes`): what parses decodes, and writes back
//! to the same bytes.

use adcnn_kernels::wire::Quantised;

pub fn run(data: &[u8]) {
    if let Ok(q) = Quantised::from_bytes(data) {
        let _ = q.decode();
        assert_eq!(
            q.to_bytes(),
            data,
            "a parsed tile message writes back the same"
        );
    }
}
