//! Generates the ONNX protobuf types from `proto/onnx.proto` with a pure-Rust proto compiler
//! (protox), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto/"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
