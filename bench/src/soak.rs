//! `streamer-bench soak`: a steady mixed load against `dev` for a bounded
//! time — clients connecting, joining a room, sending echoes and async
//! requests, leaving and disconnecting, while a service broadcasts to the
//! tenant and the rooms — printing the process's RSS, open descriptors,
//! live tasks and error counts at each interval, and a verdict: no errors,
//! and no growth once warm.

use std::{
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use streamer_client::token::generate_rsa_key_pair;
use streamer_proto::{
    auth::BearerToken,
    v1::{self, broadcast_service_client::BroadcastServiceClient},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use crate::{ADMIN_TOKEN, DEADLINE, EDGE_TOKEN, Ws, processes::sibling, token_with};

/// Request ids, unique within a run.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Counters shared by the load tasks.
#[derive(Debug, Default)]
struct Tally {
    operations: AtomicU64,
    errors: AtomicU64,
    broadcasts: AtomicU64,
}

/// One sample of the process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    tasks: f64,
}

fn sample(pid: u32, tasks: f64) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample {
        rss_kib,
        fds,
        tasks,
    })
}

async fn metric(addr: &str, name: &str) -> f64 {
    let Ok(text) = crate::processes::http_get(&format!("http://{addr}/metrics")).await else {
        return f64::NAN;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn next_frame(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => {}
            other => bail!("the connection ended: {other:?}"),
        }
    }
}

/// Sends a frame and waits for its final answer (skipping broadcasts,
/// presence, acknowledgments and progress).
async fn ask(ws: &mut Ws, frame: Value) -> anyhow::Result<Value> {
    let id = match frame.get("request_id") {
        Some(id) => id.clone(),
        None => frame["id"].clone(),
    };
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        let answer = next_frame(ws).await?;
        let kind = answer["type"].as_str().unwrap_or_default();
        if answer["request_id"] == id && matches!(kind, "response" | "complete" | "error") {
            if kind == "error" {
                bail!("{answer}");
            }
            return Ok(answer);
        }
    }
}

/// One client's life, over and over until `stop`.
async fn client(url: String, room: String, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let life = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
            ask(&mut ws, json!({"id": "who", "action": "whoami"})).await?;
            ask(
                &mut ws,
                json!({"id": "join", "action": "join", "payload": {"group": room}}),
            )
            .await?;
            for i in 0..5 {
                let echoed = ask(
                    &mut ws,
                    json!({"id": format!("e{i}"), "action": "echo", "payload": {"i": i}}),
                )
                .await?;
                if echoed["data"]["i"] != i {
                    bail!("echo answered {echoed}");
                }
            }
            ask(
                &mut ws,
                json!({"request_id": format!("r{}", NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)), "action": "echo_async", "payload": {"round": round}}),
            )
            .await?;
            ask(
                &mut ws,
                json!({"id": "leave", "action": "leave", "payload": {"group": room}}),
            )
            .await?;
            ws.close(None).await.ok();
            anyhow::Ok(8)
        };
        match life.await {
            Ok(n) => {
                tally.operations.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: client error: {err}");
            }
        }
    }
}

