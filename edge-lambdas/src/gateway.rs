//! A local API Gateway WebSocket API.
//!
//! It accepts WebSocket upgrades on `/{stage}`, assigns connection ids, builds
//! the event JSON API Gateway sends, and runs the same [`EdgeHandler`] the
//! Lambdas run. It serves the Management API on
//! `/{stage}/@connections/{id}` (`POST`, `GET`, `DELETE`; 410
//! `GoneException` for unknown ids), so the control plane's AWS SDK client
//! talks to it exactly as to AWS. API Gateway's limits apply: message size
//! (close 1009), idle timeout and maximum connection duration (close 1001).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use axum::{
    Router,
    body::Bytes,
    extract::{
        ConnectInfo, Path, Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};

use crate::handler::EdgeHandler;

/// API Gateway's message payload limit.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Frames waiting for one slow client before `PostToConnection` waits.
const OUTBOUND_QUEUE: usize = 256;

/// The limits and names the emulator applies.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Stage name: the first path segment.
    pub stage: String,
    /// Largest client message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Close a connection idle for this long (1001).
    pub idle_timeout: Duration,
    /// Close every connection after this long (1001).
    pub max_duration: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            stage: "local".into(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            idle_timeout: Duration::from_secs(600),
            max_duration: Duration::from_secs(7200),
        }
    }
}

