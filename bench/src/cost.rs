//! `streamer-bench cost`: what a month of three workloads costs on AWS, three
//! ways — Streamer behind API Gateway with its edge Lambdas, Streamer's own
//! gateways on Fargate behind a Network Load Balancer, and the Go system's
//! all-Lambda design (four Lambdas over DynamoDB) — from this machine's
//! measured CPU per operation and AWS's public prices (docs/cost.md names
//! each price's page and the date it was read).
//!
//! Measured here, on the real processes: control-plane and gateway CPU per
//! connect, per routed client message (echo), per broadcast recipient on the
//! per-POST path and on the batched one, the gateway's heap per idle
//! connection, and the edge call's latency (the edge Lambda's billed
//! duration). Modelled, and printed as assumptions: what the Go design's
//! Lambdas spend per call (it is not here to measure), DynamoDB request
//! units per operation, and the provisioning rules (tasks at 50% CPU, two
//! of each at least).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use streamer_client::token::generate_rsa_key_pair;
use streamer_proto::{
    auth::BearerToken,
    v1::{self, broadcast_service_client::BroadcastServiceClient},
};

use crate::{
    ADMIN_TOKEN, Args,
    keys::Listeners,
    processes::{Processes, cpu_ns},
    report::percentiles,
    scenarios, token,
};

/// AWS's public prices, us-east-1 (docs/cost.md: where and when read).
mod price {
    /// API Gateway WebSocket: per million messages, first billion / beyond.
    pub const APIGW_MESSAGES_PER_M: f64 = 1.00;
    pub const APIGW_MESSAGES_PER_M_OVER_1B: f64 = 0.80;
    /// API Gateway WebSocket: per million connection minutes.
    pub const APIGW_CONNECTION_MINUTES_PER_M: f64 = 0.25;
    /// Lambda: per million requests; per GB-second (arm64).
    pub const LAMBDA_REQUESTS_PER_M: f64 = 0.20;
    pub const LAMBDA_GB_SECOND_ARM: f64 = 0.000_013_333_4;
    /// Fargate (Linux, arm64): per vCPU-hour, per GB-hour.
    pub const FARGATE_VCPU_HOUR: f64 = 0.032_38;
    pub const FARGATE_GB_HOUR: f64 = 0.003_56;
    /// Network Load Balancer: per hour, per NLCU-hour.
    pub const NLB_HOUR: f64 = 0.0225;
    pub const NLCU_HOUR: f64 = 0.006;
    /// DynamoDB on demand: per million write / read request units.
    pub const DYNAMODB_WRU_PER_M: f64 = 0.625;
    pub const DYNAMODB_RRU_PER_M: f64 = 0.125;
}

const HOURS_PER_MONTH: f64 = 730.0;
const SECONDS_PER_MONTH: f64 = HOURS_PER_MONTH * 3600.0;

/// What was measured on this machine, per operation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Measured {
    /// CPU microseconds per connect (and its disconnect): control plane, gateway.
    pub connect_us: (f64, f64),
    /// CPU microseconds per routed client message: control plane, gateway.
    pub message_us: (f64, f64),
    /// CPU microseconds per broadcast recipient, per-POST path: control plane, gateway.
    pub recipient_post_us: (f64, f64),
    /// CPU microseconds per broadcast recipient, batched path: control plane, gateway.
    pub recipient_batched_us: (f64, f64),
    /// The gateway's heap per idle connection, bytes.
    pub gateway_bytes_per_connection: f64,
    /// Connect and echo latency p50, ms: the edge Lambdas' billed durations.
    pub connect_ms: f64,
    pub message_ms: f64,
}

/// A month of one workload.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    pub name: &'static str,
    /// Connections open at once, on average.
    pub concurrent: f64,
    /// How long a connection lasts, hours.
    pub connection_hours: f64,
    /// Client messages routed per month.
    pub messages: f64,
    /// Frames delivered per month (every recipient of every send, replies
    /// and progress included).
    pub deliveries: f64,
    /// Sends (broadcasts) per month, each one query of its recipients.
    pub sends: f64,
    /// Recipients per send.
    pub recipients_per_send: f64,
}

