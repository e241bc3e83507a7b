//! The Management API (`POST`, `GET`, `DELETE` on
//! `/{stage}/@connections/{id}`), as API Gateway answers it: SigV4 checked
//! against the local credentials (403 `InvalidSignatureException` and
//! friends), the account's request rate (429 `LimitExceededException`), 410
//! `GoneException` for unknown ids, 413 `PayloadTooLargeException` over the
//! message limit. Plus two emulator-only extensions under `@local`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::SystemTime,
};

use axum::extract::ws::{Message, Utf8Bytes};
use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode, Uri, request::Parts},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{Conn, Gateway, aws_error, forbidden, now_ms, sigv4, socket::Outbound};

/// The refusal of a call to the wrong stage, unsigned or badly signed, or
/// over the request rate.
fn refuse(
    gateway: &Gateway,
    stage: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    if stage != gateway.inner.options.stage {
        return Some(forbidden());
    }
    let options = &gateway.inner.options;
    let check =
        |credentials| sigv4::verify(credentials, method, uri, headers, body, SystemTime::now());
    if options.verify_signatures
        && let Err(refusal) = check(&options.credentials)
        // During a rotation the pair before it signs too, until every
        // signer has moved to the new one.
        && options
            .previous_credentials
            .as_ref()
            .is_none_or(|previous| check(previous).is_err())
    {
        return Some(aws_error(
            StatusCode::FORBIDDEN,
            refusal.error_type,
            Some(refusal.message),
        ));
    }
    if let Some(throttle) = &gateway.inner.management
        && !throttle.try_take()
    {
        gateway.inner.throttled.fetch_add(1, Ordering::Relaxed);
        gateway.inner.metrics.throttled.inc();
        return Some(aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "LimitExceededException",
            Some("Rate exceeded"),
        ));
    }
    None
}

fn called(gateway: &Gateway, call: &'static str) {
    gateway
        .inner
        .metrics
        .calls
        .get_or_create(&super::metrics::CallLabel { call })
        .inc();
}

