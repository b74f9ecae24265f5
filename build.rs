//! Compiles `proto/` with protox (pure Rust, no `protoc` needed) into the tonic service
//! and prost messages, and writes the encoded file descriptor set (with comments) that
//! the gRPC server hands out through reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    // Source info carries the proto comments into reflection (grpcui, Postman show them)
    // and into the generated Rust docs.
    compiler.include_source_info(true);
    // Imports (google/protobuf/timestamp.proto) go along: reflection clients resolve
    // them from us, and prost needs them to know the imported messages.
    compiler.include_imports(true);
    compiler.open_file("safepoint/gateway/v1/gateway.proto")?;
    std::fs::write(
        out.join("safepoint_gateway_v1_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
