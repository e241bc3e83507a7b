//! The measurements: connect rate, synchronous round trips, broadcast
//! fan-out against the floors, CPU per recipient, heap per connection.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, broadcast_service_client::BroadcastServiceClient,
        connection_service_client::ConnectionServiceClient, edge_service_client::EdgeServiceClient,
    },
};
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::Channel;

use crate::{
    ADMIN_TOKEN, Args, DEADLINE, EDGE_TOKEN, Ws, baselines,
    fleet::{self, Fleet},
    processes::{Processes, cpu_ns},
    report::{BroadcastResult, EchoResult, FanOut, MemoryResult, percentiles},
};

/// Opens `n` connections to `url` from this process; latencies and the
/// time it took.
pub async fn connect_here(
    url: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<Ws>, Vec<Duration>, Duration)> {
    let started = Instant::now();
    let opened: Vec<anyhow::Result<(Ws, Duration)>> = stream::iter(0..n)
        .map(|_| async move {
            let t = Instant::now();
            let (ws, _) =
                tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url)).await??;
            Ok((ws, t.elapsed()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut sockets = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    for result in opened {
        let (ws, latency) = result?;
        sockets.push(ws);
        latencies.push(latency);
    }
    Ok((sockets, latencies, elapsed))
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(_)) => continue,
            other => bail!("connection ended: {other:?}"),
        }
    }
}

/// Round trips on every socket for `duration`: the samples and the rate.
pub async fn round_trips(
    sockets: Vec<Ws>,
    duration: Duration,
    frame: impl Fn(u64) -> String + Clone + Send + 'static,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let frame = frame.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = 0u64;
                while started.elapsed() < duration {
                    i += 1;
                    let t = Instant::now();
                    if ws.send(Message::Text(frame(i).into())).await.is_err() {
                        break;
                    }
                    match next_text(&mut ws).await {
                        Ok(_) => samples.push(t.elapsed()),
                        Err(_) => break,
                    }
                }
                let _ = ws.close(None).await;
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    Ok((samples, rate))
}

