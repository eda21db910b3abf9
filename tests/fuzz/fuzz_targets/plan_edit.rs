#![no_main]

#[path = "../targets/plan.rs"]
mod plan;
#[path = "../targets/plan_edit.rs"]
mod plan_edit;

libfuzzer_sys::fuzz_target!(|data: &[u8]| plan_edit::run(data));
