//! ONNX import: any bytes are a model, or an error naming what is wrong.

pub fn run(data: &[u8]) {
    let _ = adcnn_compiler::onnx::inventory(data);
    if let Ok(imported) = adcnn_compiler::onnx::import(data, "fuzz") {
        let _ = imported.yaml("fuzz.safetensors");
        let _ = imported.safetensors();
    }
}
