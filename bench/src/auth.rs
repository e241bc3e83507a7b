//! `streamer-bench auth`: what issue 25's controls cost, side by side in
//! one run.
//!
//! - Client keys: the same control plane and gateway verifying tokens with
//!   one static key, and with keys from a JWKS document (two keys, tokens
//!   picking theirs by `kid`, served from loopback): connect rate, connect
//!   latency and the control plane's CPU per connect.
//! - The audit trail: the same run with the record per server-API call
//!   switched off (`streamer::audit=off`) and on (JSON lines, as `serve`
//!   writes them in production): echo round trips (client traffic, never
//!   audited: a control), and Sends to 1 and to 1,000 recipients (each an
//!   audited call).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use streamer_client::token::{Claims, generate_rsa_key_pair, mint_rs256};
use streamer_test_kit::jwks::{Provider, jwk, signed};

use crate::{
    Args,
    keys::{Listeners, time_sends},
    processes::{Processes, cpu_ns},
    report::{Percentiles, percentiles},
    scenarios,
};

/// One client-key mode's figures.
#[derive(Debug, Serialize)]
pub struct KeyModeResult {
    /// `static key` or `JWKS`.
    pub mode: &'static str,
    /// Connections opened per second.
    pub connects_per_sec: f64,
    /// Connect latency.
    pub connect: Percentiles,
    /// Control-plane CPU per connect, microseconds.
    pub cpu_us_per_connect: f64,
}

/// One audit mode's figures.
#[derive(Debug, Serialize)]
pub struct AuditModeResult {
    /// `audit off` or `audit on`.
    pub mode: &'static str,
    /// Echo round trips per second.
    pub echoes_per_sec: f64,
    /// Echo round trip.
    pub echo: Percentiles,
    /// Send latency to 1 recipient, and the control plane's CPU per Send.
    pub send_1: Percentiles,
    pub cpu_us_per_send_1: f64,
    /// Send latency to 1,000 recipients (the Send answers when every
    /// delivery has), and the control plane's CPU per Send.
    pub send_1000: Percentiles,
    pub cpu_us_per_send_1000: f64,
}

#[derive(Debug, Serialize)]
struct AuthReport {
    keys: Vec<KeyModeResult>,
    audit: Vec<AuditModeResult>,
}

