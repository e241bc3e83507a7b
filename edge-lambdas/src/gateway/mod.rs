//! A local API Gateway WebSocket API.
//!
//! It accepts WebSocket upgrades on `/{stage}`, assigns connection ids, builds
//! the event JSON API Gateway sends, and runs the same [`EdgeHandler`] the
//! Lambdas run ([`socket`]). It serves the Management API on
//! `/{stage}/@connections/{id}` (`POST`, `GET`, `DELETE`) with SigV4
//! verified against the local credentials, so the control plane's clients
//! talk to it exactly as to AWS ([`management`]). API Gateway's limits and
//! answers apply: 32 KB frames and 128 KB messages (close 1009), RFC 6455
//! close codes for protocol errors, idle and maximum durations (close 1001),
//! a timeout on the upgrade request's head, new connections per second and
//! Management API requests per second (429). `docs/emulator.md` lists each
//! behaviour with the test that shows it.

pub mod accept;
mod limits;
mod management;
pub mod metrics;

pub use self::management::{BATCH_CONTENT_TYPE, BATCH_MAX_IDS};
pub mod sigv4;
mod socket;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64},
    },
    time::Duration,
};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::{
    Router,
    extract::{ConnectInfo, Request},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use dashmap::DashMap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};
use tower::ServiceExt;

pub use self::accept::Handshake;
pub use self::sigv4::LocalCredentials;
use self::{
    limits::{PerIp, Throttle},
    socket::Outbound,
};
use crate::handler::EdgeHandler;

/// API Gateway's message payload limit (128 KB).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// API Gateway's WebSocket frame limit (32 KB).
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// The limits and names the emulator applies. The defaults are API
/// Gateway's (and the control plane's settings table documents each).
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Stage name: the first path segment.
    pub stage: String,
    /// Largest client message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Largest WebSocket frame; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Close a connection idle for this long (1001).
    pub idle_timeout: Duration,
    /// Close every connection after this long (1001).
    pub max_duration: Duration,
    /// Drop a connection whose HTTP request head has not arrived in this long.
    pub header_timeout: Duration,
    /// New connections per second (0: unlimited); API Gateway's default is 500.
    pub connects_per_second: u32,
    /// Management API requests per second (0: unlimited), answered 429
    /// `LimitExceededException` above it.
    pub management_rps: u32,
    /// Management API requests allowed at once.
    pub management_burst: u32,
    /// The credentials and region Management API calls must be signed with.
    pub credentials: LocalCredentials,
    /// Also accepted while a rotation moves the signer to `credentials`.
    pub previous_credentials: Option<LocalCredentials>,
    /// Whether Management API signatures are checked (only the benchmark's
    /// unsigned floor turns this off).
    pub verify_signatures: bool,
    /// WebSocket connections open at once (0: no cap); past it an upgrade
    /// is answered 429.
    pub max_connections: usize,
    /// Sockets one client address may hold open at once (0: no cap).
    pub max_connections_per_ip: usize,
    /// Upgrades per second from one client address (0: no limit), with
    /// `connects_per_ip_burst` saved up; over it an upgrade is answered 429
    /// before any event reaches the control plane.
    pub connects_per_ip_per_second: u32,
    /// The burst of `connects_per_ip_per_second`.
    pub connects_per_ip_burst: u32,
    /// Send a WebSocket ping to every client this often (`None`: never, as
    /// API Gateway); pongs do not count as activity.
    pub ping_interval: Option<Duration>,
    /// Serve Streamer's batch call (`POST /{stage}/@batch`) and announce it
    /// at `GET /{stage}/@capabilities`; off (API Gateway's way) both
    /// answer 404.
    pub batch: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            stage: "local".into(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_frame_bytes: MAX_FRAME_BYTES,
            idle_timeout: Duration::from_secs(600),
            max_duration: Duration::from_secs(7200),
            header_timeout: Duration::from_secs(10),
            connects_per_second: 500,
            management_rps: 10_000,
            management_burst: 5_000,
            credentials: LocalCredentials::default(),
            previous_credentials: None,
            verify_signatures: true,
            max_connections: 0,
            max_connections_per_ip: 0,
            connects_per_ip_per_second: 0,
            connects_per_ip_burst: 0,
            ping_interval: None,
            batch: false,
        }
    }
}

struct Conn {
    tx: mpsc::Sender<Outbound>,
    closing: Notify,
    connected_at_ms: i64,
    last_active_ms: AtomicI64,
    source_ip: String,
    user_agent: String,
}

