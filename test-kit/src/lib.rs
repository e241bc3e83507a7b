//! The harness every test tree and the benchmark share: the real `dev`
//! binary on free loopback ports ([`dev`]), client tokens ([`token`]),
//! WebSocket and gRPC clients ([`ws`], [`grpc`]), waits with a deadline
//! ([`eventually`]), the DynamoDB-compatible server the test command starts
//! ([`moto`]). It depends
//! on no Streamer server crate, so a test binary holds one copy of the code
//! it tests.

#![forbid(unsafe_code)]

pub mod dev;
pub mod faults;
pub mod fleet;
pub mod grpc;
pub mod history;
pub mod jwks;
pub mod moto;
pub mod serve;
pub mod token;
pub mod ws;

use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    panic!("timed out waiting for: {what}");
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory tagged `tag`.
    pub fn new(tag: &str) -> Self {
        let nonce: u64 = rand::random();
        let path = std::env::temp_dir().join(format!(
            "streamer-test-{tag}-{}-{nonce:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a test usually needs, in one `use`.
pub mod prelude {
    pub use crate::ws::connect as connect_ws;
    pub use crate::{
        DEADLINE, TempDir,
        dev::{ADMIN_TOKEN, CONFIG_TOML, Dev, EDGE_TOKEN, SERVICE_A_TOKEN, TRUST_410_AT_ONCE},
        eventually,
        grpc::{
            Authed, Reported, admin, broadcast, channel, connections, edge, group_target, groups,
            history, processor_serving, requests, tenant_target,
        },
        serve::Serve,
        token::{claims, keys, token},
        ws::{
            Ws, closed, nothing_pending, recv, recv_type, refused, send, send_json, submit, whoami,
        },
    };
}
