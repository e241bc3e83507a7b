//! `streamer-bench tls`: what encryption costs, side by side in one run.
//! The same control plane and gateway three times — plaintext, TLS, and
//! mutual TLS (the edge presenting its certificate) between the gateway
//! and the control plane — each measured for connect rate and echo round
//! trips through the WebSocket. A local CA (`streamer_listener::pki`)
//! makes the certificates.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use streamer_client::token::generate_rsa_key_pair;

use crate::{
    Args,
    processes::{BenchTls, Processes},
    report::{Percentiles, percentiles},
    scenarios, token,
};

/// One mode's figures.
#[derive(Debug, Serialize)]
pub struct TlsResult {
    /// `plaintext`, `tls` or `mutual tls`.
    pub mode: &'static str,
    /// Connections opened per second.
    pub connects_per_sec: f64,
    /// Connect latency.
    pub connect: Percentiles,
    /// Echo round trips per second.
    pub echoes_per_sec: f64,
    /// Echo round trip.
    pub echo: Percentiles,
}

/// Runs the three modes and prints them.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let keys = generate_rsa_key_pair()?;
    let dir = std::env::temp_dir().join(format!("streamer-bench-tls-{}", std::process::id()));
    let pki = streamer_listener::pki::LocalPki::open(&dir, "streamer-edge")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let tls = |mutual| BenchTls {
        ca: path(&pki.ca),
        server: (path(&pki.server.0), path(&pki.server.1)),
        mutual,
        edge: (path(&pki.edge.0), path(&pki.edge.1)),
    };
    let mut results = Vec::new();
    for (mode, setup) in [
        ("plaintext", None),
        ("tls", Some(tls(false))),
        ("mutual tls", Some(tls(true))),
    ] {
        let procs = Processes::start_with(args, &keys.public_pem, 1, setup.as_ref(), &[])
            .await
            .with_context(|| format!("start the {mode} run"))?;
        let measured = measure(args, &procs, mode, &keys.private_pem).await;
        procs.stop().await;
        results.push(measured?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "gateway -> control plane encryption ({} connections, {} echo connections for {} s, {} B payloads)",
        args.connections, args.echo_connections, args.duration, args.payload_bytes
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "mode", "connects/s", "connect p50", "connect p99", "echoes/s", "echo p50", "echo p99"
    );
    for r in &results {
        println!(
            "{:<12} {:>12.0} {:>12} {:>12} {:>12.0} {:>12} {:>12}",
            r.mode,
            r.connects_per_sec,
            ms(r.connect.p50_ms),
            ms(r.connect.p99_ms),
            r.echoes_per_sec,
            ms(r.echo.p50_ms),
            ms(r.echo.p99_ms),
        );
    }
    Ok(())
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

async fn measure(
    args: &Args,
    procs: &Processes,
    mode: &'static str,
    private_pem: &str,
) -> anyhow::Result<TlsResult> {
    let url = format!(
        "{}?token={}",
        procs.gateways[0].ws,
        token(private_pem, "u", "bench-tls")?
    );
    // Warm the gateway's channel (and its handshake) first.
    drop(scenarios::connect_here(&url, 4, 4).await?);
    let (sockets, mut latencies, elapsed) =
        scenarios::connect_here(&url, args.connections, args.connect_concurrency).await?;
    let connects_per_sec = args.connections as f64 / elapsed.as_secs_f64();
    drop(sockets);
    let (sockets, _, _) =
        scenarios::connect_here(&url, args.echo_connections, args.echo_connections).await?;
    let payload = "x".repeat(args.payload_bytes);
    let (mut echo, echoes_per_sec) =
        scenarios::round_trips(sockets, Duration::from_secs(args.duration), move |i| {
            json!({"id": format!("e{i}"), "action": "echo", "payload": payload}).to_string()
        })
        .await?;
    Ok(TlsResult {
        mode,
        connects_per_sec,
        connect: percentiles(&mut latencies),
        echoes_per_sec,
        echo: percentiles(&mut echo),
    })
}