struct Inner {
    handler: EdgeHandler,
    options: GatewayOptions,
    conns: DashMap<String, Arc<Conn>>,
    api_id: String,
    connects: Option<Throttle>,
    per_ip: PerIp,
    management: Option<Throttle>,
    throttled: AtomicU64,
    metrics: metrics::GatewayMetrics,
    heap_meter: Option<HeapMeter>,
    /// Sockets whose task has not ended (their `$disconnect` included).
    live: std::sync::atomic::AtomicUsize,
    /// Told when the last one ends.
    all_ended: Notify,
    /// `$disconnect` calls in flight at once.
    disconnects: tokio::sync::Semaphore,
}

/// `$disconnect` calls a gateway has in flight at once.
const DISCONNECTS_IN_FLIGHT: usize = 64;

/// What a gateway listens on.
pub struct Listeners {
    /// Clients' WebSocket upgrades (and the Management API too when it has
    /// no listener of its own, as API Gateway serves both on one address).
    pub public: TcpListener,
    /// How the public listener takes connections (PROXY header, TLS).
    pub public_handshake: Handshake,
    /// The Management API on a listener of its own: then the public one
    /// serves upgrades only and the internet cannot reach the API at all.
    pub management: Option<(TcpListener, Handshake)>,
}

/// Reads the heap bytes in use (a binary that counts its allocations
/// reports them through the stats endpoint).
pub type HeapMeter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The emulator. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("connections", &self.inner.conns.len())
            .finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn new_id() -> String {
    // API Gateway ids look like "L0SM9cOFvHcCIhw=": 16 characters of base64.
    let mut bytes = [0u8; 11];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

fn request_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S +0000")
        .to_string()
}

/// API Gateway's answer to a call to a stage it does not serve.
fn forbidden() -> Response {
    aws_error(
        StatusCode::FORBIDDEN,
        "ForbiddenException",
        Some("Forbidden"),
    )
}

