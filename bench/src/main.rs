//! `streamer-bench`: measures the real system on this machine.
//!
//! It starts `streamer-control-plane serve` (embedded store) and one
//! `streamer-gateway` (the API Gateway emulator) per 12,000 connections, as
//! separate processes from the same target directory, spreads WebSocket
//! clients over `streamer-bench agent` processes (one process here holds at
//! most ~19,000 sockets), and prints one table: connect rate and echo round
//! trip against a bare WebSocket echo server, broadcast fan-out against the
//! Management API floor and the WebSocket floor, CPU per recipient, and heap
//! per idle connection as the processes' own allocators count it. Bounded
//! in time; the processes it starts are killed when it ends.

mod auth;
mod baselines;
mod chunks;
mod cost;
mod fleet;
mod gateways;
mod history;
mod keys;
mod processes;
mod report;
mod scenarios;
mod slo;
mod soak;
mod tls;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use streamer_client::token::{Claims, generate_rsa_key_pair, mint_rs256};

use crate::{
    fleet::Fleet,
    processes::{PER_PROCESS, Processes},
    report::{ConnectResult, Report, percentiles},
};

const EDGE_TOKEN: &str = "bench-edge-token-0123456789";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// Longest any single wait may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(60);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "streamer-bench",
    about = "Benchmark the Streamer control plane and gateway emulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Helper>,
    #[command(flatten)]
    args: Args,
}

/// Processes the bench starts itself.
#[derive(Subcommand, Debug, Clone)]
enum Helper {
    /// Hold WebSocket connections and report broadcast arrivals (internal).
    Agent {
        /// The WebSocket URL with its token.
        #[arg(long)]
        url: String,
        /// Connections to open.
        #[arg(long)]
        connections: usize,
        /// Connection attempts at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// A bare WebSocket echo server, the round-trip floor (internal).
    EchoServer,
    /// Only the payloads-past-the-limits round trips (also part of a full
    /// run).
    Chunks,
    /// Connect rate and echo round trips with the gateway -> control plane
    /// hop in plaintext, TLS and mutual TLS, side by side.
    Tls,
    /// What the access controls cost: connect rate with client keys from
    /// a JWKS document against one static key, and echo / Send figures
    /// with the audit record per server-API call against without.
    Auth,
    /// A month of three workloads priced three ways (API Gateway + edge
    /// Lambdas, Streamer's own gateways, the Go all-Lambda design) from
    /// this machine's measured CPU per operation.
    Cost,
    /// Broadcast through Streamer's own gateways (batched delivery)
    /// against the per-recipient PostToConnection path, beside both
    /// floors, at every --broadcast-sizes.
    Gateways,
    /// What an idempotency key costs a Send: latency and control-plane
    /// CPU with and without one, at 1 and 1,000 recipients, on the
    /// embedded store (and DynamoDB with STREAMER_BENCH_DYNAMODB_ENDPOINT).
    Keys,
    /// The seed's targets under the seed's chaos: a fleet on DynamoDB with
    /// faults injected between its processes, window by window; each
    /// figure against its target (exit 1 when one is missed).
    Slo(slo::SloArgs),
    /// A steady mixed load against `dev`: RSS, descriptors, tasks and
    /// errors at each interval, and a verdict (exit 1 when it fails).
    Soak {
        /// How long to run, in minutes.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Clients connecting, messaging and leaving at once.
        #[arg(long, default_value_t = 40)]
        clients: usize,
    },
}

/// What a run measures.
#[derive(clap::Args, Debug, Clone)]
struct Args {
    /// Connections opened for the connect-rate measurement.
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
    /// Management API calls in flight (control plane and the floor client).
    #[arg(long, default_value_t = 256)]
    delivery_concurrency: usize,
    /// Members of the group whose broadcasts measure history's cost.
    #[arg(long, default_value_t = 1000)]
    history_recipients: usize,
    /// Recoveries of 100 missed messages measured.
    #[arg(long, default_value_t = 50)]
    recoveries: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn token(private_pem: &str, sub: &str, tenant: &str) -> anyhow::Result<String> {
    token_with(private_pem, sub, tenant, &[])
}

fn token_with(
    private_pem: &str,
    sub: &str,
    tenant: &str,
    permissions: &[&str],
) -> anyhow::Result<String> {
    Ok(mint_rs256(
        private_pem,
        &Claims::new(sub, tenant, permissions, 3600),
    )?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Helper::Agent {
            url,
            connections,
            concurrency,
        }) => return fleet::agent(&url, connections, concurrency).await,
        Some(Helper::EchoServer) => return baselines::echo_server().await,
        Some(Helper::Chunks) => {
            let keys = generate_rsa_key_pair()?;
            let procs = Processes::start(&cli.args, &keys.public_pem, 1).await?;
            let result = chunks::measure(
                &cli.args,
                &procs,
                &token(&keys.private_pem, "chunks", "bench-chunks")?,
            )
            .await;
            procs.stop().await;
            report::print_chunks(&result?);
            return Ok(());
        }
        Some(Helper::Keys) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            return keys::run(&cli.args).await;
        }
        Some(Helper::Auth) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            return auth::run(&cli.args).await;
        }
        Some(Helper::Cost) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            return cost::run(&cli.args).await;
        }
        Some(Helper::Gateways) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            return gateways::run(&cli.args).await;
        }
        Some(Helper::Tls) => {
            let _ = rlimit::increase_nofile_limit(u64::MAX);
            return tls::run(&cli.args).await;
        }
        Some(Helper::Slo(slo)) => return slo::run(&slo).await,
        Some(Helper::Soak { minutes, clients }) => {
            return soak::run(Duration::from_secs_f64(minutes.max(0.1) * 60.0), clients).await;
        }
        None => {}
    }
    let args = cli.args;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let keys = generate_rsa_key_pair()?;
    let largest = args
        .broadcast_sizes
        .iter()
        .copied()
        .chain([args.connections])
        .max()
        .unwrap_or(1);
    let procs = Processes::start(&args, &keys.public_pem, largest.div_ceil(PER_PROCESS)).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(900),
        run(&args, &procs, &keys.private_pem),
    )
    .await;
    procs.stop().await;
    let report = result.context("the benchmark did not finish within 15 minutes")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print_table(&report);
    }
    Ok(())
}

