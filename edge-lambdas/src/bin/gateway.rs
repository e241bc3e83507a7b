//! `streamer-gateway`: the local API Gateway emulator on its own, in front
//! of a control plane running elsewhere (`streamer-control-plane serve`).
//! `streamer-control-plane dev` runs both in one process; this binary keeps
//! them apart, e.g. to measure the control plane's memory alone.
//!
//! Environment: `STREAMER_CONTROL_PLANE_URL` (a comma list spreads events
//! over several replicas, each event to the next; `https://` with
//! `STREAMER_CONTROL_PLANE_CA` and, for mutual TLS, `STREAMER_EDGE_TLS_CERT`
//! / `_KEY`), `STREAMER_EDGE_TOKEN` (or `_SECRET_ARN`; not needed when the
//! client certificate names the edge),
//! `STREAMER_GATEWAY_ADDR` (default `127.0.0.1:8080`), `STREAMER_STAGE`
//! (default `local`), `STREAMER_GATEWAY_PUBLIC_ENDPOINT` (the Management
//! API URL, with the stage, the control plane is told to call: default
//! this listener's own), and the emulator's limits under the names `dev` reads
//! (`STREAMER_GATEWAY_MAX_MESSAGE_BYTES`, `_MAX_FRAME_BYTES`,
//! `_IDLE_TIMEOUT_SECS`, `_MAX_DURATION_SECS`, `_HEADER_TIMEOUT_MS`,
//! `_CONNECTS_PER_SECOND`, `_MANAGEMENT_RPS`, `_MANAGEMENT_BURST`), plus
//! `STREAMER_GATEWAY_VERIFY_SIGNATURES=false` for the benchmark's unsigned
//! floor, `STREAMER_GATEWAY_BATCH=false` to serve no batch call (API
//! Gateway's way; on by default here), and the key pair Management API and
//! batch calls must be signed with, `STREAMER_GATEWAY_ACCESS_KEY_ID` /
//! `STREAMER_GATEWAY_SECRET_ACCESS_KEY` (the control plane's
//! `STREAMER_GATEWAY_SIGNING_*`; required off loopback, where the
//! emulator's well-known local pair would let anyone post), and
//! `STREAMER_GATEWAY_METRICS_ADDR` (Prometheus `/metrics` on a port of its
//! own: connects by outcome, calls, frames, throttles, open connections,
//! heap). It counts its heap allocations and reports them on
//! `/{stage}/@local/stats`, so memory per connection is measured exactly.

use std::{process::ExitCode, time::Duration};

use streamer_edge::{
    client::{CALL_TIMEOUT, edge_client_with},
    gateway::{Gateway, GatewayOptions},
    handler::EdgeHandler,
};