/// An error answer as AWS shapes it.
fn aws_error(status: StatusCode, error_type: &'static str, message: Option<&str>) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", error_type),
            ("content-type", "application/json"),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

impl Gateway {
    /// An emulator invoking `handler` for every event.
    pub fn new(handler: EdgeHandler, options: GatewayOptions) -> Self {
        Self::with_heap_meter(handler, options, None)
    }

    /// Like [`Gateway::new`], reporting heap use through `@local/stats`.
    pub fn with_heap_meter(
        handler: EdgeHandler,
        options: GatewayOptions,
        heap_meter: Option<HeapMeter>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                handler,
                connects: Throttle::new(options.connects_per_second, options.connects_per_second),
                per_ip: PerIp::new(
                    options.connects_per_ip_per_second,
                    options.connects_per_ip_burst,
                    options.max_connections_per_ip,
                ),
                management: Throttle::new(options.management_rps, options.management_burst),
                options,
                conns: DashMap::new(),
                api_id: "local".into(),
                throttled: AtomicU64::new(0),
                metrics: metrics::GatewayMetrics::default(),
                heap_meter,
                live: std::sync::atomic::AtomicUsize::new(0),
                all_ended: Notify::new(),
                disconnects: tokio::sync::Semaphore::new(DISCONNECTS_IN_FLIGHT),
            }),
        }
    }

    /// How many WebSocket connections are open.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// The gateway's metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        let heap = self.inner.heap_meter.as_ref().map(|meter| meter());
        let (rate, open) = self.inner.per_ip.tracked();
        self.inner
            .metrics
            .encode(self.inner.conns.len(), heap, rate.max(open))
    }

    /// The HTTP router: WebSocket upgrades and the Management API, on one
    /// address as API Gateway has them.
    pub fn router(&self) -> Router {
        self.socket_router().merge(self.management_router())
    }

    /// WebSocket upgrades only (the public listener when the Management
    /// API has a listener of its own).
    pub fn socket_router(&self) -> Router {
        Router::new()
            .route("/{stage}", get(socket::upgrade))
            .with_state(self.clone())
    }

    /// The Management API, the batch call and the emulator's own calls.
    pub fn management_router(&self) -> Router {
        Router::new()
            .route(
                "/{stage}/@local/broadcast",
                post(management::local_broadcast),
            )
            .route("/{stage}/@local/stats", get(management::local_stats))
            .route("/{stage}/@batch", post(management::post_batch))
            .route("/{stage}/@capabilities", get(management::capabilities))
            .route(
                "/{stage}/@connections/{id}",
                post(management::post_to_connection)
                    .get(management::get_connection)
                    .delete(management::delete_connection),
            )
            .with_state(self.clone())
    }

    /// Serves upgrades and the Management API on `listener` (plain TCP)
    /// until `shutdown` resolves; see [`Gateway::serve_on`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_on(
            Listeners {
                public: listener,
                public_handshake: Handshake::default(),
                management: None,
            },
            shutdown,
        )
        .await
    }

    /// Serves `listeners` until `shutdown` resolves, then closes every open
    /// connection with 1001 (their `$disconnect` events still run) and
    /// waits for each, 10 s at most. A client that has not finished its
    /// PROXY header, TLS handshake and request head within the header
    /// timeout is dropped.
    pub async fn serve_on(
        self,
        listeners: Listeners,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(
            addr = %listeners.public.local_addr()?,
            stage = %self.inner.options.stage,
            tls = listeners.public_handshake.tls.is_some(),
            proxy_protocol = listeners.public_handshake.proxy_protocol,
            "gateway listening"
        );
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.options.header_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let open = tokio_util::task::TaskTracker::new();
        // Per-address rate state of addresses not seen for a while is
        // dropped, so scanning addresses cannot grow it without bound.
        let forget = {
            let gateway = self.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    gateway.inner.per_ip.forget_idle();
                }
            })
        };
        let (public_router, management) = match listeners.management {
            Some((listener, handshake)) => {
                tracing::info!(addr = %listener.local_addr()?, tls = handshake.tls.is_some(), "management api listening");
                (
                    self.socket_router(),
                    Some((listener, handshake, self.management_router())),
                )
            }
            None => (self.router(), None),
        };
        let public = self.accept_loop(
            listeners.public,
            public_router,
            listeners.public_handshake,
            (&builder, &open, &stopping),
        );
        let management = async {
            match management {
                Some((listener, handshake, router)) => {
                    self.accept_loop(listener, router, handshake, (&builder, &open, &stopping))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = async { tokio::join!(public, management); } => {}
            () = shutdown => {}
        }
        forget.abort();
        let _ = stop.send(true);
        let conns: Vec<Arc<Conn>> = self.inner.conns.iter().map(|c| c.value().clone()).collect();
        for conn in conns {
            let _ = conn.tx.try_send(Outbound::Close(1001, "Going away"));
            conn.closing.notify_one();
        }
        // Upgraded sockets are no longer hyper's: wait for each socket's
        // close frame and `$disconnect` as well, 10 s at most.
        let live = async {
            loop {
                let ended = self.inner.all_ended.notified();
                if self.inner.live.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                ended.await;
            }
        };
        open.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            open.wait().await;
            live.await;
        })
        .await;
        Ok(())
    }

    /// Accepts on `listener` until the server stops: each connection's
    /// handshake and HTTP run in a task of their own.
    async fn accept_loop(
        &self,
        listener: TcpListener,
        router: Router,
        handshake: Handshake,
        (builder, open, stopping): (
            &Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
            &tokio_util::task::TaskTracker,
            &tokio::sync::watch::Receiver<bool>,
        ),
    ) {
        let deadline = self.inner.options.header_timeout;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (router, handshake, builder) = (router.clone(), handshake.clone(), builder.clone());
            let mut stopping = stopping.clone();
            open.spawn(async move {
                let Some((io, client)) = handshake.run(stream, peer, deadline).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |mut request: Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(client));
                        let router = router.clone();
                        async move {
                            let response = router
                                .oneshot(request.map(axum::body::Body::new))
                                .await
                                .unwrap_or_else(|never: Infallible| match never {});
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = async { drop(stopping.wait_for(|stop| *stop).await); } => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    }

    fn base_context(
        &self,
        route_key: &str,
        event_type: &str,
        connection_id: &str,
        conn: (&str, &str, i64),
        host: &str,
    ) -> Value {
        let now = now_ms();
        let request_id = new_id();
        json!({
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": request_time(now),
            "messageDirection": "IN",
            "stage": self.inner.options.stage,
            "connectedAt": conn.2,
            "requestTimeEpoch": now,
            "identity": { "sourceIp": conn.0, "userAgent": conn.1 },
            "requestId": request_id,
            "domainName": host,
            "connectionId": connection_id,
            "apiId": self.inner.api_id,
        })
    }

    async fn invoke(&self, event: Value) -> ApiGatewayProxyResponse {
        match serde_json::from_value::<ApiGatewayWebsocketProxyRequest>(event) {
            Ok(event) => self.inner.handler.handle(event).await,
            Err(err) => {
                // Our own event builder produced something API Gateway would not.
                tracing::error!(error = %err, "emulator built an unparsable event");
                let mut response = ApiGatewayProxyResponse::default();
                response.status_code = 500;
                response
            }
        }
    }
}

/// Query parameters as API Gateway reports them: the last value and all.
fn query_maps(
    query: Vec<(String, String)>,
) -> (HashMap<String, String>, HashMap<String, Vec<String>>) {
    let mut single: HashMap<String, String> = HashMap::new();
    let mut multi: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in query {
        single.insert(k.clone(), v.clone());
        multi.entry(k).or_default().push(v);
    }
    (single, multi)
}