impl Workload {
    fn connects(&self) -> f64 {
        self.concurrent * HOURS_PER_MONTH / self.connection_hours
    }
}

/// The three workloads of docs/cost.md.
pub fn workloads() -> [Workload; 3] {
    let month_minutes = HOURS_PER_MONTH * 60.0;
    let month_seconds = SECONDS_PER_MONTH;
    [
        // Chat: 10,000 people online, each sending a message a minute to a
        // room of 10 (the sender's reply included), an hour per session.
        Workload {
            name: "chat",
            concurrent: 10_000.0,
            connection_hours: 1.0,
            messages: 10_000.0 * month_minutes,
            deliveries: 10_000.0 * month_minutes * 11.0,
            sends: 10_000.0 * month_minutes,
            recipients_per_send: 10.0,
        },
        // Dashboard: 10,000 subscribers of one tenant, one update a second
        // from a service, 8-hour sessions (the 864 million a day).
        Workload {
            name: "dashboard",
            concurrent: 10_000.0,
            connection_hours: 8.0,
            messages: 0.0,
            deliveries: 10_000.0 * month_seconds,
            sends: month_seconds,
            recipients_per_send: 10_000.0,
        },
        // Async jobs: 1,000 clients each starting a job every 5 minutes,
        // 20 progress frames and the result each, 2-hour sessions.
        Workload {
            name: "async jobs",
            concurrent: 1_000.0,
            connection_hours: 2.0,
            messages: 1_000.0 * month_minutes / 5.0,
            deliveries: 1_000.0 * month_minutes / 5.0 * 22.0,
            sends: 1_000.0 * month_minutes / 5.0 * 22.0,
            recipients_per_send: 1.0,
        },
    ]
}

/// Modelled, not measured: printed with the table.
mod assume {
    /// Registry writes per connect and per disconnect (the item and its
    /// tenant and user index entries), WRU.
    pub const WRU_PER_CONNECT: f64 = 3.0;
    pub const WRU_PER_DISCONNECT: f64 = 3.0;
    /// A send's recipient query: ~400 B per row, eventually consistent
    /// (half a unit per 4 KB).
    pub const RRU_PER_RECIPIENT: f64 = 400.0 / 4096.0 * 0.5;
    /// The Go design reads the sender's row on every message.
    pub const GO_RRU_PER_MESSAGE: f64 = 0.5;
    /// The Go design's Lambdas (256 MB): billed ms per connect / disconnect
    /// (JWT check and the write), per message (a read, the work, the
    /// reply), per recipient of a broadcast (PostToConnection from the
    /// Lambda, 10 in flight at ~25 ms each).
    pub const GO_CONNECT_MS: f64 = 30.0;
    pub const GO_MESSAGE_MS: f64 = 25.0;
    pub const GO_RECIPIENT_MS: f64 = 2.5;
    pub const GO_LAMBDA_GB: f64 = 0.25;
    /// Streamer's edge Lambdas (128 MB).
    pub const EDGE_LAMBDA_GB: f64 = 0.125;
    /// Fargate tasks run at most this busy; each has 2 GB per vCPU; two
    /// tasks of 0.5 vCPU at least (one per availability zone).
    pub const TARGET_UTILISATION: f64 = 0.5;
    pub const GB_PER_VCPU: f64 = 2.0;
    pub const MIN_VCPU: f64 = 1.0;
    /// A gateway task's heap beyond its connections is doubled for headroom.
    pub const HEAP_HEADROOM: f64 = 2.0;
    /// NLB with TLS: an NLCU is 50 new TLS connections a second, 3,000
    /// active TLS connections, or 1 GB processed an hour.
    pub const NLCU_TLS_NEW_PER_SEC: f64 = 50.0;
    pub const NLCU_TLS_ACTIVE: f64 = 3_000.0;
    /// Bytes per delivered frame on the wire (a small JSON message).
    pub const FRAME_BYTES: f64 = 300.0;
}

