//! Generates the gRPC code with the pure-Rust `protox` compiler, so that
//! building drc needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/drc.proto");
    let fds = protox::compile(["proto/drc.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