async fn broadcaster(
    channel: Channel,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let mut client =
        BroadcastServiceClient::with_interceptor(channel, BearerToken::new(ADMIN_TOKEN)?);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let target = if n.is_multiple_of(2) {
            v1::send_request::Target::TenantId("soak".into())
        } else {
            v1::send_request::Target::Group(v1::GroupTarget {
                tenant_id: "soak".into(),
                group: format!("room-{}", n % 5),
            })
        };
        let sent = client
            .send(v1::SendRequest {
                target: Some(target),
                payload: Some(v1::send_request::Payload::DataJson(
                    json!({"n": n}).to_string(),
                )),
                ..Default::default()
            })
            .await;
        match sent {
            Ok(_) => tally.broadcasts.fetch_add(1, Ordering::Relaxed),
            Err(status) => {
                eprintln!("soak: broadcast error: {status}");
                tally.errors.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    Ok(())
}

/// Runs the soak for `duration` with `clients` concurrent clients; `Ok`
/// only with the verdict "pass".
pub async fn run(duration: Duration, clients: usize) -> anyhow::Result<()> {
    let keys = generate_rsa_key_pair()?;
    let state = std::env::temp_dir().join(format!("streamer-soak-{}", std::process::id()));
    let mut dev = Command::new(sibling("streamer-control-plane")?)
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("STREAMER_SOAK_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("STREAMER_STATE_DIR", &state)
        .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
        .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
        .env("STREAMER_CONSOLE_ADDR", "127.0.0.1:0")
        .env("STREAMER_METRICS_ADDR", "127.0.0.1:0")
        .env("STREAMER_JWT_PUBLIC_KEY", &keys.public_pem)
        // The benchmark mints its own tokens with neither claim, on purpose.
        .env("STREAMER_JWT_ISSUER", "any")
        .env("STREAMER_JWT_AUDIENCE", "any")
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STREAMER_MESSAGES_PER_MINUTE", "1000000")
        .env("STREAMER_MESSAGE_BURST", "100000")
        .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "0")
        .env("STREAMER_DEMO_DURATION_MS", "200")
        .env("STREAMER_PRESENCE_GROUPS", "room-*")
        .env("STREAMER_HISTORY", "group:room-*")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start dev")?;
    let mut lines = BufReader::new(dev.stdout.take().context("stdout")?).lines();
    let ready: Value = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix("STREAMER_DEV_READY ") {
                return Ok(serde_json::from_str(json)?);
            }
        }
        bail!("dev exited before it was ready")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = dev.id().context("pid")?;
    let grpc = ready["grpc"].as_str().context("grpc")?.to_owned();
    let metrics = ready["metrics"].as_str().context("metrics")?.to_owned();
    let ws = format!(
        "ws://{}/{}",
        ready["gateway"].as_str().context("gateway")?,
        ready["stage"].as_str().context("stage")?
    );
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect()
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let token = token_with(&keys.private_pem, &format!("user-{i}"), "soak", &["*"])?;
        tasks.spawn(client(
            format!("{ws}?token={token}"),
            format!("room-{}", i % 5),
            stop.clone(),
            tally.clone(),
        ));
    }
    tasks.spawn({
        let (stop, tally) = (stop.clone(), tally.clone());
        async move {
            if let Err(err) = broadcaster(channel, stop, tally.clone()).await {
                eprintln!("soak: broadcaster: {err}");
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let every = (duration / 6).clamp(Duration::from_secs(10), Duration::from_secs(30));
    println!(
        "soak: {clients} clients, broadcasts every 50 ms, {duration:?}, a sample every {every:?}"
    );
    println!("| elapsed | RSS | open fds | tasks | operations | broadcasts | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(every.min(duration.saturating_sub(started.elapsed()))).await;
        let s = sample(pid, metric(&metrics, "streamer_runtime_tasks").await)?;
        println!(
            "| {:>4.0} s | {:.1} MiB | {} | {:.0} | {} | {} | {} |",
            started.elapsed().as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.tasks,
            tally.operations.load(Ordering::Relaxed),
            tally.broadcasts.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed)
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let _ = dev.kill().await;
    let _ = std::fs::remove_dir_all(&state);

    // Warm: the first third of the run is warm-up (allocator pools, caches).
    let warm = samples[(samples.len() / 3).min(samples.len() - 1)];
    let last = *samples.last().context("no sample")?;
    let errors = tally.errors.load(Ordering::Relaxed);
    let mut problems = Vec::new();
    if errors > 0 {
        problems.push(format!("{errors} errors"));
    }
    if last.rss_kib > warm.rss_kib + warm.rss_kib / 4 + 16 * 1024 {
        problems.push(format!(
            "RSS grew from {} KiB to {} KiB after warm-up",
            warm.rss_kib, last.rss_kib
        ));
    }
    if last.fds > warm.fds + 64 {
        problems.push(format!("open fds grew from {} to {}", warm.fds, last.fds));
    }
    if last.tasks.is_finite() && warm.tasks.is_finite() && last.tasks > warm.tasks * 1.5 + 100.0 {
        problems.push(format!("tasks grew from {} to {}", warm.tasks, last.tasks));
    }
    if tally.operations.load(Ordering::Relaxed) == 0 {
        problems.push("no operation completed".into());
    }
    if problems.is_empty() {
        println!(
            "soak verdict: pass ({} operations, {} broadcasts, 0 errors; RSS {} → {} KiB, fds {} → {}, tasks {} → {} after warm-up)",
            tally.operations.load(Ordering::Relaxed),
            tally.broadcasts.load(Ordering::Relaxed),
            warm.rss_kib,
            last.rss_kib,
            warm.fds,
            last.fds,
            warm.tasks,
            last.tasks
        );
        Ok(())
    } else {
        println!("soak verdict: FAIL: {}", problems.join("; "));
        bail!("soak failed: {}", problems.join("; "))
    }
}
