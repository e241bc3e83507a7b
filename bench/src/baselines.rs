//! The floors Streamer is measured against, in the same run:
//!
//! - **the Management API floor**: a bare HTTP/1.1 client posting the same
//!   frames to the same emulator with the same concurrency, unsigned, with
//!   nothing else to do;
//! - **the WebSocket floor**: the emulator writing straight to its sockets
//!   (`@local/broadcast`);
//! - **a bare WebSocket echo server** (`streamer-bench echo-server`, its own
//!   process): the floor of connect rate and round trip.

use std::{net::SocketAddr, process::Stdio};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http_body_util::{BodyExt, Full};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
};

use crate::{DEADLINE, processes::sibling};

/// A plain HTTP/1.1 client.
pub type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A client with `pool` idle connections per host.
pub fn http(pool: usize) -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build_http()
}

/// POSTs `body` to `url`; the status.
pub async fn post(http: &Http, url: &str, body: Bytes) -> anyhow::Result<u16> {
    let request = http::Request::post(url).body(Full::new(body))?;
    let response = http.request(request).await?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    Ok(status)
}

/// The Management API floor: posts `frame` to every (endpoint, id) with
/// `concurrency` in flight; how many were accepted.
pub async fn post_to_all(
    http: &Http,
    targets: &[(String, String)],
    frame: Bytes,
    concurrency: usize,
) -> usize {
    stream::iter(targets.iter())
        .map(|(endpoint, id)| {
            let url = format!("{endpoint}/@connections/{id}");
            let http = http.clone();
            let frame = frame.clone();
            async move { post(&http, &url, frame).await }
        })
        .buffer_unordered(concurrency)
        .filter(|r| std::future::ready(matches!(r, Ok(200))))
        .count()
        .await
}

/// The bare echo server: accepts WebSockets and echoes every text frame.
pub async fn echo_server() -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("ECHO_READY {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() {
                    break;
                }
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The echo server as a process, and its address.
pub struct EchoServer {
    _child: Child,
    /// `ws://addr/`.
    pub url: String,
}

impl EchoServer {
    /// Starts `streamer-bench echo-server`.
    pub async fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(sibling("streamer-bench")?)
            .arg("echo-server")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the echo server")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let addr: SocketAddr = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("ECHO_READY ") {
                    return Ok(addr.trim().parse()?);
                }
            }
            anyhow::bail!("the echo server exited")
        })
        .await??;
        Ok(Self {
            _child: child,
            url: format!("ws://{addr}/"),
        })
    }
}
