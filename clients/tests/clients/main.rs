//! The Rust client and `streamerctl` against a real control plane. One test
//! binary for the crate: a module per subject.

mod client;
mod streamerctl;
