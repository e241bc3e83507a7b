//! The Streamer control plane: the one stateful service behind the edge
//! Lambdas. It owns the connection registry, client authentication, message
//! validation and routing, rate limits, broadcast and long-running
//! requests, and serves them over gRPC (edge protocol and server API).
//!
//! The house, top to bottom; a room imports only from rooms below it:
//!
//! ```text
//! app          assembly: build the rooms from the config, open the stores, serve
//! console      the web console: the embedded page, gRPC-Web onto api's services, dev's token helper
//! api          gRPC adapters: decode, call a room, map errors; caller auth; transport rules
//! connections  connect, route a client frame, built-in actions, groups, rate limits, chunked messages
//! requests     long-running requests: queue, sessions, dispatch, retry, relay, sweeper
//! delivery     the Management API behind a trait, broadcast, presence, reconcile
//! streams      stream history: offsets, epochs, retention, recovery; embedded and DynamoDB
//! actions      the action table and payload schemas
//! registry     who is connected: the trait, embedded and DynamoDB backends
//! store        what DynamoDB backends share
//! config · error · clock · metrics   the ground floor: settings, faults, time, counters
//! ```

#![forbid(unsafe_code)]

pub mod actions;
pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod connections;
pub mod console;
pub mod delivery;
pub mod error;
pub mod metrics;
pub mod registry;
pub mod requests;
pub mod store;
pub mod streams;
