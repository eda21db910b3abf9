#![no_main]

#[path = "../targets/dsl.rs"]
mod dsl;

libfuzzer_sys::fuzz_target!(|data: &[u8]| dsl::run(data));