/// One design's month, by component (dollars).
#[derive(Debug, Serialize)]
pub struct Bill {
    pub design: &'static str,
    pub items: Vec<(&'static str, f64)>,
}

impl Bill {
    fn total(&self) -> f64 {
        self.items.iter().map(|(_, v)| v).sum()
    }
}

fn apigw(w: &Workload) -> Vec<(&'static str, f64)> {
    let messages_m = (w.messages + w.deliveries) / 1e6;
    let messages = messages_m.min(1_000.0) * price::APIGW_MESSAGES_PER_M
        + (messages_m - 1_000.0).max(0.0) * price::APIGW_MESSAGES_PER_M_OVER_1B;
    let minutes =
        w.concurrent * HOURS_PER_MONTH * 60.0 / 1e6 * price::APIGW_CONNECTION_MINUTES_PER_M;
    vec![
        ("API Gateway messages", messages),
        ("API Gateway connection minutes", minutes),
    ]
}

fn dynamodb(w: &Workload, rru_per_message: f64) -> (&'static str, f64) {
    let connects = w.connects();
    let wru = connects * (assume::WRU_PER_CONNECT + assume::WRU_PER_DISCONNECT);
    let rru =
        w.sends * w.recipients_per_send * assume::RRU_PER_RECIPIENT + w.messages * rru_per_message;
    (
        "DynamoDB",
        wru / 1e6 * price::DYNAMODB_WRU_PER_M + rru / 1e6 * price::DYNAMODB_RRU_PER_M,
    )
}

/// Fargate for `cpu_seconds` of work a month and `heap_gb` of state.
fn fargate(cpu_seconds: f64, heap_gb: f64) -> f64 {
    let vcpu = (cpu_seconds / SECONDS_PER_MONTH / assume::TARGET_UTILISATION)
        .max(assume::MIN_VCPU)
        .max(heap_gb / assume::GB_PER_VCPU);
    let gb = vcpu * assume::GB_PER_VCPU;
    (vcpu * price::FARGATE_VCPU_HOUR + gb * price::FARGATE_GB_HOUR) * HOURS_PER_MONTH
}

fn lambda(invocations: f64, gb_seconds: f64) -> f64 {
    invocations / 1e6 * price::LAMBDA_REQUESTS_PER_M + gb_seconds * price::LAMBDA_GB_SECOND_ARM
}

/// The three designs' bills for `w`.
pub fn bills(m: &Measured, w: &Workload) -> [Bill; 3] {
    let connects = w.connects();
    let us = 1e-6;
    // Streamer behind API Gateway: edge Lambdas per event, the control
    // plane on Fargate, one PostToConnection per recipient.
    let edge_invocations = 2.0 * connects + w.messages;
    let edge_gb_s = (2.0 * connects * m.connect_ms.max(1.0) + w.messages * m.message_ms.max(1.0))
        / 1000.0
        * assume::EDGE_LAMBDA_GB;
    let cp_post = (connects * m.connect_us.0
        + w.messages * m.message_us.0
        + w.deliveries * m.recipient_post_us.0)
        * us;
    let mut on_apigw = apigw(w);
    on_apigw.push(("edge Lambdas", lambda(edge_invocations, edge_gb_s)));
    on_apigw.push(("control plane (Fargate)", fargate(cp_post, 0.0)));
    on_apigw.push(dynamodb(w, 0.0));

    // Streamer's own gateways: no API Gateway and no Lambda; gateways and
    // the control plane on Fargate, batched delivery, an NLB with TLS.
    let cp_batched = (connects * m.connect_us.0
        + w.messages * m.message_us.0
        + w.deliveries * m.recipient_batched_us.0)
        * us;
    let gw_cpu = (connects * m.connect_us.1
        + w.messages * m.message_us.1
        + w.deliveries * m.recipient_batched_us.1)
        * us;
    let gw_heap = w.concurrent * m.gateway_bytes_per_connection * assume::HEAP_HEADROOM / 1e9;
    let new_per_sec = connects / SECONDS_PER_MONTH;
    let gb_per_hour = (w.messages + w.deliveries) * assume::FRAME_BYTES / 1e9 / HOURS_PER_MONTH;
    let nlcu = (new_per_sec / assume::NLCU_TLS_NEW_PER_SEC)
        .max(w.concurrent / assume::NLCU_TLS_ACTIVE)
        .max(gb_per_hour);
    let self_hosted = vec![
        ("gateways (Fargate)", fargate(gw_cpu, gw_heap)),
        ("control plane (Fargate)", fargate(cp_batched, 0.0)),
        (
            "Network Load Balancer",
            (price::NLB_HOUR + nlcu * price::NLCU_HOUR) * HOURS_PER_MONTH,
        ),
        dynamodb(w, 0.0),
    ];

    // The Go system: API Gateway, a Lambda per event and one per send that
    // posts to each recipient itself.
    let go_invocations = 2.0 * connects + w.messages + w.sends;
    let go_gb_s = (2.0 * connects * assume::GO_CONNECT_MS
        + w.messages * assume::GO_MESSAGE_MS
        + w.deliveries * assume::GO_RECIPIENT_MS)
        / 1000.0
        * assume::GO_LAMBDA_GB;
    let mut go = apigw(w);
    go.push(("Lambdas", lambda(go_invocations, go_gb_s)));
    go.push(dynamodb(w, assume::GO_RRU_PER_MESSAGE));
    [
        Bill {
            design: "Streamer on API Gateway",
            items: on_apigw,
        },
        Bill {
            design: "Streamer, own gateways",
            items: self_hosted,
        },
        Bill {
            design: "Go all-Lambda (modelled)",
            items: go,
        },
    ]
}

/// Measures, then prints the month of each workload three ways.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let measured = measure(args).await?;
    let rows: Vec<(Workload, [Bill; 3])> = workloads()
        .into_iter()
        .map(|w| (w, bills(&measured, &w)))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"measured": measured, "months": rows.iter().map(|(w, b)| json!({"workload": w, "bills": b})).collect::<Vec<_>>()})
            )?
        );
        return Ok(());
    }
    println!("measured on this machine (CPU per operation: control plane / gateway)");
    let pair = |p: (f64, f64)| format!("{:.1} / {:.1} µs", p.0, p.1);
    println!("  connect + disconnect      {}", pair(measured.connect_us));
    println!("  routed client message     {}", pair(measured.message_us));
    println!(
        "  recipient, per POST       {}",
        pair(measured.recipient_post_us)
    );
    println!(
        "  recipient, batched        {}",
        pair(measured.recipient_batched_us)
    );
    println!(
        "  gateway heap per idle connection {:.0} B; connect p50 {:.1} ms; echo p50 {:.1} ms",
        measured.gateway_bytes_per_connection, measured.connect_ms, measured.message_ms
    );
    println!();
    for (w, bills) in &rows {
        println!(
            "{}: {:.0} connections at once, {:.1} M connects, {:.0} M client messages, {:.0} M deliveries a month",
            w.name,
            w.concurrent,
            w.connects() / 1e6,
            w.messages / 1e6,
            w.deliveries / 1e6
        );
        for bill in bills {
            let items: Vec<String> = bill
                .items
                .iter()
                .map(|(what, v)| format!("{what} ${v:.0}"))
                .collect();
            println!(
                "  {:<26} ${:>9.0}/month  ({})",
                bill.design,
                bill.total(),
                items.join(", ")
            );
        }
    }
    Ok(())
}

