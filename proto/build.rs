//! Generates the gRPC code with the pure-Rust `protox` compiler, so that
//! building drc needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/drc.proto");
    let fds = protox::compile(["proto/drc.proto"], ["proto"])?;
    // For gRPC server reflection (grpcurl without the .proto).
    let out = std::env::var("OUT_DIR")?;
    std::fs::write(format!("{out}/drc_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
