//! The `streamer.v1` protobuf API, generated at build time with `protox`:
//! the edge protocol (edge Lambdas → control plane) and the server API
//! (internal services and operators → control plane); the client WebSocket
//! protocol ([`client`]); and the validation of the ids that cross the
//! system's boundaries ([`ids`]).

/// Generated messages, clients and servers of package `streamer.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("streamer.v1");
}

/// The encoded `FileDescriptorSet` of every `streamer.v1` file, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamer_descriptor.bin"));

pub mod auth;
pub mod client;
pub mod ids;
pub mod tls;
