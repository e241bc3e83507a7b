//! Real WebSocket clients against the gateway.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};

use crate::DEADLINE;

/// A WebSocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects to `url` (the handshake must be accepted).
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("websocket accepted");
    ws
}

/// Connects and expects the handshake to be refused; returns status, body
/// and headers.
pub async fn refused(url: &str) -> (u16, Value, http::HeaderMap) {
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer in time")
    {
        Ok(_) => panic!("connection was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).expect("json body"))
                .unwrap_or(Value::Null);
            (status, body, headers)
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Sends a text frame.
pub async fn send(ws: &mut Ws, frame: &str) {
    ws.send(Message::Text(frame.into())).await.expect("send");
}

/// Sends a JSON value as a text frame.
pub async fn send_json(ws: &mut Ws, value: &Value) {
    send(ws, &value.to_string()).await;
}

/// The next JSON frame, within the deadline.
pub async fn recv(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).expect("json frame");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends request `id` of `action` with `payload`; whether it was
/// acknowledged (frames of earlier requests that arrive first are skipped).
pub async fn submit(ws: &mut Ws, id: &str, action: &str, payload: Value) -> bool {
    send_json(
        ws,
        &serde_json::json!({"request_id": id, "action": action, "payload": payload}),
    )
    .await;
    loop {
        let frame = recv(ws).await;
        if frame["request_id"] == id && frame["type"] != "progress" {
            return frame["type"] == "acknowledgment";
        }
    }
}

/// The next frame of `kind` (`"message"`, `"presence"`, ...), skipping others.
pub async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = recv(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Waits for the server to close; returns the close frame.
pub async fn closed(ws: &mut Ws) -> Option<CloseFrame> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends `{"action":"whoami"}` and returns the caller's connection id.
pub async fn whoami(ws: &mut Ws) -> String {
    send(ws, r#"{"id":"who","action":"whoami"}"#).await;
    let frame = recv(ws).await;
    assert_eq!(frame["type"], "response", "{frame}");
    frame["data"]["connection_id"]
        .as_str()
        .expect("connection id")
        .to_owned()
}

/// Proves a client has no frame pending: an echo round trip returns first.
pub async fn nothing_pending(ws: &mut Ws) {
    send(ws, r#"{"id":"probe","action":"echo"}"#).await;
    let frame = recv(ws).await;
    assert_eq!(
        (frame["type"].clone(), frame["request_id"].clone()),
        (Value::from("response"), Value::from("probe")),
        "{frame}"
    );
}

/// Opens `n` connections to `url` with `concurrency` handshakes at a time.
pub async fn connect_many(url: &str, n: usize, concurrency: usize) -> Vec<Ws> {
    use futures_util::stream;
    // Each socket is a descriptor here and one in the gateway.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    stream::iter(0..n)
        .map(|_| connect(url))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// What [`count_messages`] counts.
#[derive(Debug, Default)]
pub struct Received {
    /// Sockets that got the frame.
    pub once: std::sync::atomic::AtomicUsize,
    /// Frames a socket got again.
    pub again: std::sync::atomic::AtomicUsize,
}

impl Received {
    /// Sockets that got the frame so far.
    pub fn count(&self) -> usize {
        self.once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Duplicates so far.
    pub fn duplicates(&self) -> usize {
        self.again.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts, in the background, the sockets that receive a `message` frame
/// whose `data` equals `data`, and any duplicates.
pub fn count_messages(
    sockets: Vec<Ws>,
    data: Value,
) -> (std::sync::Arc<Received>, Vec<tokio::task::JoinHandle<()>>) {
    use std::sync::atomic::Ordering::Relaxed;
    let received = std::sync::Arc::new(Received::default());
    let tasks = sockets
        .into_iter()
        .map(|mut ws| {
            let received = received.clone();
            let data = data.clone();
            tokio::spawn(async move {
                let mut seen = false;
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message
                        && let Ok(frame) = serde_json::from_str::<Value>(&text)
                        && frame["type"] == "message"
                        && frame["data"] == data
                    {
                        if seen {
                            received.again.fetch_add(1, Relaxed);
                        } else {
                            seen = true;
                            received.once.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    (received, tasks)
}