/// Runs both comparisons and prints them.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let keys = generate_rsa_key_pair()?;
    let other = generate_rsa_key_pair()?;
    // The identity provider publishes two keys; tokens are signed by the
    // second, so the lookup by `kid` is a real one.
    let provider = Provider::start(&json!({"keys": [jwk(&other, "k0"), jwk(&keys, "k1")]})).await;
    let claims = Claims::new("u", "bench-auth", &[], 3600);
    let static_token = mint_rs256(&keys.private_pem, &claims)?;
    let kid_token = signed(&keys, "k1", &claims);
    let mut key_rows = Vec::new();
    for (mode, env, token) in [
        ("static key", Vec::new(), &static_token),
        (
            "JWKS",
            vec![
                ("STREAMER_JWT_PUBLIC_KEY".to_owned(), String::new()),
                ("STREAMER_JWT_JWKS_URL".to_owned(), provider.url.clone()),
            ],
            &kid_token,
        ),
    ] {
        let procs = Processes::start_with(args, &keys.public_pem, 1, None, &env)
            .await
            .with_context(|| format!("start the {mode} run"))?;
        let measured = connect_rate(args, &procs, mode, token).await;
        procs.stop().await;
        key_rows.push(measured?);
    }

    let mut audit_rows = Vec::new();
    for (mode, filter) in [
        ("audit off", "warn,streamer::audit=off"),
        ("audit on", "warn"),
    ] {
        let env = vec![
            ("RUST_LOG".to_owned(), filter.to_owned()),
            ("STREAMER_LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        let procs = Processes::start_with(args, &keys.public_pem, 1, None, &env)
            .await
            .with_context(|| format!("start the {mode} run"))?;
        let measured = audit_costs(args, &procs, mode, &keys.private_pem).await;
        procs.stop().await;
        audit_rows.push(measured?);
    }

    let report = AuthReport {
        keys: key_rows,
        audit: audit_rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "client keys ({} connections, {} at once)",
        args.connections, args.connect_concurrency
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>14}",
        "mode", "connects/s", "connect p50", "connect p99", "CPU/connect"
    );
    for r in &report.keys {
        println!(
            "{:<12} {:>12.0} {:>12} {:>12} {:>11.0} µs",
            r.mode,
            r.connects_per_sec,
            ms(r.connect.p50_ms),
            ms(r.connect.p99_ms),
            r.cpu_us_per_connect
        );
    }
    println!();
    println!(
        "the audit record per server-API call ({} echo connections for {} s; {} Sends each to 1 and to 1,000)",
        args.echo_connections,
        args.duration,
        crate::keys::SENDS
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "mode",
        "echoes/s",
        "echo p50",
        "echo p99",
        "send1 p50",
        "send1 p99",
        "CPU/send1",
        "send1k p50",
        "send1k p99",
        "CPU/1k"
    );
    for r in &report.audit {
        println!(
            "{:<10} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>6.0} µs {:>10} {:>10} {:>6.0} µs",
            r.mode,
            r.echoes_per_sec,
            ms(r.echo.p50_ms),
            ms(r.echo.p99_ms),
            ms(r.send_1.p50_ms),
            ms(r.send_1.p99_ms),
            r.cpu_us_per_send_1,
            ms(r.send_1000.p50_ms),
            ms(r.send_1000.p99_ms),
            r.cpu_us_per_send_1000,
        );
    }
    Ok(())
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

async fn connect_rate(
    args: &Args,
    procs: &Processes,
    mode: &'static str,
    token: &str,
) -> anyhow::Result<KeyModeResult> {
    let url = format!("{}?token={token}", procs.gateways[0].ws);
    // Warm the gateway's channel (and, with JWKS, the fetched set) first.
    drop(scenarios::connect_here(&url, 4, 4).await?);
    let pid = procs.control_plane_pid()?;
    let cpu_before = cpu_ns(pid)?;
    let (sockets, mut latencies, elapsed) =
        scenarios::connect_here(&url, args.connections, args.connect_concurrency).await?;
    let cpu = cpu_ns(pid)? - cpu_before;
    drop(sockets);
    Ok(KeyModeResult {
        mode,
        connects_per_sec: args.connections as f64 / elapsed.as_secs_f64(),
        connect: percentiles(&mut latencies),
        cpu_us_per_connect: cpu as f64 / 1000.0 / args.connections as f64,
    })
}

async fn audit_costs(
    args: &Args,
    procs: &Processes,
    mode: &'static str,
    private_pem: &str,
) -> anyhow::Result<AuditModeResult> {
    let url = format!(
        "{}?token={}",
        procs.gateways[0].ws,
        crate::token(private_pem, "u", "bench-audit-echo")?
    );
    let (sockets, _, _) =
        scenarios::connect_here(&url, args.echo_connections, args.echo_connections).await?;
    let payload = "x".repeat(args.payload_bytes);
    let (mut echo, echoes_per_sec) =
        scenarios::round_trips(sockets, Duration::from_secs(args.duration), move |i| {
            json!({"id": format!("e{i}"), "action": "echo", "payload": payload}).to_string()
        })
        .await?;
    let mut sends = Vec::new();
    for recipients in [1usize, 1000] {
        let tenant = format!("bench-audit-{recipients}");
        let listeners = Listeners::connect(procs, private_pem, &tenant, recipients).await?;
        // Warm the path (channel, caches) before measuring.
        time_sends(procs, &tenant, recipients, |_| String::new()).await?;
        sends.push(time_sends(procs, &tenant, recipients, |_| String::new()).await?);
        drop(listeners);
    }
    let (send_1000, cpu_1000) = sends.pop().context("1,000")?;
    let (send_1, cpu_1) = sends.pop().context("1")?;
    Ok(AuditModeResult {
        mode,
        echoes_per_sec,
        echo: percentiles(&mut echo),
        send_1,
        cpu_us_per_send_1: cpu_1,
        send_1000,
        cpu_us_per_send_1000: cpu_1000,
    })
}
