//! The Streamer control plane: the one stateful service behind the edge
//! Lambdas. It owns the connection registry, client authentication, message
//! validation and routing, rate limits and broadcast, and serves them over
//! gRPC (edge protocol and server API).

#![forbid(unsafe_code)]

pub mod actions;
pub mod broadcast;
pub mod config;
pub mod control;
pub mod delivery;
pub mod demo;
pub mod dev;
pub mod error;
pub mod grpc;
pub mod grpc_auth;
pub mod grpc_requests;
pub mod jobs;
pub mod jwt;
pub mod metrics;
pub mod pagetoken;
pub mod presence;
pub mod queue;
pub mod ratelimit;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod shared_limit;
pub mod store;
pub mod telemetry;
