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
//! emulator's well-known local pair would let anyone post), during a
//! rotation the pair before it as `STREAMER_GATEWAY_PREVIOUS_ACCESS_KEY_ID`
//! / `_PREVIOUS_SECRET_ACCESS_KEY` (accepted too), and
//! `STREAMER_GATEWAY_METRICS_ADDR` (Prometheus `/metrics` on a port of its
//! own: connects by outcome, calls, frames, throttles, open connections,
//! heap). It counts its heap allocations and reports them on
//! `/{stage}/@local/stats`, so memory per connection is measured exactly.
//!
//! On the internet: `STREAMER_GATEWAY_TLS_CERT` / `_KEY` (TLS on the
//! clients' listener; each a PEM file's path or the PEM itself, as ECS
//! injects a secret), `STREAMER_GATEWAY_PROXY_PROTOCOL=true` (every
//! connection starts with the PROXY v2 header a Network Load Balancer
//! sends; its client address is the one events report and limits count),
//! `STREAMER_GATEWAY_MANAGEMENT_ADDR` (the Management API and batch call on
//! a listener of their own, with `STREAMER_GATEWAY_MANAGEMENT_TLS_CERT` /
//! `_KEY`; the public listener then serves upgrades only),
//! `{ecs_task_id}` in `STREAMER_GATEWAY_PUBLIC_ENDPOINT` (this task's id,
//! its name under ECS service discovery), and the admission limits:
//! `STREAMER_GATEWAY_MAX_CONNECTIONS` (default 100,000 per process),
//! `_MAX_CONNECTIONS_PER_IP` (1,000), `_CONNECTS_PER_IP_PER_SECOND` (20)
//! with `_CONNECTS_PER_IP_BURST` (100); 0 turns each off, and past each an
//! upgrade is answered 429 before any event reaches the control plane.
//! `STREAMER_GATEWAY_PING_SECS` (240; 0: never) pings every client, under a
//! load balancer's idle limit; `STREAMER_GATEWAY_EMF_NAMESPACE` (with
//! `_EMF_SERVICE`, `_EMF_INTERVAL_SECS`, default 60) writes the open
//! connections as a CloudWatch embedded-metric line to stdout, to scale on.

use std::{process::ExitCode, time::Duration};

use std::os::unix::fs::OpenOptionsExt;

use streamer_edge::{
    client::{CALL_TIMEOUT, edge_client_with},
    gateway::{Gateway, GatewayOptions, Handshake, Listeners},
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
        // On the internet: a cap per process and what one address may do
        // (0 turns each off; a benchmark's clients all share 127.0.0.1).
        max_connections: size("STREAMER_GATEWAY_MAX_CONNECTIONS", 100_000)?,
        max_connections_per_ip: size("STREAMER_GATEWAY_MAX_CONNECTIONS_PER_IP", 1_000)?,
        connects_per_ip_per_second: rate("STREAMER_GATEWAY_CONNECTS_PER_IP_PER_SECOND", 20)?,
        connects_per_ip_burst: rate("STREAMER_GATEWAY_CONNECTS_PER_IP_BURST", 100)?,
        // Under a Network Load Balancer's 350 s idle limit.
        ping_interval: Some(Duration::from_secs(number(
            "STREAMER_GATEWAY_PING_SECS",
            240,
        )?)),
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
    let public_handshake = Handshake {
        tls: server_tls(
            &var,
            "STREAMER_GATEWAY_TLS_CERT",
            "STREAMER_GATEWAY_TLS_KEY",
        )?,
        proxy_protocol: flag(&var, "STREAMER_GATEWAY_PROXY_PROTOCOL")?,
    };
    // The Management API on a listener of its own (inside the VPC), so the
    // public one serves upgrades only.
    let management = match var("STREAMER_GATEWAY_MANAGEMENT_ADDR") {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            let tls = server_tls(
                &var,
                "STREAMER_GATEWAY_MANAGEMENT_TLS_CERT",
                "STREAMER_GATEWAY_MANAGEMENT_TLS_KEY",
            )?;
            Some((
                listener,
                Handshake {
                    tls,
                    proxy_protocol: false,
                },
            ))
        }
        None => None,
    };
    let (api_addr, api_tls) = match &management {
        Some((listener, handshake)) => (listener.local_addr()?, handshake.tls.is_some()),
        None => (local, public_handshake.tls.is_some()),
    };
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
            // `{ecs_task_id}`: this task's id, its name in the service's
            // private DNS zone (ECS service discovery with SRV records).
            let url = if url.contains(TASK_ID) {
                url.replace(TASK_ID, &ecs_task_id(&var).await?)
            } else {
                url
            };
            url.trim_end_matches('/').to_owned()
        }
        Some(url) => anyhow::bail!(
            "STREAMER_GATEWAY_PUBLIC_ENDPOINT must be an http:// or https:// URL with the stage, not {url:?}"
        ),
        None => {
            let scheme = if api_tls { "https" } else { "http" };
            format!("{scheme}://{api_addr}/{stage}")
        }
    };
    let handler = EdgeHandler::spread(clients, Some(endpoint.clone()));
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
        (None, None) if api_addr.ip().is_loopback() => {}
        (None, None) => anyhow::bail!(
            "the Management API listens on {api_addr}, not loopback: set STREAMER_GATEWAY_ACCESS_KEY_ID and STREAMER_GATEWAY_SECRET_ACCESS_KEY (the pair the control plane signs with, STREAMER_GATEWAY_SIGNING_*), or anyone reaching this port could post to every connection"
        ),
        _ => anyhow::bail!(
            "set both STREAMER_GATEWAY_ACCESS_KEY_ID and STREAMER_GATEWAY_SECRET_ACCESS_KEY"
        ),
    }
    // A rotation's overlap: the pair before the current one, accepted too
    // until every control plane signs with the new one.
    match (
        var("STREAMER_GATEWAY_PREVIOUS_ACCESS_KEY_ID"),
        var("STREAMER_GATEWAY_PREVIOUS_SECRET_ACCESS_KEY"),
    ) {
        (None, None) => {}
        (Some(access_key), Some(secret_key)) if secret_key.len() >= 32 => {
            options.previous_credentials = Some(streamer_edge::gateway::LocalCredentials {
                access_key,
                secret_key,
                region: options.credentials.region.clone(),
            });
        }
        (Some(_), Some(_)) => {
            anyhow::bail!("STREAMER_GATEWAY_PREVIOUS_SECRET_ACCESS_KEY: use at least 32 characters")
        }
        _ => anyhow::bail!(
            "set both STREAMER_GATEWAY_PREVIOUS_ACCESS_KEY_ID and STREAMER_GATEWAY_PREVIOUS_SECRET_ACCESS_KEY, or neither"
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
    // For scaling on CloudWatch: the open connections as an embedded
    // metric format line on stdout every interval (the awslogs driver
    // sends it; CloudWatch makes it the metric `Connections` of the
    // namespace, dimension `Service`, which the service scales on).
    if let Some(namespace) = var("STREAMER_GATEWAY_EMF_NAMESPACE") {
        let service =
            var("STREAMER_GATEWAY_EMF_SERVICE").unwrap_or_else(|| "streamer-gateway".into());
        let every = Duration::from_secs(
            var("STREAMER_GATEWAY_EMF_INTERVAL_SECS")
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "STREAMER_GATEWAY_EMF_INTERVAL_SECS must be a number of seconds"
                    )
                })?
                .unwrap_or(60)
                .max(1),
        );
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                // A closed stdout must not end the task (println! would panic).
                use std::io::Write;
                let line = emf_line(&namespace, &service, gateway.connection_count());
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        });
    }
    let ready = serde_json::json!({
        "gateway": local.to_string(),
        "management": api_addr.to_string(),
        "endpoint": endpoint,
        "stage": stage,
        "metrics": metrics_at,
    });
    println!("STREAMER_GATEWAY_READY {ready}");
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
    gateway
        .serve_on(
            Listeners {
                public: listener,
                public_handshake,
                management,
            },
            shutdown,
        )
        .await?;
    Ok(())
}