fn cpu_of(procs: &Processes) -> anyhow::Result<(u64, u64)> {
    let gateway = procs.gateways[0].child.id().context("gateway pid")?;
    Ok((cpu_ns(procs.control_plane_pid()?)?, cpu_ns(gateway)?))
}

fn per_op(before: (u64, u64), after: (u64, u64), ops: f64) -> (f64, f64) {
    (
        (after.0 - before.0) as f64 / 1000.0 / ops,
        (after.1 - before.1) as f64 / 1000.0 / ops,
    )
}

async fn measure(args: &Args) -> anyhow::Result<Measured> {
    let keys = generate_rsa_key_pair()?;
    let mut m = Measured {
        connect_us: (0.0, 0.0),
        message_us: (0.0, 0.0),
        recipient_post_us: (0.0, 0.0),
        recipient_batched_us: (0.0, 0.0),
        gateway_bytes_per_connection: 0.0,
        connect_ms: 0.0,
        message_ms: 0.0,
    };
    for (batched, size) in [(false, "0"), (true, "1000")] {
        let env = vec![("STREAMER_DELIVERY_BATCH_SIZE".to_owned(), size.to_owned())];
        let procs = Processes::start_with(args, &keys.public_pem, 1, None, &env).await?;
        let result = measure_stack(args, &procs, &keys.private_pem, batched, &mut m).await;
        procs.stop().await;
        result?;
    }
    Ok(m)
}

