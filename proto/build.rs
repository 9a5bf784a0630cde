//! Compiles `sluice/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages and tonic services from the resulting file descriptors (design.md §1).

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "sluice/v1/common.proto",
        "sluice/v1/admin.proto",
        "sluice/v1/log.proto",
        "sluice/v1/groups.proto",
        "sluice/v1/queue.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // The encoded descriptor set also serves gRPC server reflection.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("sluice_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Batches stay `Bytes` from the request buffer to the log: never copied into a Vec.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
