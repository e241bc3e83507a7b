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
    if gateway.inner.options.verify_signatures
        && let Err(refusal) = sigv4::verify(
            &gateway.inner.options.credentials,
            method,
            uri,
            headers,
            body,
            SystemTime::now(),
        )
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
        return Some(aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "LimitExceededException",
            Some("Rate exceeded"),
        ));
    }
    None
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
    conn.last_active_ms.store(now_ms(), Ordering::Relaxed);
    StatusCode::OK.into_response()
}

pub(super) async fn get_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    call: Parts,
) -> Response {
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
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) async fn delete_connection(
    State(gateway): State<Gateway>,
    Path((stage, id)): Path<(String, String)>,
    call: Parts,
) -> Response {
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
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}