/// One embedded-metric-format record: `Connections` now, in `namespace`,
/// dimension `Service`.
fn emf_line(namespace: &str, service: &str, connections: usize) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["Service"]],
                "Metrics": [{ "Name": "Connections", "Unit": "Count" }],
            }],
        },
        "Service": service,
        "Connections": connections,
    })
    .to_string()
}

/// The placeholder for this ECS task's id in the public endpoint.
const TASK_ID: &str = "{ecs_task_id}";

/// `true` / `false` (unset: false).
fn flag(var: &dyn Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<bool> {
    match var(name).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => anyhow::bail!("{name} must be true or false, not {other:?}"),
    }
}

/// A listener's TLS from a certificate and key setting, each a PEM file's
/// path or the PEM itself (as ECS puts a Secrets Manager secret into the
/// environment); the files are re-read when they change.
fn server_tls(
    var: &dyn Fn(&str) -> Option<String>,
    cert: &'static str,
    key: &'static str,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (cert_value, key_value) = match (var(cert), var(key)) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("set both {cert} and {key}, or neither"),
    };
    let files = streamer_listener::tls::ServerFiles {
        cert: pem_file(cert, &cert_value)?,
        key: pem_file(key, &key_value)?,
        client_ca: None,
        settings: (cert, key, ""),
    };
    let tls = streamer_listener::tls::ServerTls::load(&files, &[b"http/1.1"])?;
    Ok(Some(tls.acceptor()))
}

/// A setting that is a path, or PEM text written to a file only this user
/// can read.
fn pem_file(name: &str, value: &str) -> anyhow::Result<std::path::PathBuf> {
    if !value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.into());
    }
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("streamer-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name.to_ascii_lowercase());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(value.as_bytes())?;
    Ok(path)
}

/// This ECS task's id, from the task metadata endpoint ECS gives every
/// container (`ECS_CONTAINER_METADATA_URI_V4`): the last part of its ARN.
async fn ecs_task_id(var: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let base = var("ECS_CONTAINER_METADATA_URI_V4").ok_or_else(|| {
        anyhow::anyhow!("STREAMER_GATEWAY_PUBLIC_ENDPOINT names {TASK_ID}, but ECS_CONTAINER_METADATA_URI_V4 is not set (not an ECS task?)")
    })?;
    let uri: hyper::Uri = format!("{base}/task").parse()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("the ECS task metadata endpoint did not answer in 5 s"))??;
    if !response.status().is_success() {
        anyhow::bail!(
            "the ECS task metadata endpoint answered {}",
            response.status()
        );
    }
    let body = response.into_body().collect().await?.to_bytes();
    let task: serde_json::Value = serde_json::from_slice(&body)?;
    let id = task["TaskARN"]
        .as_str()
        .and_then(|arn| arn.rsplit('/').next())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .ok_or_else(|| anyhow::anyhow!("the ECS task metadata names no usable TaskARN"))?;
    Ok(id.to_owned())
}
