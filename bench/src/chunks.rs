//! Payloads past API Gateway's limits: echo round trips, on one connection
//! through the gateway and the control plane, of a message that fits
//! (16 KB, sent and answered whole), and of 500 KB and 1 MB messages (cut
//! into 32 KB chunk frames up, joined by the control plane, the echo cut
//! into 128 KB chunk frames down, joined by the client).

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use streamer_client::socket::Socket;

use crate::{
    Args,
    processes::Processes,
    report::{Percentiles, percentiles},
};

/// One size's round trips.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkedEcho {
    /// The payload's bytes.
    pub bytes: usize,
    /// Client frames one message takes (1: sent whole).
    pub frames_up: usize,
    /// Round trip, request sent to answer joined.
    pub round_trip: Percentiles,
    /// Payload bytes per second, both ways counted once.
    pub mb_per_sec: f64,
}

/// The sizes measured.
pub const SIZES: [usize; 3] = [16_000, 500_000, 1_000_000];

/// Measures each of [`SIZES`] `args.repeats * 2` times with `token`.
pub async fn measure(
    args: &Args,
    procs: &Processes,
    token: &str,
) -> anyhow::Result<Vec<ChunkedEcho>> {
    let mut socket = Socket::connect(&procs.gateways[0].ws, token)
        .await
        .context("connect")?;
    let mut results = Vec::new();
    for bytes in SIZES {
        let blob = "x".repeat(bytes);
        let message = json!({ "id": "probe", "action": "echo", "payload": blob }).to_string();
        let frames_up = streamer_proto::client::chunk::split(
            &message,
            streamer_client::socket::MAX_FRAME_BYTES,
            "probe",
            |c| json!({"action": "chunk", "payload": c}).to_string(),
        )
        .map_or(1, |frames| frames.len());
        let mut samples = Vec::new();
        let started = Instant::now();
        for _ in 0..args.repeats * 2 {
            let t0 = Instant::now();
            let id = socket.request("echo", json!(blob)).await?;
            loop {
                let frame = socket.recv().await?;
                if frame["request_id"] != id.as_str() {
                    continue;
                }
                if frame["type"] != "response"
                    || frame["data"].as_str().map(str::len) != Some(bytes)
                {
                    bail!("echo of {bytes} bytes: {}", frame["type"]);
                }
                break;
            }
            samples.push(t0.elapsed());
        }
        let total = started.elapsed().as_secs_f64();
        results.push(ChunkedEcho {
            bytes,
            frames_up,
            mb_per_sec: (bytes * samples.len()) as f64 / total / 1e6,
            round_trip: percentiles(&mut samples),
        });
    }
    socket.close().await;
    Ok(results)
}
