//! Compiles `streamer/v1/*.proto` with the pure-Rust `protox`, so no system
//! `protoc` is needed, and keeps the descriptor set for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "streamer/v1/edge.proto",
        "streamer/v1/connections.proto",
        "streamer/v1/broadcast.proto",
        "streamer/v1/admin.proto",
        "streamer/v1/groups.proto",
        "streamer/v1/requests.proto",
        "streamer/v1/history.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("streamer_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // EdgeService has an rpc named Connect, which would clash with the
        // generated `connect` constructor; clients are built from a Channel.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