enum Outbound {
    Frame(Message),
    Close(u16, &'static str),
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
}

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
        Self {
            inner: Arc::new(Inner {
                handler,
                options,
                conns: DashMap::new(),
                api_id: "local".into(),
            }),
        }
    }

    /// How many WebSocket connections are open.
    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    /// The HTTP router: WebSocket upgrades and the Management API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{stage}", get(upgrade))
            .route("/{stage}/@local/broadcast", post(local_broadcast))
            .route(
                "/{stage}/@connections/{id}",
                post(post_to_connection)
                    .get(get_connection)
                    .delete(delete_connection),
            )
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` resolves, then closes every open
    /// connection with 1001 (their `$disconnect` events still run).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        tracing::info!(addr = %listener.local_addr()?, stage = %self.inner.options.stage, "api gateway emulator listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        let open: Vec<Arc<Conn>> = self.inner.conns.iter().map(|c| c.value().clone()).collect();
        for conn in open {
            let _ = conn.tx.try_send(Outbound::Close(1001, "Going away"));
            conn.closing.notify_one();
        }
        Ok(())
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

fn body_text(response: &ApiGatewayProxyResponse) -> Option<String> {
    use aws_lambda_events::encodings::Body;
    match &response.body {
        Some(Body::Text(text)) if !text.is_empty() => Some(text.clone()),
        Some(Body::Binary(bytes)) if !bytes.is_empty() => {
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        _ => None,
    }
}

async fn upgrade(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if stage != gateway.inner.options.stage {
        return aws_error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            Some("Forbidden"),
        );
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let connection_id = new_id();
    let connected_at = now_ms();
    let source_ip = peer.ip().to_string();
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();

    let mut single: HashMap<String, String> = HashMap::new();
    let mut multi: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in query {
        single.insert(k.clone(), v.clone());
        multi.entry(k).or_default().push(v);
    }
    let mut header_map: HashMap<String, String> = HashMap::new();
    let mut multi_headers: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in &headers {
        if let Ok(value) = value.to_str() {
            header_map.insert(name.as_str().to_owned(), value.to_owned());
            multi_headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    let mut event = json!({
        "headers": header_map,
        "multiValueHeaders": multi_headers,
        "requestContext": gateway.base_context("$connect", "CONNECT", &connection_id, (&source_ip, &user_agent, connected_at), &host),
        "isBase64Encoded": false,
    });
    if !single.is_empty() {
        event["queryStringParameters"] = json!(single);
        event["multiValueQueryStringParameters"] = json!(multi);
    }

    let response = gateway.invoke(event).await;
    let status = u16::try_from(response.status_code).unwrap_or(500);
    if !(200..300).contains(&status) {
        // As API Gateway does: the handler's status (and body) goes back to
        // the client and no WebSocket is opened.
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut reply = (status, body_text(&response).unwrap_or_default()).into_response();
        for (name, value) in &response.headers {
            reply.headers_mut().insert(name.clone(), value.clone());
        }
        return reply;
    }

    // Registered before the 101 goes out, so a PostToConnection racing the
    // upgrade is queued rather than answered 410.
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let conn = Arc::new(Conn {
        tx,
        closing: Notify::new(),
        connected_at_ms: connected_at,
        last_active_ms: AtomicI64::new(connected_at),
        source_ip,
        user_agent,
    });
    gateway
        .inner
        .conns
        .insert(connection_id.clone(), conn.clone());
    let limit = gateway.inner.options.max_message_bytes;
    let on_failed = {
        let gateway = gateway.clone();
        let connection_id = connection_id.clone();
        let host = host.clone();
        move |_err: axum::Error| {
            tokio::spawn(async move {
                if let Some((_, conn)) = gateway.inner.conns.remove(&connection_id) {
                    let identity = Identity::of(&conn);
                    finish(
                        &gateway,
                        &connection_id,
                        &host,
                        1006,
                        "Upgrade failed",
                        identity,
                    )
                    .await;
                }
            });
        }
    };
    // Frames a little over the limit still reach us, so we can close with
    // 1009 as API Gateway does instead of dropping the TCP connection.
    ws.max_message_size(limit + 64 * 1024)
        .max_frame_size(limit + 64 * 1024)
        .on_failed_upgrade(on_failed)
        .on_upgrade(move |socket| run(gateway, connection_id, host, conn, rx, socket))
}

async fn run(
    gateway: Gateway,
    connection_id: String,
    host: String,
    conn: Arc<Conn>,
    mut rx: mpsc::Receiver<Outbound>,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outbound::Frame(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                Outbound::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from_static(reason),
                        })))
                        .await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });

    let options = gateway.inner.options.clone();
    let started = tokio::time::Instant::now();
    let max_deadline = started + options.max_duration;
    let (code, reason): (u16, &'static str) = loop {
        let idle_for = Duration::from_millis(
            u64::try_from(now_ms() - conn.last_active_ms.load(Ordering::Relaxed)).unwrap_or(0),
        );
        let idle_deadline =
            tokio::time::Instant::now() + options.idle_timeout.saturating_sub(idle_for);
        tokio::select! {
            frame = stream.next() => {
                let (body, is_base64) = match frame {
                    Some(Ok(Message::Text(text))) => (text.to_string(), false),
                    Some(Ok(Message::Binary(bytes))) => (base64::engine::general_purpose::STANDARD.encode(&bytes), true),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(frame) => (frame.code, "Client-side close frame"),
                            None => (1005, "Client-side close frame status not set"),
                        };
                    }
                    Some(Err(_)) | None => break (1006, "Connection lost"),
                };
                let size = if is_base64 { body.len() / 4 * 3 } else { body.len() };
                if size > options.max_message_bytes {
                    let _ = conn.tx.send(Outbound::Close(1009, "Message too big")).await;
                    break (1009, "Message too big");
                }
                conn.last_active_ms.store(now_ms(), Ordering::Relaxed);
                let mut context = gateway.base_context(
                    "$default", "MESSAGE", &connection_id, (&conn.source_ip, &conn.user_agent, conn.connected_at_ms), &host,
                );
                context["messageId"] = json!(new_id());
                let event = json!({ "requestContext": context, "body": body, "isBase64Encoded": is_base64 });
                let response = gateway.invoke(event).await;
                if let Some(reply) = body_text(&response)
                    && conn.tx.send(Outbound::Frame(Message::Text(reply.into()))).await.is_err()
                {
                    break (1006, "Connection lost");
                }
            }
            _ = conn.closing.notified() => break (1000, "Connection closed by the server"),
            _ = tokio::time::sleep_until(idle_deadline) => {
                let idle = now_ms() - conn.last_active_ms.load(Ordering::Relaxed);
                if u128::try_from(idle).unwrap_or(0) >= options.idle_timeout.as_millis() {
                    let _ = conn.tx.send(Outbound::Close(1001, "Going away")).await;
                    break (1001, "Idle timeout");
                }
            }
            _ = tokio::time::sleep_until(max_deadline) => {
                let _ = conn.tx.send(Outbound::Close(1001, "Going away")).await;
                break (1001, "Maximum connection duration reached");
            }
        }
    };
    // Let queued frames (and any close frame) drain, then fire $disconnect.
    gateway.inner.conns.remove(&connection_id);
    let identity = Identity::of(&conn);
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    finish(&gateway, &connection_id, &host, code, reason, identity).await;
}

/// What the `$disconnect` event reports about the client.
struct Identity {
    source_ip: String,
    user_agent: String,
    connected_at_ms: i64,
}

impl Identity {
    fn of(conn: &Conn) -> Self {
        Self {
            source_ip: conn.source_ip.clone(),
            user_agent: conn.user_agent.clone(),
            connected_at_ms: conn.connected_at_ms,
        }
    }
}

async fn finish(
    gateway: &Gateway,
    connection_id: &str,
    host: &str,
    code: u16,
    reason: &str,
    identity: Identity,
) {
    let mut context = gateway.base_context(
        "$disconnect",
        "DISCONNECT",
        connection_id,
        (
            &identity.source_ip,
            &identity.user_agent,
            identity.connected_at_ms,
        ),
        host,
    );
    context["disconnectStatusCode"] = json!(code);
    context["disconnectReason"] = json!(reason);
    let event = json!({
        "headers": { "Host": host, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": "" },
        "multiValueHeaders": { "Host": [host], "x-api-key": [""], "X-Forwarded-For": [""], "x-restapi": [""] },
        "requestContext": context,
        "isBase64Encoded": false,
    });
    gateway.invoke(event).await;
}

/// The Management API accepts only SigV4-signed calls, as AWS does.
fn signed(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "))
}

/// The rejection for a call to the wrong stage or without a signature.
fn refuse(gateway: &Gateway, stage: &str, headers: &HeaderMap) -> Option<Response> {
    (stage != gateway.inner.options.stage || !signed(headers)).then(|| {
        aws_error(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            Some("Forbidden"),
        )
    })
}

fn gone() -> Response {
    aws_error(StatusCode::GONE, "GoneException", None)
}

async fn post_to_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = refuse(&gateway, &stage, &headers) {
        return response;
    }
    if body.len() > gateway.inner.options.max_message_bytes {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            Some("Message too long"),
        );
    }
    let Some(conn) = gateway.inner.conns.get(&id).map(|c| c.clone()) else {
        return gone();
    };
    let message = match std::str::from_utf8(&body) {
        Ok(text) => Message::Text(text.into()),
        Err(_) => Message::Binary(body),
    };
    if conn.tx.send(Outbound::Frame(message)).await.is_err() {
        return gone();
    }
    conn.last_active_ms.store(now_ms(), Ordering::Relaxed);
    StatusCode::OK.into_response()
}

async fn get_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = refuse(&gateway, &stage, &headers) {
        return response;
    }
    let Some(conn) = gateway.inner.conns.get(&id).map(|c| c.clone()) else {
        return gone();
    };
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let body = json!({
        "connectedAt": iso(conn.connected_at_ms),
        "lastActiveAt": iso(conn.last_active_ms.load(Ordering::Relaxed)),
        "identity": { "sourceIp": conn.source_ip, "userAgent": conn.user_agent },
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn delete_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = refuse(&gateway, &stage, &headers) {
        return response;
    }
    let Some(conn) = gateway.inner.conns.get(&id).map(|c| c.clone()) else {
        return gone();
    };
    let _ = conn
        .tx
        .send(Outbound::Close(1000, "Connection closed by the server"))
        .await;
    conn.closing.notify_one();
    StatusCode::NO_CONTENT.into_response()
}

/// Emulator-only extension, not part of API Gateway: writes the body straight
/// to every open socket. It is the WebSocket floor the benchmark compares
/// broadcast against; it answers the number of sockets written to.
async fn local_broadcast(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = refuse(&gateway, &stage, &headers) {
        return response;
    }
    let text: Utf8Bytes = match std::str::from_utf8(&body) {
        Ok(text) => text.into(),
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let open: Vec<Arc<Conn>> = gateway
        .inner
        .conns
        .iter()
        .map(|c| c.value().clone())
        .collect();
    let mut written = 0u64;
    for conn in open {
        if conn
            .tx
            .send(Outbound::Frame(Message::Text(text.clone())))
            .await
            .is_ok()
        {
            written += 1;
        }
    }
    (StatusCode::OK, written.to_string()).into_response()
}