async fn measure_stack(
    args: &Args,
    procs: &Processes,
    private_pem: &str,
    batched: bool,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let ws = &procs.gateways[0].ws;
    if !batched {
        // Connects and their disconnects.
        let url = format!("{ws}?token={}", token(private_pem, "u", "cost-connect")?);
        drop(scenarios::connect_here(&url, 8, 8).await?);
        let heap = scenarios::heap_before(procs).await?;
        let before = cpu_of(procs)?;
        let (sockets, mut latencies, _) =
            scenarios::connect_here(&url, args.connections, args.connect_concurrency).await?;
        m.gateway_bytes_per_connection = scenarios::heap_after(procs, &heap, args.connections)
            .await?
            .gateway_bytes_per_connection;
        drop(sockets);
        scenarios::until_gone(procs, "cost-connect").await?;
        m.connect_us = per_op(before, cpu_of(procs)?, args.connections as f64);
        m.connect_ms = percentiles(&mut latencies).p50_ms;

        // Routed client messages.
        let url = format!("{ws}?token={}", token(private_pem, "u", "cost-echo")?);
        let (sockets, _, _) =
            scenarios::connect_here(&url, args.echo_connections, args.echo_connections).await?;
        let payload = "x".repeat(args.payload_bytes);
        let before = cpu_of(procs)?;
        let (mut samples, _) =
            scenarios::round_trips(sockets, Duration::from_secs(args.duration), move |i| {
                json!({"id": format!("e{i}"), "action": "echo", "payload": payload}).to_string()
            })
            .await?;
        m.message_us = per_op(before, cpu_of(procs)?, samples.len() as f64);
        m.message_ms = percentiles(&mut samples).p50_ms;
    }

    // Broadcast recipients.
    let recipients = 1000usize;
    let tenant = format!("cost-broadcast-{batched}");
    let listeners = Listeners::connect(procs, private_pem, &tenant, recipients).await?;
    let mut client = BroadcastServiceClient::with_interceptor(
        procs.channel().await?,
        BearerToken::new(ADMIN_TOKEN)?,
    );
    let sends = args.repeats.max(5) * 2;
    let send = |i: usize| v1::SendRequest {
        target: Some(v1::send_request::Target::TenantId(tenant.clone())),
        payload: Some(v1::send_request::Payload::DataJson(format!(
            "{{\"n\":{i}}}"
        ))),
        ..Default::default()
    };
    client.send(send(0)).await?;
    let before = cpu_of(procs)?;
    for i in 0..sends {
        let report = client.send(send(i)).await?.into_inner().report;
        let delivered = report.map_or(0, |r| r.delivered) as usize;
        anyhow::ensure!(
            delivered == recipients,
            "delivered {delivered} of {recipients}"
        );
    }
    let per_recipient = per_op(before, cpu_of(procs)?, (sends * recipients) as f64);
    if batched {
        m.recipient_batched_us = per_recipient;
    } else {
        m.recipient_post_us = per_recipient;
    }
    drop(listeners);
    Ok(())
}
