//! The processes a run starts (the control plane, one gateway per 12,000
//! connections, one client agent per gateway, the bare echo server) and what
//! the bench reads from them: CPU time, heap bytes, open descriptors.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::{ADMIN_TOKEN, Args, DEADLINE, EDGE_TOKEN};

/// Connections one gateway (and one agent) holds at most: the hard limit of
/// open files here is 20,000 per process.
pub const PER_PROCESS: usize = 12_000;

/// Every client of a bench comes from 127.0.0.1: `streamer-gateway`'s
/// per-address limits (which an internet-facing gateway keeps) are off.
pub const ONE_ADDRESS: [(&str, &str); 3] = [
    ("STREAMER_GATEWAY_MAX_CONNECTIONS_PER_IP", "0"),
    ("STREAMER_GATEWAY_CONNECTS_PER_IP_PER_SECOND", "0"),
    ("STREAMER_GATEWAY_MAX_CONNECTIONS", "0"),
];

/// A binary built next to this one.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p streamer-server -p streamer-edge -p streamer-bench)",
            path.display()
        );
    }
    Ok(path)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Nanoseconds of CPU a process has used (every thread).
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(ns) = text.split_whitespace().next()
        {
            total += ns.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Reads the first line of a child's stdout that starts with `prefix`, as JSON.
pub async fn ready_line(child: &mut Child, prefix: &str) -> anyhow::Result<Value> {
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready: Value = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix(prefix) {
                return Ok(serde_json::from_str(json.trim())?);
            }
        }
        bail!("the process exited before it was ready")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ready)
}

/// A gateway process.
pub struct Gateway {
    /// The process.
    pub child: Child,
    /// `ws://addr/stage`.
    pub ws: String,
    /// `http://addr/stage`.
    pub management: String,
}

/// Everything one run started.
pub struct Processes {
    /// The control plane.
    pub control_plane: Child,
    /// Its gRPC address.
    pub grpc: String,
    /// Its `/metrics` address.
    pub metrics: String,
    /// The gateways.
    pub gateways: Vec<Gateway>,
}

/// TLS for a run: the control plane's certificate (and client CA for
/// mutual TLS), and what the gateways trust and present.
#[derive(Debug, Clone)]
pub struct BenchTls {
    /// The CA (PEM file) that signed the control plane's certificate.
    pub ca: String,
    /// The control plane's certificate and key (PEM files).
    pub server: (String, String),
    /// Require client certificates from `ca` (mutual TLS).
    pub mutual: bool,
    /// The edge's client certificate and key (PEM files).
    pub edge: (String, String),
}

impl Processes {
    /// Starts the control plane and `gateways` gateways.
    pub async fn start(args: &Args, public_pem: &str, gateways: usize) -> anyhow::Result<Self> {
        Self::start_with(args, public_pem, gateways, None, &[]).await
    }

