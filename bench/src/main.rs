//! `streamer-bench`: measures the real system on this machine.
//!
//! It starts `streamer-control-plane serve` (embedded store) and
//! `streamer-gateway` (the API Gateway emulator) as separate processes from
//! the same target directory, drives them with real WebSocket clients and
//! real gRPC calls, and prints one table: connect rate, sync round trip,
//! broadcast fan-out with two baselines measured in the same run, and the
//! control plane's resident memory per idle connection. Bounded in time; the
//! processes it starts are killed when it ends.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use streamer_client::token::{Claims, generate_rsa_key_pair, mint_rs256};
use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, broadcast_service_client::BroadcastServiceClient,
        connection_service_client::ConnectionServiceClient, edge_service_client::EdgeServiceClient,
    },
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

const EDGE_TOKEN: &str = "bench-edge-token-0123456789";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// Longest any single wait may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "streamer-bench",
    about = "Benchmark the Streamer control plane and gateway emulator"
)]
struct Args {
    /// Connections opened for the connect-rate measurement (and the first broadcast size).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Broadcast tenant sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    broadcast_sizes: Vec<usize>,
    /// Broadcasts per size.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Connections sending echo requests concurrently.
    #[arg(long, default_value_t = 32)]
    echo_connections: usize,
    /// Seconds each throughput measurement runs.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Payload bytes in echo requests and broadcast frames.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Management API calls in flight (control plane and baseline a).
    #[arg(long, default_value_t = 256)]
    delivery_concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
struct Percentiles {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn percentiles(samples: &mut [Duration]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    Percentiles {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

#[derive(Debug, Serialize)]
struct ConnectResult {
    connections: usize,
    connects_per_sec: f64,
    latency: Percentiles,
}

#[derive(Debug, Serialize)]
struct EchoResult {
    connections: usize,
    requests_per_sec: f64,
    end_to_end: Percentiles,
    control_plane_route: Percentiles,
}

#[derive(Debug, Serialize, Clone, Copy)]
struct FanOut {
    first_frame: Percentiles,
    last_frame: Percentiles,
    delivered_min: usize,
}

#[derive(Debug, Serialize)]
struct BroadcastResult {
    recipients: usize,
    streamer: FanOut,
    baseline_http: FanOut,
    baseline_websocket: FanOut,
    ratio_to_http: f64,
    ratio_to_websocket: f64,
}

#[derive(Debug, Serialize)]
struct MemoryResult {
    connections: usize,
    control_plane_rss_before_kib: u64,
    control_plane_rss_after_kib: u64,
    bytes_per_connection: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    connect: ConnectResult,
    echo: EchoResult,
    broadcast: Vec<BroadcastResult>,
    memory: Vec<MemoryResult>,
}

struct Processes {
    control_plane: Child,
    gateway: Child,
    grpc: String,
    ws: String,
    management: String,
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(args: &Args, public_pem: &str) -> anyhow::Result<Processes> {
    let grpc_port = free_port()?;
    let grpc = format!("127.0.0.1:{grpc_port}");
    let control_plane = Command::new(sibling("streamer-control-plane")?)
        .arg("serve")
        .env("STREAMER_GRPC_ADDR", &grpc)
        .env("STREAMER_JWT_PUBLIC_KEY", public_pem)
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
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start the control plane")?;
    // Ready when health answers.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let channel = Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await;
        if let Ok(channel) = channel {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
            {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the control plane did not become healthy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut gateway = Command::new(sibling("streamer-gateway")?)
        .env("STREAMER_CONTROL_PLANE_URL", format!("http://{grpc}"))
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
        // The bench measures the machinery, not AWS's account throttles; the
        // floor client is unsigned, so the emulator checks no signatures for
        // either side.
        .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "0")
        .env("STREAMER_GATEWAY_MANAGEMENT_RPS", "0")
        .env("STREAMER_GATEWAY_VERIFY_SIGNATURES", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the gateway")?;
    let mut lines = BufReader::new(gateway.stdout.take().context("stdout")?).lines();
    let ready: Value = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(json) = line.strip_prefix("STREAMER_GATEWAY_READY ") {
                return Ok(serde_json::from_str(json)?);
            }
        }
        bail!("gateway exited before it was ready")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = ready["gateway"]
        .as_str()
        .context("gateway addr")?
        .to_owned();
    let stage = ready["stage"].as_str().context("stage")?.to_owned();
    Ok(Processes {
        control_plane,
        gateway,
        grpc,
        ws: format!("ws://{addr}/{stage}"),
        management: format!("http://{addr}/{stage}"),
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Arrival of broadcast `seq` at some client.
type Arrival = (u64, Instant);

struct Fleet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    closers: Vec<mpsc::Sender<()>>,
}

/// Opens `n` connections for `tenant`; returns their connect latencies and
/// a fleet of reader tasks that report broadcast arrivals.
async fn open_fleet(
    url: &str,
    token: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Fleet, Vec<Duration>, Duration)> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Ws, Duration)>> = stream::iter(0..n)
        .map(|_| {
            let url = format!("{url}?token={token}");
            async move {
                let t = Instant::now();
                let (ws, _) =
                    tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url)).await??;
                Ok((ws, t.elapsed()))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let (tx, arrivals) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    let mut closers = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    for result in results {
        let (mut ws, latency) = result?;
        latencies.push(latency);
        let tx = tx.clone();
        let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
        closers.push(close_tx);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            let now = Instant::now();
                            if let Ok(value) = serde_json::from_str::<Value>(&text)
                                && let Some(seq) = value["data"]["seq"].as_u64().or_else(|| value["seq"].as_u64())
                            {
                                let _ = tx.send((seq, now));
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = close_rx.recv() => {
                        let _ = ws.close(None).await;
                        break;
                    }
                }
            }
        }));
    }
    Ok((
        Fleet {
            tasks,
            arrivals,
            closers,
        },
        latencies,
        elapsed,
    ))
}

impl Fleet {
    async fn close(self) {
        for closer in &self.closers {
            let _ = closer.send(()).await;
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits for `n` arrivals of `seq`; first and last arrival after `t0`.
    async fn collect(
        &mut self,
        seq: u64,
        n: usize,
        t0: Instant,
    ) -> anyhow::Result<(Duration, Duration, usize)> {
        let mut first = None;
        let mut last = t0;
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while got < n {
            match tokio::time::timeout_at(deadline, self.arrivals.recv()).await {
                Ok(Some((s, at))) if s == seq => {
                    got += 1;
                    first.get_or_insert(at);
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let first = first.map_or(Duration::ZERO, |f| f.duration_since(t0));
        Ok((first, last.duration_since(t0), got))
    }
}

fn token(keys_private: &str, sub: &str, tenant: &str) -> anyhow::Result<String> {
    Ok(mint_rs256(
        keys_private,
        &Claims::new(sub, tenant, &[], 3600),
    )?)
}

fn frame_payload(seq: u64, payload_bytes: usize) -> Value {
    json!({ "seq": seq, "pad": "x".repeat(payload_bytes) })
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn http_post(http: &Http, url: &str, body: Bytes) -> anyhow::Result<u16> {
    let request = http::Request::post(url)
        // The emulator only checks that a SigV4 header is present; the
        // baseline skips the signing cost on purpose (it is the floor).
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/execute-api/aws4_request",
        )
        .body(Full::new(body))?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

async fn list_ids(channel: Channel, tenant: &str) -> anyhow::Result<Vec<String>> {
    let mut client =
        ConnectionServiceClient::with_interceptor(channel, BearerToken::new(ADMIN_TOKEN)?);
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_connections(v1::ListConnectionsRequest {
                tenant_id: tenant.into(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(page.connections.into_iter().map(|c| c.connection_id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

fn fan_out(firsts: &mut [Duration], lasts: &mut [Duration], delivered_min: usize) -> FanOut {
    FanOut {
        first_frame: percentiles(firsts),
        last_frame: percentiles(lasts),
        delivered_min,
    }
}

async fn broadcast_size(
    args: &Args,
    procs: &Processes,
    private_pem: &str,
    n: usize,
    seq: &mut u64,
) -> anyhow::Result<(BroadcastResult, MemoryResult, Option<ConnectResult>, Fleet)> {
    let tenant = format!("bench-{n}");
    let rss_before = rss_kib(procs.control_plane.id().context("pid")?)?;
    let (mut fleet, mut latencies, elapsed) = open_fleet(
        &procs.ws,
        &token(private_pem, "u", &tenant)?,
        n,
        args.connect_concurrency,
    )
    .await?;
    let connect = ConnectResult {
        connections: n,
        connects_per_sec: n as f64 / elapsed.as_secs_f64(),
        latency: percentiles(&mut latencies),
    };
    let channel = Channel::from_shared(format!("http://{}", procs.grpc))?
        .connect()
        .await?;
    // Let registrations settle, then read the idle footprint.
    let ids = list_ids(channel.clone(), &tenant).await?;
    if ids.len() != n {
        bail!("registry has {} of {n} connections", ids.len());
    }
    let rss_after = rss_kib(procs.control_plane.id().context("pid")?)?;
    let memory = MemoryResult {
        connections: n,
        control_plane_rss_before_kib: rss_before,
        control_plane_rss_after_kib: rss_after,
        bytes_per_connection: (rss_after.saturating_sub(rss_before) * 1024) as f64 / n as f64,
    };

    let mut broadcast =
        BroadcastServiceClient::with_interceptor(channel.clone(), BearerToken::new(ADMIN_TOKEN)?);
    let (mut sf, mut sl, mut smin) = (Vec::new(), Vec::new(), usize::MAX);
    for _ in 0..args.repeats {
        *seq += 1;
        let t0 = Instant::now();
        let report = broadcast
            .send(v1::SendRequest {
                target: Some(v1::send_request::Target::TenantId(tenant.clone())),
                payload: Some(v1::send_request::Payload::DataJson(
                    frame_payload(*seq, args.payload_bytes).to_string(),
                )),
                ..Default::default()
            })
            .await?
            .into_inner()
            .report
            .context("report")?;
        if report.delivered as usize != n {
            bail!(
                "broadcast delivered {} of {n}: {report:?}",
                report.delivered
            );
        }
        let (first, last, got) = fleet.collect(*seq, n, t0).await?;
        sf.push(first);
        sl.push(last);
        smin = smin.min(got);
    }

    // Baseline (a): a bare HTTP client posting the same frames to the
    // Management API with the same concurrency.
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(args.delivery_concurrency)
            .build_http();
    let (mut af, mut al, mut amin) = (Vec::new(), Vec::new(), usize::MAX);
    for _ in 0..args.repeats {
        *seq += 1;
        let frame = Bytes::from(
            json!({"type": "message", "data": frame_payload(*seq, args.payload_bytes)}).to_string(),
        );
        let t0 = Instant::now();
        let ok = stream::iter(ids.iter())
            .map(|id| {
                let url = format!("{}/@connections/{id}", procs.management);
                let http = http.clone();
                let frame = frame.clone();
                async move { http_post(&http, &url, frame).await }
            })
            .buffer_unordered(args.delivery_concurrency)
            .filter(|r| std::future::ready(matches!(r, Ok(200))))
            .count()
            .await;
        if ok != n {
            bail!("baseline http delivered {ok} of {n}");
        }
        let (first, last, got) = fleet.collect(*seq, n, t0).await?;
        af.push(first);
        al.push(last);
        amin = amin.min(got);
    }

    // Baseline (b): the emulator writing straight to its sockets.
    let (mut wf, mut wl, mut wmin) = (Vec::new(), Vec::new(), usize::MAX);
    for _ in 0..args.repeats {
        *seq += 1;
        let frame = Bytes::from(
            json!({"type": "message", "data": frame_payload(*seq, args.payload_bytes)}).to_string(),
        );
        let t0 = Instant::now();
        http_post(
            &http,
            &format!("{}/@local/broadcast", procs.management),
            frame,
        )
        .await?;
        let (first, last, got) = fleet.collect(*seq, n, t0).await?;
        wf.push(first);
        wl.push(last);
        wmin = wmin.min(got);
    }
    let streamer = fan_out(&mut sf, &mut sl, smin);
    let baseline_http = fan_out(&mut af, &mut al, amin);
    let baseline_websocket = fan_out(&mut wf, &mut wl, wmin);
    let result = BroadcastResult {
        recipients: n,
        ratio_to_http: streamer.last_frame.p50_ms / baseline_http.last_frame.p50_ms.max(0.001),
        ratio_to_websocket: streamer.last_frame.p50_ms
            / baseline_websocket.last_frame.p50_ms.max(0.001),
        streamer,
        baseline_http,
        baseline_websocket,
    };
    Ok((result, memory, Some(connect), fleet))
}

async fn echo(args: &Args, procs: &Processes, private_pem: &str) -> anyhow::Result<EchoResult> {
    let token = token(private_pem, "echo-user", "bench-echo")?;
    let mut sockets = Vec::new();
    for _ in 0..args.echo_connections {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("{}?token={token}", procs.ws)).await?;
        sockets.push(ws);
    }
    let payload = "x".repeat(args.payload_bytes);
    let duration = Duration::from_secs(args.duration);
    // Warm up, and learn one connection id for the control-plane-only run.
    let mut conn_id = String::new();
    for ws in sockets.iter_mut() {
        ws.send(Message::Text(r#"{"id":"w","action":"whoami"}"#.into()))
            .await?;
        let reply = next_text(ws).await?;
        conn_id = reply["data"]["connection_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = 0u64;
                while started.elapsed() < duration {
                    i += 1;
                    let frame =
                        json!({"id": format!("e{i}"), "action": "echo", "payload": payload})
                            .to_string();
                    let t = Instant::now();
                    if ws.send(Message::Text(frame.into())).await.is_err() {
                        break;
                    }
                    match next_text(&mut ws).await {
                        Ok(reply) if reply["type"] == "response" => samples.push(t.elapsed()),
                        _ => break,
                    }
                }
                let _ = ws.close(None).await;
                samples
            })
        })
        .collect();
    let mut end_to_end = Vec::new();
    for task in tasks {
        end_to_end.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let requests = end_to_end.len();

    // The control plane's share: the same Route calls over gRPC directly.
    let channel = Channel::from_shared(format!("http://{}", procs.grpc))?
        .connect()
        .await?;
    let body = json!({"id": "cp", "action": "echo", "payload": payload}).to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.echo_connections)
        .map(|_| {
            let mut edge = EdgeServiceClient::with_interceptor(
                channel.clone(),
                BearerToken::new(EDGE_TOKEN).expect("token"),
            );
            let body = body.clone();
            let conn_id = conn_id.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let request = v1::RouteRequest {
                        connection_id: conn_id.clone(),
                        body: body.clone(),
                        ..Default::default()
                    };
                    match edge.route(request).await {
                        Ok(_) => samples.push(t.elapsed()),
                        Err(_) => break,
                    }
                }
                samples
            })
        })
        .collect();
    let mut route = Vec::new();
    for task in tasks {
        route.extend(task.await?);
    }
    Ok(EchoResult {
        connections: args.echo_connections,
        requests_per_sec: requests as f64 / elapsed.as_secs_f64(),
        end_to_end: percentiles(&mut end_to_end),
        control_plane_route: percentiles(&mut route),
    })
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => continue,
            other => bail!("connection ended: {other:?}"),
        }
    }
}

fn print_table(report: &Report) {
    let p = |p: &Percentiles| format!("p50 {:.2} ms, p99 {:.2} ms", p.p50_ms, p.p99_ms);
    println!("streamer-bench (release build, this machine)");
    println!();
    println!("| measurement | result |");
    println!("| --- | --- |");
    println!(
        "| connect, {} clients | {:.0} connects/s; latency {} |",
        report.connect.connections,
        report.connect.connects_per_sec,
        p(&report.connect.latency)
    );
    let e = &report.echo;
    println!(
        "| sync echo, {} connections | {:.0} req/s; end to end {}, p99.9 {:.2} ms |",
        e.connections,
        e.requests_per_sec,
        p(&e.end_to_end),
        e.end_to_end.p999_ms
    );
    println!(
        "| control-plane share (gRPC Route only) | {} |",
        p(&e.control_plane_route)
    );
    for b in &report.broadcast {
        println!(
            "| broadcast to {}: Streamer | first frame p50 {:.1} ms; last frame {}; delivered {} |",
            b.recipients,
            b.streamer.first_frame.p50_ms,
            p(&b.streamer.last_frame),
            b.streamer.delivered_min
        );
        println!(
            "| broadcast to {}: baseline (a) bare HTTP to the Management API | last frame {} |",
            b.recipients,
            p(&b.baseline_http.last_frame)
        );
        println!(
            "| broadcast to {}: baseline (b) emulator writes its sockets | last frame {} |",
            b.recipients,
            p(&b.baseline_websocket.last_frame)
        );
        println!(
            "| broadcast to {}: ratio (last frame p50) | {:.2}x baseline (a), {:.2}x baseline (b) |",
            b.recipients, b.ratio_to_http, b.ratio_to_websocket
        );
    }
    for m in &report.memory {
        println!(
            "| control-plane memory, {} idle connections | {:.0} bytes per connection (RSS {} -> {} KiB) |",
            m.connections,
            m.bytes_per_connection,
            m.control_plane_rss_before_kib,
            m.control_plane_rss_after_kib
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let keys = generate_rsa_key_pair()?;
    let procs = start(&args, &keys.public_pem).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(600),
        run(&args, &procs, &keys.private_pem),
    )
    .await;
    let mut procs = procs;
    let _ = procs.gateway.kill().await;
    let _ = procs.control_plane.kill().await;
    let report = result.context("the benchmark did not finish within 10 minutes")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn run(args: &Args, procs: &Processes, private_pem: &str) -> anyhow::Result<Report> {
    let echo = echo(args, procs, private_pem).await?;
    let mut seq = 0;
    let mut broadcast = Vec::new();
    let mut memory = Vec::new();
    let mut connect = None;
    let mut sizes: Vec<usize> = args.broadcast_sizes.clone();
    if !sizes.contains(&args.connections) {
        sizes.insert(0, args.connections);
    }
    let mut seen: HashMap<usize, ()> = HashMap::new();
    for n in sizes {
        if seen.insert(n, ()).is_some() {
            continue;
        }
        let (result, mem, conn, fleet) =
            broadcast_size(args, procs, private_pem, n, &mut seq).await?;
        if n == args.connections {
            connect = conn;
        }
        if args.broadcast_sizes.contains(&n) {
            broadcast.push(result);
        }
        memory.push(mem);
        fleet.close().await;
    }
    let connect = connect.context("no connect measurement")?;
    // The first fleet also warms the allocator's caches (its RSS delta is
    // mostly that), so with several sizes only the later ones are reported.
    if memory.len() > 1 {
        memory.remove(0);
    }
    Ok(Report {
        connect,
        echo,
        broadcast,
        memory,
    })
}
