#![no_main]

#[path = "../targets/grpc.rs"]
mod grpc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| grpc::run(data));