/// `200` with a JSON body.
fn json_ok(body: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A path this gateway does not serve.
fn not_found() -> Response {
    aws_error(StatusCode::NOT_FOUND, "NotFoundException", None)
}

fn gone() -> Response {
    aws_error(StatusCode::GONE, "GoneException", None)
}

/// The open connection a bodiless call (`GET`, `DELETE`) addresses, or the
/// answer that refuses it.
fn addressed(
    gateway: &Gateway,
    stage: &str,
    id: &str,
    call: &Parts,
) -> Result<Arc<Conn>, Box<Response>> {
    if let Some(response) = refuse(gateway, stage, &call.method, &call.uri, &call.headers, b"") {
        return Err(Box::new(response));
    }
    gateway
        .inner
        .conns
        .get(id)
        .map(|c| c.clone())
        .ok_or_else(|| Box::new(gone()))
}

pub(super) async fn post_to_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    called(&gateway, "post");
    if let Some(response) = refuse(&gateway, &stage, &method, &uri, &headers, &body) {
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
    gateway.inner.metrics.frames.inc();
    conn.last_active_ms.store(now_ms(), Ordering::Relaxed);
    StatusCode::OK.into_response()
}

pub(super) async fn get_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    call: Parts,
) -> Response {
    called(&gateway, "get");
    let conn = match addressed(&gateway, &stage, &id, &call) {
        Ok(conn) => conn,
        Err(refused) => return *refused,
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
    json_ok(&body)
}

pub(super) async fn delete_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    call: Parts,
) -> Response {
    called(&gateway, "delete");
    let conn = match addressed(&gateway, &stage, &id, &call) {
        Ok(conn) => conn,
        Err(refused) => return *refused,
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
pub(super) async fn local_broadcast(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = refuse(&gateway, &stage, &method, &uri, &headers, &body) {
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

/// Emulator-only extension: open connections, requests refused by the
/// throttles, and (when the binary counts it) heap bytes in use.
pub(super) async fn local_stats(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
) -> Response {
    if stage != gateway.inner.options.stage {
        return forbidden();
    }
    let heap = gateway.inner.heap_meter.as_ref().map(|meter| meter());
    let body = json!({
        "connections": gateway.inner.conns.len(),
        "throttled": gateway.inner.throttled.load(Ordering::Relaxed),
        "heap_bytes": heap,
    });
    json_ok(&body)
}

/// Most connection ids one batch call may name.
pub const BATCH_MAX_IDS: usize = 1_000;

/// The batch call's body type: the connection ids, one per line, an empty
/// line, then the frame's bytes as they are (no re-encoding, so the frame
/// is never escaped or copied per recipient).
pub const BATCH_CONTENT_TYPE: &str = "application/x-streamer-batch";

/// Streamer's own call, beside the Management API (API Gateway has no
/// equivalent): one frame to many connections of this gateway in one
/// request, signed as every Management API call is. It answers
/// `{"delivered": n, "gone": [ids]}`: every id named once is either
/// written to its socket's queue or gone (unknown, or closed meanwhile).
/// Refused whole: an unsigned or badly signed call (403), a body that is
/// not ids + empty line + frame (400 `BadRequestException`), more than
/// [`BATCH_MAX_IDS`] ids (413 `BatchTooLargeException`), a frame over the
/// message limit (413 `PayloadTooLargeException`), over the Management
/// API's request rate (429; a batch is one request).
pub(super) async fn post_batch(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !gateway.inner.options.batch {
        return not_found();
    }
    called(&gateway, "batch");
    if let Some(response) = refuse(&gateway, &stage, &method, &uri, &headers, &body) {
        return response;
    }
    let Some((ids, frame)) = split_batch(&body) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            Some("expected connection ids, one per line, an empty line, then the frame"),
        );
    };
    if ids.len() > BATCH_MAX_IDS {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BatchTooLargeException",
            Some("too many connection ids in one batch"),
        );
    }
    if frame.len() > gateway.inner.options.max_message_bytes {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            Some("Message too long"),
        );
    }
    // One buffer shared by every socket's queue.
    // Validated once; the bytes stay shared either way.
    let message = match Utf8Bytes::try_from(frame.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(frame),
    };
    let now = now_ms();
    let mut gone: Vec<&str> = Vec::new();
    let mut waiting = Vec::new();
    let mut delivered = 0u64;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        let Some(conn) = gateway.inner.conns.get(id).map(|c| c.clone()) else {
            gone.push(id);
            continue;
        };
        // A full queue (a slow reader) waits, as its own PostToConnection
        // would, without holding up the rest of the batch.
        match conn.tx.try_send(Outbound::Frame(message.clone())) {
            Ok(()) => {
                conn.last_active_ms.store(now, Ordering::Relaxed);
                delivered += 1;
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            Err(tokio::sync::mpsc::error::TrySendError::Full(frame)) => {
                waiting.push(async move {
                    let sent = conn.tx.send(frame).await.is_ok();
                    if sent {
                        conn.last_active_ms.store(now_ms(), Ordering::Relaxed);
                    }
                    (id, sent)
                });
            }
        }
    }
    for (id, sent) in futures_util::future::join_all(waiting).await {
        if sent {
            delivered += 1;
        } else {
            gone.push(id);
        }
    }
    gateway.inner.metrics.frames.inc_by(delivered);
    json_ok(&json!({ "delivered": delivered, "gone": gone }))
}

/// `ids\n…\n\nframe` into the ids and the frame; `None` when malformed (no
/// empty line, no id, an empty or non-UTF-8 id, an empty frame).
fn split_batch(body: &Bytes) -> Option<(Vec<&str>, Bytes)> {
    let end = body.windows(2).position(|w| w == b"\n\n")?;
    let head = std::str::from_utf8(&body[..end]).ok()?;
    let ids: Vec<&str> = head.split('\n').collect();
    if ids.iter().any(|id| id.is_empty() || id.len() > 128) {
        return None;
    }
    let frame = body.slice(end + 2..);
    (!frame.is_empty()).then_some((ids, frame))
}

/// What this gateway offers beyond the Management API, for the control
/// plane to find out (signed like every call): the batch call and its
/// limits.
pub(super) async fn capabilities(
    State(gateway): State<Gateway>,
    Path(stage): Path<String>,
    call: Parts,
) -> Response {
    if !gateway.inner.options.batch {
        return not_found();
    }
    if let Some(response) = refuse(
        &gateway,
        &stage,
        &call.method,
        &call.uri,
        &call.headers,
        b"",
    ) {
        return response;
    }
    let body = json!({
        "batch": {
            "max_ids": BATCH_MAX_IDS,
            "max_message_bytes": gateway.inner.options.max_message_bytes,
            "content_type": BATCH_CONTENT_TYPE,
        }
    });
    json_ok(&body)
}