/// Echo through Streamer and through the bare echo server.
pub async fn echo(
    args: &Args,
    procs: &Processes,
    token: &str,
    bare_url: &str,
) -> anyhow::Result<EchoResult> {
    let url = format!("{}?token={token}", procs.gateways[0].ws);
    let (mut sockets, _, _) =
        connect_here(&url, args.echo_connections, args.echo_connections).await?;
    let payload = "x".repeat(args.payload_bytes);
    let duration = Duration::from_secs(args.duration);
    // Warm up, and learn one connection id for the control-plane-only run.
    let mut conn_id = String::new();
    for ws in sockets.iter_mut() {
        ws.send(Message::Text(r#"{"id":"w","action":"whoami"}"#.into()))
            .await?;
        let reply: Value = serde_json::from_str(&next_text(ws).await?)?;
        conn_id = reply["data"]["connection_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    let streamer_payload = payload.clone();
    let (mut end_to_end, rate) = round_trips(sockets, duration, move |i| {
        json!({"id": format!("e{i}"), "action": "echo", "payload": streamer_payload}).to_string()
    })
    .await?;

    // The control plane's share: the same Route calls over gRPC directly.
    let channel = procs.channel().await?;
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

    // The floor: a bare WebSocket echo of the same frame.
    let (bare_sockets, _, _) =
        connect_here(bare_url, args.echo_connections, args.echo_connections).await?;
    let bare_payload = payload.clone();
    let (mut bare, bare_rate) = round_trips(bare_sockets, duration, move |i| {
        json!({"id": format!("e{i}"), "action": "echo", "payload": bare_payload}).to_string()
    })
    .await?;
    let end_to_end = percentiles(&mut end_to_end);
    let bare = percentiles(&mut bare);
    Ok(EchoResult {
        connections: args.echo_connections,
        requests_per_sec: rate,
        ratio_p99: end_to_end.p99_ms / bare.p99_ms.max(0.001),
        end_to_end,
        control_plane_route: percentiles(&mut route),
        bare_requests_per_sec: bare_rate,
        bare,
    })
}

/// Every (endpoint, connection id) of `tenant`.
async fn targets(channel: Channel, tenant: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut client =
        ConnectionServiceClient::with_interceptor(channel, BearerToken::new(ADMIN_TOKEN)?);
    let mut out = Vec::new();
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
        out.extend(
            page.connections
                .into_iter()
                .map(|c| (c.endpoint, c.connection_id)),
        );
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

fn fan_out(firsts: &mut [Duration], lasts: &mut [Duration]) -> FanOut {
    FanOut {
        first_frame: percentiles(firsts),
        last_frame: percentiles(lasts),
    }
}

fn self_cpu_ns() -> u64 {
    cpu_ns(std::process::id()).unwrap_or(0)
}

/// Broadcasts to `fleet` (tenant `tenant`, already connected) through
/// Streamer and through both floors, `args.repeats` times each.
pub async fn broadcast(
    args: &Args,
    procs: &Processes,
    fleet: &mut Fleet,
    tenant: &str,
    seq: &mut u64,
) -> anyhow::Result<BroadcastResult> {
    let n = fleet.size();
    let channel = procs.channel().await?;
    let targets = targets(channel.clone(), tenant).await?;
    if targets.len() != n {
        bail!("the registry has {} of {n} connections", targets.len());
    }
    let mut client =
        BroadcastServiceClient::with_interceptor(channel, BearerToken::new(ADMIN_TOKEN)?);
    let pid = procs.control_plane_pid()?;
    // Each path's first broadcast warms it (connections, caches, a
    // gateway's capabilities) and is not counted: the figures are the
    // steady state's, for Streamer and both floors alike.
    let (mut sf, mut sl) = (Vec::new(), Vec::new());
    let mut cpu_before = cpu_ns(pid)?;
    for round in 0..=args.repeats {
        if round == 1 {
            cpu_before = cpu_ns(pid)?;
        }
        *seq += 1;
        let t0 = fleet::now_us();
        let report = client
            .send(v1::SendRequest {
                target: Some(v1::send_request::Target::TenantId(tenant.to_owned())),
                payload: Some(v1::send_request::Payload::DataJson(
                    fleet::payload(*seq, args.payload_bytes).to_string(),
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
        let (first, last) = fleet.collect(*seq, t0).await?;
        if round > 0 {
            sf.push(first);
            sl.push(last);
        }
    }
    let cp_cpu = cpu_ns(pid)? - cpu_before;

    let http = baselines::http(args.delivery_concurrency);
    let (mut af, mut al) = (Vec::new(), Vec::new());
    let mut floor_before = self_cpu_ns();
    for round in 0..=args.repeats {
        if round == 1 {
            floor_before = self_cpu_ns();
        }
        *seq += 1;
        let frame = Bytes::from(
            json!({"type": "message", "data": fleet::payload(*seq, args.payload_bytes)})
                .to_string(),
        );
        let t0 = fleet::now_us();
        let ok = baselines::post_to_all(&http, &targets, frame, args.delivery_concurrency).await;
        if ok != n {
            bail!("the floor client delivered {ok} of {n}");
        }
        let (first, last) = fleet.collect(*seq, t0).await?;
        if round > 0 {
            af.push(first);
            al.push(last);
        }
    }
    let floor_cpu = self_cpu_ns() - floor_before;

    let (mut wf, mut wl) = (Vec::new(), Vec::new());
    for round in 0..=args.repeats {
        *seq += 1;
        let frame = Bytes::from(
            json!({"type": "message", "data": fleet::payload(*seq, args.payload_bytes)})
                .to_string(),
        );
        let t0 = fleet::now_us();
        for gateway in &procs.gateways {
            baselines::post(
                &http,
                &format!("{}/@local/broadcast", gateway.management),
                frame.clone(),
            )
            .await?;
        }
        let (first, last) = fleet.collect(*seq, t0).await?;
        if round > 0 {
            wf.push(first);
            wl.push(last);
        }
    }
    let streamer = fan_out(&mut sf, &mut sl);
    let baseline_http = fan_out(&mut af, &mut al);
    let baseline_websocket = fan_out(&mut wf, &mut wl);
    let per_recipient = |ns: u64| ns as f64 / 1000.0 / (n * args.repeats) as f64;
    Ok(BroadcastResult {
        recipients: n,
        gateways: procs
            .gateways
            .len()
            .min(n.div_ceil(crate::processes::PER_PROCESS)),
        ratio_to_http: streamer.last_frame.p50_ms / baseline_http.last_frame.p50_ms.max(0.001),
        ratio_to_websocket: streamer.last_frame.p50_ms
            / baseline_websocket.last_frame.p50_ms.max(0.001),
        control_plane_cpu_us_per_recipient: per_recipient(cp_cpu),
        floor_cpu_us_per_recipient: per_recipient(floor_cpu),
        streamer,
        baseline_http,
        baseline_websocket,
    })
}

/// Heap per connection: the heap with `fleet` connected, minus the heap
/// before it connected, divided by its size (both processes count their
/// allocations, so allocator growth and page caches do not enter).
pub struct HeapBefore {
    control_plane: f64,
    gateways: Vec<f64>,
}

/// Waits until the control plane has forgotten every connection of
/// `tenant` (their `$disconnect` events are processed after the sockets
/// close), so the next heap reading does not see them being freed.
pub async fn until_gone(procs: &Processes, tenant: &str) -> anyhow::Result<()> {
    let mut client = ConnectionServiceClient::with_interceptor(
        procs.channel().await?,
        BearerToken::new(ADMIN_TOKEN)?,
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let count = client
            .count_connections(v1::CountConnectionsRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .count;
        if count == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{count} connections of {tenant} still registered after the fleet closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The heap of every process before a fleet connects.
pub async fn heap_before(procs: &Processes) -> anyhow::Result<HeapBefore> {
    let mut gateways = Vec::new();
    for i in 0..procs.gateways.len() {
        gateways.push(procs.gateway_heap(i).await?);
    }
    Ok(HeapBefore {
        control_plane: procs.metric("streamer_heap_bytes").await?,
        gateways,
    })
}

/// Heap per connection once `n` connections are idle.
pub async fn heap_after(
    procs: &Processes,
    before: &HeapBefore,
    n: usize,
) -> anyhow::Result<MemoryResult> {
    let control_plane = procs.metric("streamer_heap_bytes").await? - before.control_plane;
    let mut gateways = 0.0;
    for (i, was) in before.gateways.iter().enumerate() {
        gateways += procs.gateway_heap(i).await? - was;
    }
    Ok(MemoryResult {
        connections: n,
        control_plane_bytes_per_connection: control_plane / n as f64,
        gateway_bytes_per_connection: gateways / n as f64,
    })
}
