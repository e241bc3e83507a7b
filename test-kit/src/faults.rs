//! Fault injection for the chaos tests: proxies put between two parts of
//! the system (the control plane and DynamoDB, the control plane and the
//! Management API, the edge and the control plane) that add latency,
//! blackhole or reset connections, and answer throttling errors and 5xx at
//! a given rate. Everything listens on 127.0.0.1, port 0.
//!
//! - [`TcpFaults`]: any TCP protocol (the edge's gRPC): pass, delay every
//!   chunk, blackhole (hold bytes, answer nothing), reset (close with RST).
//! - [`HttpFaults`]: HTTP/1.1 (DynamoDB's and the Management API's
//!   protocols): forwards requests unchanged (signatures stay valid), or
//!   answers a configured error for a share of them, or delays them, or
//!   holds them unanswered. It counts what it forwarded and what it
//!   injected, so a test can print both.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What a [`TcpFaults`] proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Forward everything.
    Pass,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Accept connections and bytes, forward and answer nothing.
    Blackhole,
    /// Close every connection, open or new, with a reset.
    Reset,
}

/// A TCP proxy with switchable faults.
#[derive(Debug, Clone)]
pub struct TcpFaults {
    addr: SocketAddr,
    mode: watch::Sender<TcpMode>,
    target: Arc<Mutex<Option<SocketAddr>>>,
}

