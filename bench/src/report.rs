//! What a run measured, as a table or as JSON.

use std::time::Duration;

use serde::Serialize;

/// Latency percentiles, milliseconds.
#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The percentiles of `samples`.
pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
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

/// Connect rate and latency.
#[derive(Debug, Serialize)]
pub struct ConnectResult {
    /// Connections opened.
    pub connections: usize,
    /// Streamer: connects per second.
    pub connects_per_sec: f64,
    /// Streamer: latency.
    pub latency: Percentiles,
    /// The bare WebSocket server: connects per second.
    pub bare_connects_per_sec: f64,
    /// The bare server: latency.
    pub bare_latency: Percentiles,
    /// Bare rate / Streamer rate (goal: within 1.4x).
    pub ratio: f64,
}

/// Synchronous round trips.
#[derive(Debug, Serialize)]
pub struct EchoResult {
    /// Connections sending at once.
    pub connections: usize,
    /// Streamer: requests per second.
    pub requests_per_sec: f64,
    /// Streamer: end to end.
    pub end_to_end: Percentiles,
    /// The control plane's share (its gRPC Route alone).
    pub control_plane_route: Percentiles,
    /// The bare echo server: requests per second.
    pub bare_requests_per_sec: f64,
    /// The bare echo server: round trip.
    pub bare: Percentiles,
    /// Streamer p99 / bare p99 (goal: within 2x).
    pub ratio_p99: f64,
}

/// First and last arrival of the broadcasts of one kind.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct FanOut {
    /// Send → first client holds the frame.
    pub first_frame: Percentiles,
    /// Send → last client holds the frame.
    pub last_frame: Percentiles,
}

/// One broadcast size.
#[derive(Debug, Serialize)]
pub struct BroadcastResult {
    /// Recipients.
    pub recipients: usize,
    /// Gateway processes they were spread over.
    pub gateways: usize,
    /// Streamer.
    pub streamer: FanOut,
    /// The Management API floor.
    pub baseline_http: FanOut,
    /// The WebSocket floor.
    pub baseline_websocket: FanOut,
    /// Streamer last-frame p50 / floor p50 (goal: within 1.2x).
    pub ratio_to_http: f64,
    /// Streamer last-frame p50 / WebSocket floor p50.
    pub ratio_to_websocket: f64,
    /// Control-plane CPU per recipient, microseconds.
    pub control_plane_cpu_us_per_recipient: f64,
    /// The floor client's CPU per recipient, microseconds.
    pub floor_cpu_us_per_recipient: f64,
}

/// Heap per idle connection, counted by the processes' allocators.
#[derive(Debug, Serialize)]
pub struct MemoryResult {
    /// Idle connections.
    pub connections: usize,
    /// Control-plane heap per connection, bytes (goal: under 1 KiB).
    pub control_plane_bytes_per_connection: f64,
    /// Emulator heap per connection, bytes (goal: under 16 KiB).
    pub gateway_bytes_per_connection: f64,
}

/// A whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Connect rate.
    pub connect: ConnectResult,
    /// Round trips.
    pub echo: EchoResult,
    /// Broadcasts by size.
    pub broadcast: Vec<BroadcastResult>,
    /// Memory by fleet size.
    pub memory: Vec<MemoryResult>,
    /// Stream history: its cost on a broadcast, recovery latency.
    pub history: crate::history::HistoryResult,
    /// Echo round trips of messages past the gateway's limits.
    pub chunks: Vec<crate::chunks::ChunkedEcho>,
}

/// Prints the chunked round trips as table rows.
pub fn print_chunks(chunks: &[crate::chunks::ChunkedEcho]) {
    for c in chunks {
        println!(
            "| echo of {} KB, one connection ({}) | p50 {:.2} ms, p99 {:.2} ms; {:.1} MB/s |",
            c.bytes / 1000,
            if c.frames_up == 1 {
                "sent and answered whole".to_owned()
            } else {
                format!("{} chunk frames up, chunked down", c.frames_up)
            },
            c.round_trip.p50_ms,
            c.round_trip.p99_ms,
            c.mb_per_sec
        );
    }
}

/// Prints `report` as a Markdown table.
pub fn print_table(report: &Report) {
    let p = |p: &Percentiles| format!("p50 {:.2} ms, p99 {:.2} ms", p.p50_ms, p.p99_ms);
    println!(
        "streamer-bench (this machine; the bench, the gateways and the control plane share its cores)"
    );
    println!();
    println!("| measurement | result |");
    println!("| --- | --- |");
    let c = &report.connect;
    println!(
        "| connect, {} clients | Streamer {:.0}/s ({}); bare WebSocket server {:.0}/s ({}); {:.2}x |",
        c.connections,
        c.connects_per_sec,
        p(&c.latency),
        c.bare_connects_per_sec,
        p(&c.bare_latency),
        c.ratio
    );
    let e = &report.echo;
    println!(
        "| sync echo, {} connections | Streamer {:.0} req/s, {}; bare {:.0} req/s, {}; p99 {:.2}x |",
        e.connections,
        e.requests_per_sec,
        p(&e.end_to_end),
        e.bare_requests_per_sec,
        p(&e.bare),
        e.ratio_p99
    );
    println!(
        "| control-plane share of echo (gRPC Route only) | {} |",
        p(&e.control_plane_route)
    );
    for b in &report.broadcast {
        println!(
            "| broadcast to {} ({} gateways) | Streamer last frame {}; floor {}; {:.2}x the floor (WebSocket floor {}, {:.2}x) |",
            b.recipients,
            b.gateways,
            p(&b.streamer.last_frame),
            p(&b.baseline_http.last_frame),
            b.ratio_to_http,
            p(&b.baseline_websocket.last_frame),
            b.ratio_to_websocket
        );
        println!(
            "| broadcast to {}: CPU per recipient | control plane {:.1} us; floor client {:.1} us |",
            b.recipients, b.control_plane_cpu_us_per_recipient, b.floor_cpu_us_per_recipient
        );
    }
    let h = &report.history;
    println!(
        "| broadcast to a {}-member group with history vs without | last frame {} vs {}; {:.2}x; control-plane CPU {:.0} us vs {:.0} us per broadcast |",
        h.recipients,
        p(&h.with_history),
        p(&h.without_history),
        h.ratio,
        h.cpu_us_with,
        h.cpu_us_without
    );
    println!(
        "| recovery of {} missed messages (reconnect → answer) | {} |",
        h.missed,
        p(&h.recovery)
    );
    println!(
        "| heap per retained message (embedded history, {}-byte JSON) | {:.0} bytes |",
        h.message_json_bytes, h.heap_bytes_per_message
    );
    for m in &report.memory {
        println!(
            "| heap per idle connection, {} connections | control plane {:.0} bytes; emulator {:.0} bytes |",
            m.connections, m.control_plane_bytes_per_connection, m.gateway_bytes_per_connection
        );
    }
    print_chunks(&report.chunks);
}
