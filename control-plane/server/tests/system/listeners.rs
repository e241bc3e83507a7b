//! Every HTTP listener hardened alike (the console's port here, `/metrics`
//! and the gateway by the same code, `streamer-listener`): tried from
//! outside with no credentials, as the review did. 300 sockets dripping a
//! body a byte at a time and 300 idle HTTP/2 connections once held all 256
//! of the console's slots and no one else got an answer; a declared
//! `Content-Length` of a terabyte held a connection open waiting for a
//! body the helper would refuse.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use streamer_test_kit::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A connection to `addr` from the loopback address `from` (127.0.0.x), so
/// the attackers are another address than the operator.
async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().expect("ip"), 0))?;
    socket.connect(addr).await
}

/// Whether the server has closed `socket` (a read returns end of stream
/// or an error) within `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_while_slow_bodies_and_idle_http2_connections_pile_up() {
    let dev = Dev::start(&[
        ("STREAMER_HTTP_HEADER_TIMEOUT_MS", "2000"),
        ("STREAMER_HTTP_BODY_GRACE_MS", "1000"),
        ("STREAMER_HTTP_IDLE_TIMEOUT_SECS", "2"),
    ])
    .await;
    let console: SocketAddr = dev.ready["console"]
        .as_str()
        .expect("console")
        .parse()
        .expect("addr");
    // 300 sockets that send a request head and drip its body.
    let mut dripping = Vec::new();
    for _ in 0..300 {
        let Ok(mut socket) = connect_from("127.0.0.2", console).await else {
            continue;
        };
        let head = format!(
            "POST /console/dev/token HTTP/1.1\r\nHost: {console}\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n"
        );
        if socket.write_all(head.as_bytes()).await.is_ok() {
            dripping.push(socket);
        }
    }
    // 300 HTTP/2 connections (prior knowledge) that never send a request.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let Ok(mut socket) = connect_from("127.0.0.3", console).await else {
            continue;
        };
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        if socket.write_all(&preface).await.is_ok() {
            idle.push(socket);
        }
    }
    for socket in dripping.iter_mut().take(50) {
        let _ = socket.write_all(b"{").await;
    }
    println!(
        "injected: {} dripping and {} idle HTTP/2 sockets from two addresses",
        dripping.len(),
        idle.len()
    );
    // Anyone else is answered at once.
    let started = Instant::now();
    let mut fresh = TcpStream::connect(console).await.expect("connect");
    fresh
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {console}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), fresh.read_to_end(&mut response))
        .await
        .expect("answered within 2 s")
        .expect("read");
    println!("a fresh GET / answered in {:?}", started.elapsed());
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    // Every attacking socket is closed within the timeouts: past the
    // per-address share at once, the rest by the body floor (1 s grace,
    // 1 KiB/s) or the idle timeout (2 s).
    let started = Instant::now();
    let mut open = (0, 0);
    for socket in dripping.iter_mut() {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        if !closed_within(socket, left).await {
            open.0 += 1;
        }
    }
    for socket in idle.iter_mut() {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        if !closed_within(socket, left).await {
            open.1 += 1;
        }
    }
    println!(
        "checked: of {} dripping and {} idle sockets, {} and {} still open after {:?}",
        dripping.len(),
        idle.len(),
        open.0,
        open.1,
        started.elapsed()
    );
    assert_eq!(open, (0, 0));
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_answered_413_at_once() {
    let dev = Dev::start(&[]).await;
    let console = dev.ready["console"].as_str().expect("console").to_owned();
    let mut socket = TcpStream::connect(&console).await.expect("connect");
    let started = Instant::now();
    socket
        .write_all(
            format!(
                "POST /console/dev/token HTTP/1.1\r\nHost: {console}\r\nContent-Length: 1000000000000\r\nContent-Type: application/json\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut response = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.read(&mut response))
        .await
        .expect("answered within 1 s")
        .expect("read");
    let response = String::from_utf8_lossy(&response[..n]).into_owned();
    println!(
        "answered in {:?}: {}",
        started.elapsed(),
        response.lines().next().unwrap_or("")
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
}
