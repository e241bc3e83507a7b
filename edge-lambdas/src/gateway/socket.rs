//! The WebSocket side: the upgrade (`$connect`), one task per connection
//! reading frames (`$default`), a writer task per connection draining what
//! the Management API posts, and `$disconnect` when it ends, with API
//! Gateway's close codes.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use axum::{
    extract::{
        ConnectInfo, Path, Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use tokio::sync::{Notify, mpsc};

use super::{Conn, Gateway, aws_error, forbidden, limits::Refusal, new_id, now_ms, query_maps};

/// Frames waiting for one slow client before `PostToConnection` waits.
const OUTBOUND_QUEUE: usize = 256;
/// Read buffer per connection (grows for large messages, up to the limit).
const READ_BUFFER: usize = 4 * 1024;
/// Write buffer per connection.
const WRITE_BUFFER: usize = 4 * 1024;

/// What the writer task of a connection sends.
pub(super) enum Outbound {
    /// A frame.
    Frame(Message),
    /// A close frame, then the end.
    Close(u16, &'static str),
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

pub(super) async fn upgrade(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if stage != gateway.inner.options.stage {
        return forbidden();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // Streamer's own gateway on the internet: the process's cap, then what
    // one address may open (its rate and its share), before anything
    // reaches the control plane.
    let options = &gateway.inner.options;
    if options.max_connections > 0 && gateway.inner.conns.len() >= options.max_connections {
        connect_outcome(&gateway, "over_capacity");
        return too_many("This gateway holds all the connections it may");
    }
    let slot = match gateway.inner.per_ip.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(Refusal::Rate) => {
            gateway.inner.metrics.throttled.inc();
            connect_outcome(&gateway, "throttled");
            return too_many("Rate exceeded");
        }
        Err(Refusal::Open) => {
            connect_outcome(&gateway, "over_capacity");
            return too_many("Too many connections from this address");
        }
    };
    // API Gateway's account-level limit on new connections per second.
    if let Some(connects) = &gateway.inner.connects
        && !connects.try_take()
    {
        gateway.inner.throttled.fetch_add(1, Ordering::Relaxed);
        gateway.inner.metrics.throttled.inc();
        connect_outcome(&gateway, "throttled");
        return too_many("Rate exceeded");
    }
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

    let (single, multi) = query_maps(query);
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
        connect_outcome(&gateway, "refused");
        // As API Gateway does: the handler's status (and body) goes back to
        // the client and no WebSocket is opened.
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut reply = (status, body_text(&response).unwrap_or_default()).into_response();
        for (name, value) in &response.headers {
            reply.headers_mut().insert(name.clone(), value.clone());
        }
        return reply;
    }

    connect_outcome(&gateway, "accepted");
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
    let (max_message, max_frame) = (options.max_message_bytes, options.max_frame_bytes);
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
    // API Gateway's limits (32 KB frames, 128 KB messages); what breaks them
    // is answered with a close code (see `close_code`). Small buffers: an
    // idle connection holds only what it needs.
    ws.max_message_size(max_message)
        .max_frame_size(max_frame)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_failed_upgrade(on_failed)
        .on_upgrade(move |socket| async move {
            // The address's place is held until the socket ends.
            let _slot = slot;
            run(gateway, connection_id, host, conn, rx, socket).await;
        })
}

/// API Gateway's answer to a connect over a limit (clients back off on it).
fn too_many(message: &str) -> Response {
    aws_error(
        StatusCode::TOO_MANY_REQUESTS,
        "LimitExceededException",
        Some(message),
    )
}

fn connect_outcome(gateway: &Gateway, outcome: &'static str) {
    gateway
        .inner
        .metrics
        .connects
        .get_or_create(&super::metrics::OutcomeLabel { outcome })
        .inc();
}

/// What a read error means as RFC 6455 closes it: a frame or message over
/// the limit 1009, text that is not UTF-8 1007, any other protocol
/// violation (reserved bits, an unmasked client frame, an unknown opcode,
/// a bad continuation) 1002; a transport failure has no close frame (1006).
fn close_code(err: axum::Error) -> (u16, &'static str) {
    use tokio_tungstenite::tungstenite::Error;
    let inner = err.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => (1009, "Message too big"),
        Some(Error::Utf8(_)) => (1007, "Invalid frame payload data"),
        Some(Error::Protocol(_)) => (1002, "Protocol error"),
        _ => (1006, "Connection lost"),
    }
}

async fn run(
    gateway: Gateway,
    connection_id: String,
    host: String,
    conn: Arc<Conn>,
    mut rx: mpsc::Receiver<Outbound>,
    socket: WebSocket,
) {
    // Counted until its `$disconnect` has run, so a stopping gateway can
    // wait for every socket's end.
    let _live = Live::enter(&gateway);
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
    // Pings from the gateway keep a load balancer's idle limit away (an
    // NLB's TLS listener drops a flow idle for 350 s); the client's pongs
    // do not count as activity, as API Gateway's idle timeout has it.
    let ping_every = options.ping_interval.filter(|every| !every.is_zero());
    let mut next_ping = started + ping_every.unwrap_or(options.max_duration);
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
                    Some(Err(err)) => {
                        let (code, reason) = close_code(err);
                        if code != 1006 {
                            let _ = conn.tx.send(Outbound::Close(code, reason)).await;
                        }
                        break (code, reason);
                    }
                    None => break (1006, "Connection lost"),
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
                // Boxed, here and for $disconnect below: the edge call's
                // future is large, and inline it would be part of every idle
                // connection's task.
                let response = Box::pin(gateway.invoke(event)).await;
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
            () = tokio::time::sleep_until(next_ping), if ping_every.is_some() => {
                // A full queue already carries traffic: no ping needed.
                let _ = conn.tx.try_send(Outbound::Frame(Message::Ping(Default::default())));
                next_ping += ping_every.unwrap_or(options.max_duration);
            }
        }
    };
    // Let queued frames (and any close frame) drain, then fire $disconnect.
    gateway.inner.conns.remove(&connection_id);
    let identity = Identity::of(&conn);
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    Box::pin(finish(
        &gateway,
        &connection_id,
        &host,
        code,
        reason,
        identity,
    ))
    .await;
}

/// One socket still running (see [`Gateway::serve`]'s drain).
struct Live(Gateway);

impl Live {
    fn enter(gateway: &Gateway) -> Self {
        gateway.inner.live.fetch_add(1, Ordering::SeqCst);
        Self(gateway.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.inner.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.inner.all_ended.notify_waiters();
        }
    }
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
    // A slot first: when thousands of sockets end at once (a client fleet
    // gone, a drain), their `$disconnect` calls go out a bounded number at
    // a time, each within its own timeout, instead of all at once and
    // half of them timing out at a saturated control plane.
    let _slot = gateway.inner.disconnects.acquire().await.ok();
    gateway.invoke(event).await;
}
