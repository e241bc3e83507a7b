//! The chaos suite: faults injected between the parts of the real system
//! (the control plane and DynamoDB, the control plane and the Management
//! API, the edge and the control plane), crashes and restarts, each with
//! what clients must see and what must hold afterwards. Every test prints
//! what it injected and what it checked; `scripts/test.sh` runs this binary
//! on its own with `--nocapture` so the log shows it.
//!
//! Test names start with `chaos_`.

mod chaos {
    pub mod crash;
    pub mod delivery;
    pub mod edge;
    pub mod store;
}
