//! Compiles `proto/onnx.proto` into prost types with `protox`, a pure-Rust protobuf
//! compiler, so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields hold tensor data: keep them as plain Vec<u8>.
        .compile_fds(descriptors)?;
    Ok(())
}
