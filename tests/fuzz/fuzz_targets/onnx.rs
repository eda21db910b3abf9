#![no_main]

#[path = "../targets/onnx.rs"]
mod onnx;

libfuzzer_sys::fuzz_target!(|data: &[u8]| onnx::run(data));