impl TcpFaults {
    /// A proxy to `target` (set later with [`TcpFaults::set_target`] when
    /// the target must know the proxy's address first), passing traffic
    /// until told otherwise.
    pub async fn start(target: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (mode, _) = watch::channel(TcpMode::Pass);
        let target = Arc::new(Mutex::new(target));
        let modes = mode.clone();
        let targets = target.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let modes = modes.subscribe();
                let target = *targets.lock().expect("lock");
                tokio::spawn(async move {
                    if *modes.borrow() == TcpMode::Reset {
                        reset(client);
                        return;
                    }
                    let Some(target) = target else {
                        reset(client);
                        return;
                    };
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        reset(client);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (ur, uw) = upstream.into_split();
                    let up = tokio::spawn(pump(cr, uw, modes.clone()));
                    let down = tokio::spawn(pump(ur, cw, modes));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { addr, mode, target }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are forwarded.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().expect("lock") = Some(target);
    }

    /// Switches the fault.
    pub fn set(&self, mode: TcpMode) {
        eprintln!("faults: tcp proxy {} → {mode:?}", self.addr);
        self.mode.send_replace(mode);
    }
}

/// Closes `stream` with a reset (SO_LINGER 0).
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut modes: watch::Receiver<TcpMode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = modes.changed() => {
                if changed.is_err() || *modes.borrow() == TcpMode::Reset {
                    return;
                }
                continue;
            }
        };
        loop {
            let mode = *modes.borrow_and_update();
            match mode {
                TcpMode::Pass => break,
                TcpMode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                TcpMode::Reset => return,
                // Hold the bytes until the mode changes.
                TcpMode::Blackhole => {
                    if modes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// An HTTP answer the proxy injects instead of forwarding.
#[derive(Debug, Clone)]
pub struct Injected {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(&'static str, &'static str)>,
    /// Body.
    pub body: &'static str,
}

impl Injected {
    /// DynamoDB's `ProvisionedThroughputExceededException` (HTTP 400).
    pub fn dynamodb_throughput_exceeded() -> Self {
        Self {
            status: 400,
            headers: vec![("content-type", "application/x-amz-json-1.0")],
            body: r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#,
        }
    }

    /// DynamoDB's `ThrottlingException` (HTTP 400).
    pub fn dynamodb_throttling() -> Self {
        Self {
            status: 400,
            headers: vec![("content-type", "application/x-amz-json-1.0")],
            body: r#"{"__type":"com.amazon.coral.availability#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#,
        }
    }

    /// The Management API's 429 `LimitExceededException`.
    pub fn limit_exceeded() -> Self {
        Self {
            status: 429,
            headers: vec![
                ("content-type", "application/json"),
                ("x-amzn-errortype", "LimitExceededException"),
            ],
            body: r#"{"message":"Too Many Requests"}"#,
        }
    }

    /// A bare 500.
    pub fn internal_error() -> Self {
        Self {
            status: 500,
            headers: vec![("content-type", "application/json")],
            body: r#"{"message":"Internal server error"}"#,
        }
    }
}

/// What an [`HttpFaults`] proxy does to requests now.
#[derive(Debug, Clone)]
pub enum HttpMode {
    /// Forward everything.
    Pass,
    /// Answer `answer` instead of forwarding, for `percent` of requests
    /// (chosen at random); forward the rest.
    Fail { percent: u32, answer: Injected },
    /// Hold every request this long before forwarding it.
    Delay(Duration),
    /// Hold every request unanswered (until the mode changes, then forward).
    Blackhole,
    /// Forward every request (the store applies it) and answer 500 instead
    /// of its answer: what an outage does to writes in flight, applied
    /// with their answers lost.
    LoseAnswers,
}

#[derive(Debug)]
struct HttpState {
    target: Mutex<Option<SocketAddr>>,
    mode: watch::Sender<HttpMode>,
    forwarded: AtomicU64,
    injected: AtomicU64,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An HTTP/1.1 proxy with switchable faults.
#[derive(Debug, Clone)]
pub struct HttpFaults {
    addr: SocketAddr,
    state: Arc<HttpState>,
}

impl HttpFaults {
    /// A proxy in front of the test command's DynamoDB-compatible server
    /// (moto): a control plane given its URL reaches the store through it.
    pub async fn before_moto() -> Self {
        let moto = crate::moto::endpoint();
        let addr = moto
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| panic!("moto's endpoint {moto} is not http://host:port"));
        Self::start(Some(addr)).await
    }

    /// A proxy to `target` (set later with [`HttpFaults::set_target`] when
    /// the target must know the proxy's address first).
    pub async fn start(target: Option<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(HttpState {
            target: Mutex::new(target),
            mode: watch::channel(HttpMode::Pass).0,
            forwarded: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where requests are forwarded.
    pub fn set_target(&self, target: SocketAddr) {
        *self.state.target.lock().expect("lock") = Some(target);
    }

    /// Switches the fault.
    pub fn set(&self, mode: HttpMode) {
        eprintln!("faults: http proxy {} → {mode:?}", self.addr);
        self.state.mode.send_replace(mode);
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }

    /// Errors injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

impl HttpState {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut modes = self.mode.subscribe();
        loop {
            let mode = modes.borrow_and_update().clone();
            match mode {
                HttpMode::Pass => break,
                HttpMode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                HttpMode::Fail {
                    percent,
                    answer: injected,
                } => {
                    if rand::random_range(0..100) < percent {
                        self.injected.fetch_add(1, Ordering::Relaxed);
                        return answer(
                            injected.status,
                            &injected.headers,
                            Bytes::from_static(injected.body.as_bytes()),
                        );
                    }
                    break;
                }
                HttpMode::Blackhole => {
                    if modes.changed().await.is_err() {
                        return answer(502, &[], Bytes::new());
                    }
                }
                HttpMode::LoseAnswers => break,
            }
        }
        let lose_answer = matches!(*modes.borrow(), HttpMode::LoseAnswers);
        let Some(target) = *self.target.lock().expect("lock") else {
            return answer(502, &[], Bytes::from_static(b"no target"));
        };
        let (mut parts, body) = request.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return answer(400, &[], Bytes::new());
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(uri) = format!("http://{target}{path}").parse() else {
            return answer(400, &[], Bytes::new());
        };
        // The Host header stays as the client signed it.
        parts.uri = uri;
        let upstream = Request::from_parts(parts, Full::new(body));
        match self.client.request(upstream).await {
            Ok(_) if lose_answer => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                self.injected.fetch_add(1, Ordering::Relaxed);
                let injected = Injected::internal_error();
                answer(
                    injected.status,
                    &injected.headers,
                    Bytes::from_static(injected.body.as_bytes()),
                )
            }
            Ok(response) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Response::from_parts(parts, Full::new(body))
            }
            Err(_) => answer(502, &[], Bytes::new()),
        }
    }
}
