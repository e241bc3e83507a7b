//! `streamer-bench keys`: what an idempotency key costs a Send. Sends to 1
//! and to 1,000 recipients, without a key and with a fresh key each, on
//! the embedded store and (with `STREAMER_BENCH_DYNAMODB_ENDPOINT`, a
//! DynamoDB-compatible server such as the test command's moto) on
//! DynamoDB: Send latency percentiles and the control plane's CPU per Send.

use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use serde::Serialize;
use streamer_client::token::generate_rsa_key_pair;
use streamer_proto::{
    auth::BearerToken,
    v1::{self, broadcast_service_client::BroadcastServiceClient},
};

use crate::{
    ADMIN_TOKEN, Args,
    processes::{Processes, cpu_ns, sibling},
    report::{Percentiles, percentiles},
    scenarios, token,
};

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct KeyCost {
    /// `embedded` or `dynamodb`.
    pub store: &'static str,
    /// Connections each Send reaches.
    pub recipients: usize,
    /// Whether each Send carried a key.
    pub keyed: bool,
    /// Send latency.
    pub latency: Percentiles,
    /// Control-plane CPU per Send, microseconds.
    pub cpu_us_per_send: f64,
}

/// Sends per row.
pub const SENDS: usize = 200;

/// Runs every row and prints them.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let keys = generate_rsa_key_pair()?;
    let mut stores: Vec<(&'static str, Vec<(String, String)>)> = vec![("embedded", Vec::new())];
    if let Ok(endpoint) = std::env::var("STREAMER_BENCH_DYNAMODB_ENDPOINT") {
        stores.push(("dynamodb", dynamodb_env(&endpoint, "keys").await?));
    }
    let mut rows = Vec::new();
    for (store, env) in &stores {
        let procs = Processes::start_with(args, &keys.public_pem, 1, None, env)
            .await
            .with_context(|| format!("start on the {store} store"))?;
        let measured = measure(&procs, store, &keys.private_pem).await;
        procs.stop().await;
        rows.extend(measured?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("idempotency keys: {SENDS} Sends per row, one at a time");
    println!(
        "{:<9} {:>10} {:>6} {:>10} {:>10} {:>10} {:>14}",
        "store", "recipients", "key", "p50", "p99", "max", "cpu/send"
    );
    for r in &rows {
        println!(
            "{:<9} {:>10} {:>6} {:>7.2} ms {:>7.2} ms {:>7.2} ms {:>11.0} µs",
            r.store,
            r.recipients,
            if r.keyed { "yes" } else { "no" },
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.cpu_us_per_send
        );
    }
    Ok(())
}

/// Fresh tables on the server at `endpoint`, made by the control plane's
/// own `tables create`; the settings that name them.
pub async fn dynamodb_env(endpoint: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    let tag = format!("bench-{what}-{:x}", rand::random::<u32>());
    let env: Vec<(String, String)> = [
        ("STREAMER_STORE", "dynamodb".to_owned()),
        ("STREAMER_CONNECTIONS_TABLE", format!("{tag}-connections")),
        ("STREAMER_RATE_LIMITS_TABLE", format!("{tag}-limits")),
        ("STREAMER_REQUESTS_TABLE", format!("{tag}-requests")),
        ("STREAMER_HISTORY_TABLE", format!("{tag}-history")),
        ("STREAMER_CHUNKS_TABLE", format!("{tag}-chunks")),
        ("STREAMER_MANAGEMENT_ENDPOINTS", "any".to_owned()),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint.to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let made = tokio::process::Command::new(sibling("streamer-control-plane")?)
        .args(["tables", "create"])
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await?;
    if !made.status.success() {
        anyhow::bail!(
            "tables create failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    Ok(env)
}

async fn measure(
    procs: &Processes,
    store: &'static str,
    private_pem: &str,
) -> anyhow::Result<Vec<KeyCost>> {
    let mut rows = Vec::new();
    for recipients in [1usize, 1000] {
        let tenant = format!("bench-keys-{recipients}");
        let listeners = Listeners::connect(procs, private_pem, &tenant, recipients).await?;
        for keyed in [false, true] {
            let (latency, cpu_us_per_send) = time_sends(procs, &tenant, recipients, |i| {
                if keyed {
                    format!("bench-{store}-{recipients}-{i}-{:x}", rand::random::<u64>())
                } else {
                    String::new()
                }
            })
            .await?;
            rows.push(KeyCost {
                store,
                recipients,
                keyed,
                latency,
                cpu_us_per_send,
            });
        }
        drop(listeners);
    }
    Ok(rows)
}

/// `n` connections of `tenant` that read and drop what arrives, so no
/// socket's buffer fills; closed when dropped.
pub struct Listeners(Vec<tokio::task::JoinHandle<()>>);

impl Listeners {
    /// Connects them through the run's first gateway.
    pub async fn connect(
        procs: &Processes,
        private_pem: &str,
        tenant: &str,
        n: usize,
    ) -> anyhow::Result<Self> {
        let url = format!(
            "{}?token={}",
            procs.gateways[0].ws,
            token(private_pem, "u", tenant)?
        );
        let (sockets, _, _) = scenarios::connect_here(&url, n, 64).await?;
        Ok(Self(
            sockets
                .into_iter()
                .map(|mut ws| {
                    tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} })
                })
                .collect(),
        ))
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

/// [`SENDS`] Sends to `tenant` one after another (the `i`th with the
/// idempotency key `key(i)`, empty for none), each checked to reach all
/// `recipients`: their latency and the control plane's CPU per Send,
/// microseconds.
pub async fn time_sends(
    procs: &Processes,
    tenant: &str,
    recipients: usize,
    key: impl Fn(usize) -> String,
) -> anyhow::Result<(Percentiles, f64)> {
    let mut client = BroadcastServiceClient::with_interceptor(
        procs.channel().await?,
        BearerToken::new(ADMIN_TOKEN)?,
    );
    let pid = procs.control_plane_pid()?;
    let cpu_before = cpu_ns(pid)?;
    let mut samples = Vec::with_capacity(SENDS);
    for i in 0..SENDS {
        let request = v1::SendRequest {
            target: Some(v1::send_request::Target::TenantId(tenant.to_owned())),
            payload: Some(v1::send_request::Payload::DataJson(format!(
                "{{\"n\":{i}}}"
            ))),
            idempotency_key: key(i),
            ..Default::default()
        };
        let t = Instant::now();
        let sent = client.send(request).await?.into_inner();
        samples.push(t.elapsed());
        let delivered = sent.report.map_or(0, |r| r.delivered) as usize;
        if delivered != recipients {
            anyhow::bail!("delivered {delivered} of {recipients}");
        }
    }
    let cpu = cpu_ns(pid)? - cpu_before;
    Ok((
        percentiles(&mut samples),
        cpu as f64 / 1000.0 / SENDS as f64,
    ))
}