async fn run(args: &Args, procs: &Processes, private_pem: &str) -> anyhow::Result<Report> {
    let bare = baselines::EchoServer::start().await?;
    let echo = scenarios::echo(
        args,
        procs,
        &token(private_pem, "echo", "bench-echo")?,
        &bare.url,
    )
    .await?;

    // Connect rate: Streamer (one agent, one gateway) against the bare server.
    let before = scenarios::heap_before(procs).await?;
    let urls: Vec<String> = procs.gateways.iter().map(|g| g.ws.clone()).collect();
    let first = Fleet::open(
        &urls[..1],
        &token(private_pem, "u", "bench-connect")?,
        args.connections,
        args.connect_concurrency,
    )
    .await?;
    let mut latencies = first.latencies.clone();
    let connects_per_sec = args.connections as f64 / first.elapsed.as_secs_f64();
    let (bare_sockets, mut bare_latencies, bare_elapsed) =
        scenarios::connect_here(&bare.url, args.connections, args.connect_concurrency).await?;
    drop(bare_sockets);
    let bare_connects_per_sec = args.connections as f64 / bare_elapsed.as_secs_f64();
    let connect = ConnectResult {
        connections: args.connections,
        connects_per_sec,
        latency: percentiles(&mut latencies),
        bare_connects_per_sec,
        bare_latency: percentiles(&mut bare_latencies),
        ratio: bare_connects_per_sec / connects_per_sec.max(0.001),
    };
    let mut memory = vec![scenarios::heap_after(procs, &before, args.connections).await?];
    first.close().await;
    scenarios::until_gone(procs, "bench-connect").await?;

    let mut seq = 0;
    let mut broadcast = Vec::new();
    for &n in &args.broadcast_sizes {
        let tenant = format!("bench-{n}");
        let before = scenarios::heap_before(procs).await?;
        let mut fleet = Fleet::open(
            &urls,
            &token(private_pem, "u", &tenant)?,
            n,
            args.connect_concurrency,
        )
        .await?;
        if n >= 10_000 {
            memory.push(scenarios::heap_after(procs, &before, n).await?);
        }
        broadcast.push(scenarios::broadcast(args, procs, &mut fleet, &tenant, &mut seq).await?);
        fleet.close().await;
        scenarios::until_gone(procs, &tenant).await?;
    }
    let history = history::measure(
        args,
        procs,
        "bench-history",
        &token(private_pem, "bench", "bench-history")?,
        &token_with(private_pem, "recoverer", "bench-history", &["group:join:*"])?,
        &mut seq,
    )
    .await?;
    let chunks =
        chunks::measure(args, procs, &token(private_pem, "chunks", "bench-chunks")?).await?;
    Ok(Report {
        connect,
        echo,
        broadcast,
        memory,
        history,
        chunks,
    })
}
