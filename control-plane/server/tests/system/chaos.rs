//! The chaos suite: faults injected between the parts of the real system
//! (the control plane and DynamoDB, the control plane and the Management
//! API, the edge and the control plane), crashes and restarts, each with
//! what clients must see and what must hold afterwards. Every test prints
//! what it injected and what it checked; the test command shows their
//! output (`.config/nextest.toml`).
//!
//! Test names start with `chaos_`.

mod crash;
mod delivery;
mod edge;
mod store;
