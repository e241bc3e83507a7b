//! `streamer-bench gateways`: broadcast through Streamer's own gateways
//! (the batch call: one frame and up to 1,000 connection ids per call)
//! against the per-recipient `PostToConnection` path API Gateway imposes,
//! each beside both floors (a bare client POSTing to every connection, and
//! the gateways writing straight to their sockets), at every size of
//! `--broadcast-sizes`. Two stacks, one after the other: the control plane
//! with `STREAMER_DELIVERY_BATCH_SIZE=1000`, then with `0`; the same
//! gateways' binary, the same fleet sizes.

use anyhow::Context;
use serde::Serialize;
use streamer_client::token::generate_rsa_key_pair;

use crate::{
    Args,
    fleet::Fleet,
    processes::{PER_PROCESS, Processes},
    report::{BroadcastResult, MemoryResult, Percentiles},
    scenarios, token,
};

/// One path at one size.
#[derive(Debug, Serialize)]
pub struct PathResult {
    /// `batched` or `per POST`.
    pub path: &'static str,
    /// The broadcast's figures, with both floors measured in the same stack.
    pub result: BroadcastResult,
    /// Heap per idle connection once the fleet was connected, in the
    /// control plane and across the gateways.
    pub memory: MemoryResult,
}

/// Runs both stacks and prints the table.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    let keys = generate_rsa_key_pair()?;
    let largest = args.broadcast_sizes.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for (path, batch) in [("batched", "1000"), ("per POST", "0")] {
        let env = vec![("STREAMER_DELIVERY_BATCH_SIZE".to_owned(), batch.to_owned())];
        let procs = Processes::start_with(
            args,
            &keys.public_pem,
            largest.div_ceil(PER_PROCESS),
            None,
            &env,
        )
        .await
        .with_context(|| format!("start the {path} stack"))?;
        let measured = measure(args, &procs, path, &keys.private_pem).await;
        procs.stop().await;
        rows.extend(measured?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print(args, &rows);
    Ok(())
}

async fn measure(
    args: &Args,
    procs: &Processes,
    path: &'static str,
    private_pem: &str,
) -> anyhow::Result<Vec<PathResult>> {
    let urls: Vec<String> = procs.gateways.iter().map(|g| g.ws.clone()).collect();
    let mut seq = 0;
    let mut rows = Vec::new();
    for &n in &args.broadcast_sizes {
        let tenant = format!("bench-gw-{n}");
        let before = scenarios::heap_before(procs).await?;
        let mut fleet = Fleet::open(
            &urls,
            &token(private_pem, "u", &tenant)?,
            n,
            args.connect_concurrency,
        )
        .await?;
        let memory = scenarios::heap_after(procs, &before, n).await?;
        let result = scenarios::broadcast(args, procs, &mut fleet, &tenant, &mut seq).await;
        fleet.close().await;
        scenarios::until_gone(procs, &tenant).await?;
        rows.push(PathResult {
            path,
            result: result?,
            memory,
        });
    }
    Ok(rows)
}

fn ms(p: &Percentiles) -> String {
    format!("{:.1} / {:.1}", p.p50_ms, p.p99_ms)
}

fn print(args: &Args, rows: &[PathResult]) {
    println!(
        "broadcast, last frame p50 / p99 in ms ({} broadcasts per size, {} B payloads); CPU per recipient in µs",
        args.repeats, args.payload_bytes
    );
    println!(
        "{:>8} {:<9} {:>16} {:>16} {:>16} {:>14} {:>14} {:>9}",
        "size",
        "path",
        "Streamer",
        "POST floor",
        "socket floor",
        "/ POST floor",
        "/ socket floor",
        "CPU/rcpt"
    );
    for row in rows {
        let r = &row.result;
        let ratio = |a: &Percentiles, b: &Percentiles| {
            format!(
                "{:.2} / {:.2}",
                a.p50_ms / b.p50_ms.max(0.001),
                a.p99_ms / b.p99_ms.max(0.001)
            )
        };
        println!(
            "{:>8} {:<9} {:>16} {:>16} {:>16} {:>14} {:>14} {:>9.2}",
            r.recipients,
            row.path,
            ms(&r.streamer.last_frame),
            ms(&r.baseline_http.last_frame),
            ms(&r.baseline_websocket.last_frame),
            ratio(&r.streamer.last_frame, &r.baseline_http.last_frame),
            ratio(&r.streamer.last_frame, &r.baseline_websocket.last_frame),
            r.control_plane_cpu_us_per_recipient,
        );
    }
    println!();
    println!("heap per idle connection, bytes (the processes' own allocators)");
    println!(
        "{:>8} {:<9} {:>14} {:>14}",
        "size", "path", "control plane", "gateways"
    );
    for row in rows {
        println!(
            "{:>8} {:<9} {:>14.0} {:>14.0}",
            row.memory.connections,
            row.path,
            row.memory.control_plane_bytes_per_connection,
            row.memory.gateway_bytes_per_connection,
        );
    }
}