/// Counts live heap bytes, for the stats endpoint.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The emulator's options from the environment (defaults: API Gateway's).
fn options(var: &dyn Fn(&str) -> Option<String>, stage: &str) -> anyhow::Result<GatewayOptions> {
    let defaults = GatewayOptions::default();
    let number = |name: &str, default: u64| -> anyhow::Result<u64> {
        match var(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid value for {name}: {raw:?} is not a number")),
        }
    };
    let size = |name: &str, default: usize| -> anyhow::Result<usize> {
        usize::try_from(number(name, default as u64)?)
            .map_err(|_| anyhow::anyhow!("{name} is too large"))
    };
    let rate = |name: &str, default: u32| -> anyhow::Result<u32> {
        u32::try_from(number(name, u64::from(default))?)
            .map_err(|_| anyhow::anyhow!("{name} is too large"))
    };
    Ok(GatewayOptions {
        stage: stage.to_owned(),
        max_message_bytes: size(
            "STREAMER_GATEWAY_MAX_MESSAGE_BYTES",
            defaults.max_message_bytes,
        )?,
        max_frame_bytes: size("STREAMER_GATEWAY_MAX_FRAME_BYTES", defaults.max_frame_bytes)?,
        idle_timeout: Duration::from_secs(number(
            "STREAMER_GATEWAY_IDLE_TIMEOUT_SECS",
            defaults.idle_timeout.as_secs(),
        )?),
        max_duration: Duration::from_secs(number(
            "STREAMER_GATEWAY_MAX_DURATION_SECS",
            defaults.max_duration.as_secs(),
        )?),
        header_timeout: Duration::from_millis(number(
            "STREAMER_GATEWAY_HEADER_TIMEOUT_MS",
            u64::try_from(defaults.header_timeout.as_millis()).unwrap_or(u64::MAX),
        )?),
        connects_per_second: rate(
            "STREAMER_GATEWAY_CONNECTS_PER_SECOND",
            defaults.connects_per_second,
        )?,
        management_rps: rate("STREAMER_GATEWAY_MANAGEMENT_RPS", defaults.management_rps)?,
        management_burst: rate(
            "STREAMER_GATEWAY_MANAGEMENT_BURST",
            defaults.management_burst,
        )?,
        verify_signatures: var("STREAMER_GATEWAY_VERIFY_SIGNATURES").as_deref() != Some("false"),
        // Streamer's own gateway serves its batch call unless told not to.
        batch: var("STREAMER_GATEWAY_BATCH").as_deref() != Some("false"),
        ..defaults
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("streamer-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = var("STREAMER_CONTROL_PLANE_URL")
        .ok_or_else(|| anyhow::anyhow!("set STREAMER_CONTROL_PLANE_URL"))?;
    // The same credentials as the Lambdas: a token (from Secrets Manager or
    // STREAMER_EDGE_TOKEN) and/or TLS to an https:// control plane.
    let credentials = streamer_edge::lambda::credentials_from_env(&var).await?;
    let addr = var("STREAMER_GATEWAY_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
    let stage = var("STREAMER_STAGE").unwrap_or_else(|| "local".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    // A comma list spreads events over several replicas, as Lambda
    // instances behind one API would.
    let clients = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| edge_client_with(u, &credentials, CALL_TIMEOUT))
        .collect::<Result<Vec<_>, _>>()?;
    if clients.is_empty() {
        anyhow::bail!("STREAMER_CONTROL_PLANE_URL names no address");
    }
    // The Management API endpoint the control plane is told to call back:
    // this listener, unless it is reached another way (a load balancer, a
    // fault-injecting proxy in front of it).
    let endpoint = match var("STREAMER_GATEWAY_PUBLIC_ENDPOINT") {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.trim_end_matches('/').to_owned()
        }
        Some(url) => anyhow::bail!(
            "STREAMER_GATEWAY_PUBLIC_ENDPOINT must be an http:// or https:// URL with the stage, not {url:?}"
        ),
        None => format!("http://{local}/{stage}"),
    };
    let handler = EdgeHandler::spread(clients, Some(endpoint));
    let mut options = options(&var, &stage)?;
    // What Management API and batch calls must be signed with: the pair
    // the control plane holds (STREAMER_GATEWAY_SIGNING_*). The emulator's
    // well-known local pair is allowed on a loopback address only.
    match (
        var("STREAMER_GATEWAY_ACCESS_KEY_ID"),
        var("STREAMER_GATEWAY_SECRET_ACCESS_KEY"),
    ) {
        (Some(access_key), Some(secret_key)) => {
            if secret_key.len() < 32 {
                anyhow::bail!("STREAMER_GATEWAY_SECRET_ACCESS_KEY: use at least 32 characters");
            }
            options.credentials = streamer_edge::gateway::LocalCredentials {
                access_key,
                secret_key,
                region: var("STREAMER_GATEWAY_REGION")
                    .or_else(|| var("AWS_REGION"))
                    .unwrap_or_else(|| "us-east-1".into()),
            };
        }
        (None, None) if local.ip().is_loopback() => {}
        (None, None) => anyhow::bail!(
            "listening on {local}, not loopback: set STREAMER_GATEWAY_ACCESS_KEY_ID and STREAMER_GATEWAY_SECRET_ACCESS_KEY (the pair the control plane signs with, STREAMER_GATEWAY_SIGNING_*), or anyone reaching this port could post to every connection"
        ),
        _ => anyhow::bail!(
            "set both STREAMER_GATEWAY_ACCESS_KEY_ID and STREAMER_GATEWAY_SECRET_ACCESS_KEY"
        ),
    }
    let gateway = Gateway::with_heap_meter(
        handler,
        options,
        Some(std::sync::Arc::new(|| {
            u64::try_from(ALLOCATOR.allocated()).unwrap_or(u64::MAX)
        })),
    );
    // Its own metrics on a port of their own (never the public listener).
    let mut metrics_at = String::new();
    if let Some(addr) = var("STREAMER_GATEWAY_METRICS_ADDR") {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        metrics_at = listener.local_addr()?.to_string();
        let gateway = gateway.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let gateway = gateway.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        gateway.metrics_text(),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(error = %err, "the metrics listener stopped");
            }
        });
    }
    println!(
        "STREAMER_GATEWAY_READY {{\"gateway\":\"{local}\",\"stage\":\"{stage}\",\"metrics\":\"{metrics_at}\"}}"
    );
    // SIGTERM (ECS stopping the task, a deploy) or Ctrl-C: stop accepting,
    // close every socket with 1001 "Going away" (clients reconnect, through
    // the load balancer, to another gateway) and let each `$disconnect` run.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    gateway.serve(listener, shutdown).await?;
    Ok(())
}