    /// [`Processes::start`] with the control plane on TLS when `tls` says.
    pub async fn start_with(
        args: &Args,
        public_pem: &str,
        gateways: usize,
        tls: Option<&BenchTls>,
        extra: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let grpc = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let mut control_plane = Command::new(sibling("streamer-control-plane")?);
        let mut tls_env: Vec<(&str, &str)> = Vec::new();
        if let Some(tls) = tls {
            tls_env.push(("STREAMER_TLS_CERT", &tls.server.0));
            tls_env.push(("STREAMER_TLS_KEY", &tls.server.1));
            if tls.mutual {
                tls_env.push(("STREAMER_TLS_CLIENT_CA", &tls.ca));
            }
        }
        let (scheme, client_tls) = match tls {
            Some(tls) => (
                "https",
                streamer_client::ClientTls {
                    ca: Some(tls.ca.clone()),
                    identity: Some(tls.edge.clone()),
                },
            ),
            None => ("http", streamer_client::ClientTls::default()),
        };
        let control_plane = control_plane
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STREAMER_GRPC_ADDR", &grpc)
            .env("STREAMER_METRICS_ADDR", &metrics)
            .env("STREAMER_JWT_PUBLIC_KEY", public_pem)
            // The benchmark mints its own tokens with neither claim, on purpose.
            .env("STREAMER_JWT_ISSUER", "any")
            .env("STREAMER_JWT_AUDIENCE", "any")
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000000")
            .env("STREAMER_MESSAGES_PER_MINUTE", "100000000")
            .env("STREAMER_MESSAGE_BURST", "1000000")
            .env(
                "STREAMER_DELIVERY_CONCURRENCY",
                args.delivery_concurrency.to_string(),
            )
            .env("STREAMER_RECONCILE_INTERVAL_SECS", "0")
            // API Gateway's path, one PostToConnection per recipient, unless
            // a run says otherwise (`streamer-bench gateways` batches): the
            // goals against the Management-API floor keep their meaning.
            .env("STREAMER_DELIVERY_BATCH_SIZE", "0")
            .env("STREAMER_GRPC_IDLE_TIMEOUT_SECS", "0")
            // Only the history scenario's groups keep history.
            .env("STREAMER_HISTORY", "group:hist-*")
            .env("AWS_ACCESS_KEY_ID", "streamer-local")
            .env("AWS_SECRET_ACCESS_KEY", "streamer-local-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Warnings only, and no audit trail: its record per call would
            // drown the benchmark's output on this terminal.
            .env("RUST_LOG", "warn,streamer::audit=off")
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(tls_env)
            .stdout(Stdio::null())
            // A run that sets its own log filter measures what the log
            // costs (`streamer-bench auth`): the lines go nowhere, as they
            // would go to a log router, not to this terminal.
            .stderr(if extra.iter().any(|(k, _)| k == "RUST_LOG") {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .context("start the control plane")?;
        healthy(&format!("{scheme}://{grpc}"), &client_tls).await?;
        let mut started = Vec::new();
        for _ in 0..gateways.max(1) {
            let mut gateway = Command::new(sibling("streamer-gateway")?);
            gateway.env_clear();
            if let Some(tls) = tls {
                gateway
                    .env("STREAMER_CONTROL_PLANE_CA", &tls.ca)
                    .env("STREAMER_EDGE_TLS_CERT", &tls.edge.0)
                    .env("STREAMER_EDGE_TLS_KEY", &tls.edge.1);
            }
            let mut child = gateway
                .env("STREAMER_CONTROL_PLANE_URL", format!("{scheme}://{grpc}"))
                .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
                .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
                // The bench measures the machinery, not AWS's account
                // throttles; the floor client is unsigned, so the emulator
                // checks no signatures for either side.
                .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "0")
                .env("STREAMER_GATEWAY_MANAGEMENT_RPS", "0")
                .env("STREAMER_GATEWAY_VERIFY_SIGNATURES", "false")
                .envs(ONE_ADDRESS)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("start a gateway")?;
            let ready = ready_line(&mut child, "STREAMER_GATEWAY_READY ").await?;
            let addr = ready["gateway"].as_str().context("gateway addr")?;
            let stage = ready["stage"].as_str().context("stage")?;
            started.push(Gateway {
                ws: format!("ws://{addr}/{stage}"),
                management: format!("http://{addr}/{stage}"),
                child,
            });
        }
        Ok(Self {
            control_plane,
            grpc,
            metrics,
            gateways: started,
        })
    }

    /// The control plane's pid.
    pub fn control_plane_pid(&self) -> anyhow::Result<u32> {
        self.control_plane.id().context("control plane pid")
    }

    /// A gRPC channel to the control plane.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.grpc))?
            .connect()
            .await?)
    }

    /// One value of the control plane's `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = http_get(&format!("http://{}/metrics", self.metrics)).await?;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("{name} is not in /metrics"))
    }

    /// The heap bytes of gateway `i` (its stats endpoint).
    pub async fn gateway_heap(&self, i: usize) -> anyhow::Result<f64> {
        let text = http_get(&format!("{}/@local/stats", self.gateways[i].management)).await?;
        let stats: Value = serde_json::from_str(&text)?;
        stats["heap_bytes"].as_f64().context("heap_bytes")
    }

    /// Kills everything.
    pub async fn stop(mut self) {
        for gateway in &mut self.gateways {
            let _ = gateway.child.kill().await;
        }
        let _ = self.control_plane.kill().await;
    }
}

/// Waits until the control plane at `url` answers its health check.
pub async fn healthy(url: &str, client_tls: &streamer_client::ClientTls) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    let mut last: String;
    loop {
        match streamer_proto::tls::endpoint(url, client_tls, ("ca", "cert", "key"))?
            .connect()
            .await
        {
            Ok(channel) => {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                match health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(_) => break,
                    Err(status) => last = format!("{status:?}"),
                }
            }
            Err(err) => last = format!("{err:?}"),
        }
        if Instant::now() > deadline {
            bail!("the control plane did not become healthy (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `GET url` with a plain HTTP/1.1 client.
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client.get(url.parse()?).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
