//! Generates the worker protocol's types and gRPC service from `proto/adcnn.proto` with a
//! pure-Rust proto compiler (protox), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/adcnn.proto");
    let fds = protox::compile(["adcnn.proto"], ["proto/"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
