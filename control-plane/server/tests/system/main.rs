//! The assembled system under test: the real binaries (`dev`, `serve`, the
//! gateway, the edge Lambdas, `streamerctl`) as processes, driven by real
//! WebSocket and gRPC clients. One test binary for the crate (linking the
//! whole dependency graph once, not once per file); a module per subject.
//! The chaos suite is the `chaos` module (test names start with `chaos_`).

mod batch;
mod chaos;
mod chunks;
mod claims;
mod console;
mod docs_commands;
mod dynamodb_e2e;
mod e2e;
mod emulator;
mod expiry;
mod fanout;
mod fleet;
mod groups;
mod hardening;
mod history;
mod inprocess;
mod jwks;
mod lambda_runtime;
mod listeners;
mod migration;
mod observability;
mod operators;
mod own_gateway;
mod readme;
mod requests;
mod sends;
mod server_api;
mod tenancy;
mod tls;
