//! What stream history costs and how fast a client gets back what it
//! missed: one broadcast to a 1,000-member group that keeps history against
//! the same broadcast to a group that does not (interleaved, same members),
//! and reconnect → the answer holding 100 missed messages.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use streamer_proto::{
    auth::BearerToken,
    v1::{
        self, broadcast_service_client::BroadcastServiceClient,
        group_service_client::GroupServiceClient,
    },
};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    ADMIN_TOKEN, Args, DEADLINE, Ws,
    fleet::{self, Fleet},
    processes::{Processes, cpu_ns},
    report::{Percentiles, percentiles},
};

/// Messages a client misses before each recovery.
const MISSED: usize = 100;

/// History's cost and recovery latency.
#[derive(Debug, Serialize)]
pub struct HistoryResult {
    /// Group members of the cost measurement.
    pub recipients: usize,
    /// Last-frame latency of broadcasts to a group with history.
    pub with_history: Percentiles,
    /// The same without history.
    pub without_history: Percentiles,
    /// With / without, p50 (goal: under 1.1).
    pub ratio: f64,
    /// Control-plane CPU per broadcast with history, microseconds.
    pub cpu_us_with: f64,
    /// The same without.
    pub cpu_us_without: f64,
    /// Messages missed before each recovery.
    pub missed: usize,
    /// Reconnect → the answer with every missed message (goal: p99 under 100 ms).
    pub recovery: Percentiles,
    /// Control-plane heap per retained message (embedded store), bytes.
    pub heap_bytes_per_message: f64,
    /// The JSON text of each of those messages, bytes.
    pub message_json_bytes: usize,
}

fn send_to_group(tenant: &str, group: &str, data: &Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::Group(v1::GroupTarget {
            tenant_id: tenant.into(),
            group: group.into(),
        })),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

async fn answer(ws: &mut Ws, id: &str) -> anyhow::Result<Value> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await? {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["request_id"] == id {
                    if frame["type"] != "response" {
                        bail!("{id}: {frame}");
                    }
                    return Ok(frame["data"].clone());
                }
            }
            Some(Ok(_)) => {}
            other => bail!("the connection ended: {other:?}"),
        }
    }
}

async fn join(ws: &mut Ws, payload: Value) -> anyhow::Result<Value> {
    ws.send(Message::Text(
        json!({"id": "join", "action": "join", "payload": payload})
            .to_string()
            .into(),
    ))
    .await?;
    answer(ws, "join").await
}

/// Runs both measurements; `member` and `recoverer` are client tokens of
/// tenant `tenant` (the second may join `hist-*`).
pub async fn measure(
    args: &Args,
    procs: &Processes,
    tenant: &str,
    member: &str,
    recoverer: &str,
    seq: &mut u64,
) -> anyhow::Result<HistoryResult> {
    let recipients = args.history_recipients;
    let urls = [procs.gateways[0].ws.clone()];
    let mut fleet = Fleet::open(&urls, member, recipients, args.connect_concurrency).await?;
    let channel = procs.channel().await?;
    let auth = BearerToken::new(ADMIN_TOKEN)?;
    let mut groups = GroupServiceClient::with_interceptor(channel.clone(), auth.clone());
    for group in ["hist-cost", "plain-cost"] {
        groups
            .add_to_group(v1::AddToGroupRequest {
                tenant_id: tenant.into(),
                group: group.into(),
                member: Some(v1::add_to_group_request::Member::UserId("bench".into())),
            })
            .await?;
    }
    let mut broadcast = BroadcastServiceClient::with_interceptor(channel, auth);
    let pid = procs.control_plane_pid()?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut cpu_with, mut cpu_without) = (0u64, 0u64);
    for round in 0..args.repeats * 2 {
        let history = round % 2 == 0;
        let group = if history { "hist-cost" } else { "plain-cost" };
        *seq += 1;
        let data = fleet::payload(*seq, args.payload_bytes);
        let cpu = cpu_ns(pid)?;
        let t0 = fleet::now_us();
        let sent = broadcast
            .send(send_to_group(tenant, group, &data))
            .await?
            .into_inner();
        let report = sent.report.context("report")?;
        if report.delivered as usize != recipients || sent.position.is_some() != history {
            bail!(
                "broadcast to {group}: {report:?}, position {:?}",
                sent.position
            );
        }
        let (_, last) = fleet.collect(*seq, t0).await?;
        let spent = cpu_ns(pid)? - cpu;
        if history {
            with.push(last);
            cpu_with += spent;
        } else {
            without.push(last);
            cpu_without += spent;
        }
    }
    fleet.close().await;
    let with_history = percentiles(&mut with);
    let without_history = percentiles(&mut without);

    let mut recoveries: Vec<Duration> = Vec::with_capacity(args.recoveries);
    let url = format!("{}?token={recoverer}", procs.gateways[0].ws);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let mut position = join(&mut ws, json!({"group": "hist-recovery"})).await?;
    for _ in 0..args.recoveries {
        ws.close(None).await.ok();
        for i in 0..MISSED {
            broadcast
                .send(send_to_group(
                    tenant,
                    "hist-recovery",
                    &json!({"missed": i}),
                ))
                .await?;
        }
        let started = Instant::now();
        let (mut again, _) = tokio_tungstenite::connect_async(&url).await?;
        let recovered = join(
            &mut again,
            json!({"group": "hist-recovery", "since": position["offset"], "epoch": position["epoch"]}),
        )
        .await?;
        recoveries.push(started.elapsed());
        let got = recovered["messages"].as_array().map_or(0, Vec::len);
        if recovered["recovered"] != true || got != MISSED {
            bail!("recovered {got} of {MISSED}: {}", recovered["recovered"]);
        }
        position = recovered;
        ws = again;
    }
    // What the embedded history holds per retained message.
    let retained = 1000;
    let heap_before = procs.metric("streamer_heap_bytes").await?;
    let sample = fleet::payload(0, args.payload_bytes);
    for i in 0..retained {
        let mut data = sample.clone();
        data["seq"] = i.into();
        broadcast
            .send(send_to_group(tenant, "hist-retained", &data))
            .await?;
    }
    let heap_bytes_per_message =
        (procs.metric("streamer_heap_bytes").await? - heap_before) / f64::from(retained);
    let per = |ns: u64| ns as f64 / 1000.0 / args.repeats.max(1) as f64;
    Ok(HistoryResult {
        recipients,
        ratio: with_history.p50_ms / without_history.p50_ms.max(0.001),
        with_history,
        without_history,
        cpu_us_with: per(cpu_with),
        cpu_us_without: per(cpu_without),
        missed: MISSED,
        recovery: percentiles(&mut recoveries),
        heap_bytes_per_message,
        message_json_bytes: sample.to_string().len(),
    })
}
