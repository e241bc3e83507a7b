//! Where the control plane meets what it must not depend on: `dev` joins the
//! control-plane library, the API Gateway emulator (`streamer-edge`) and a
//! demo processor built with the processor SDK (`streamer-client`) into one
//! process. The `streamer-control-plane` binary is this crate's `main`.

#![forbid(unsafe_code)]

pub mod banner;
pub mod demo;
pub mod dev;
pub mod state;
