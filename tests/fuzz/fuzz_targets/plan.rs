#![no_main]

#[path = "../targets/plan.rs"]
mod plan;

libfuzzer_sys::fuzz_target!(|data: &[u8]| plan::run(data));
