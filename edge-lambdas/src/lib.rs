//! Streamer's edge: the API Gateway WebSocket route handlers (`$connect`,
//! `$disconnect`, `$default`) that turn each event into one gRPC call to the
//! control plane, the Lambda entry point that runs them, and a local API
//! Gateway emulator that runs the very same handler code.

#![forbid(unsafe_code)]

pub mod client;
pub mod gateway;
pub mod handler;
pub mod lambda;
