#![no_main]

#[path = "../targets/npy.rs"]
mod npy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| npy::run(data));
