#![no_main]

#[path = "../targets/image.rs"]
mod image;

libfuzzer_sys::fuzz_target!(|data: &[u8]| image::run(data));
