//! Compiles `proto/arbor/v1/*.proto` into Rust with `protox` (a pure-Rust
//! protobuf compiler), so no system `protoc` is needed. Also writes the
//! encoded descriptor set, which the agent serves for gRPC reflection.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = Path::new("proto");
    let files = [
        "proto/arbor/v1/agent.proto",
        "proto/arbor/v1/audit.proto",
        "proto/arbor/v1/repair.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, [proto_dir])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("arbor_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
