//! A WebSocket client of the client protocol (docs/client-protocol.md),
//! for Rust programs that talk to Streamer as a user would: connect with a
//! token, send actions, read frames.
//!
//! Messages past API Gateway's limits are transparent: a message over
//! [`SocketOptions::max_frame_bytes`] (default 32,000; a browser frame is
//! capped at 32 KB) goes as `chunk` frames the control plane joins, and the
//! server's `chunk` frames are joined before [`Socket::recv`] returns the
//! frame they make.
//!
//! ```no_run
//! # async fn run() -> Result<(), streamer_client::socket::SocketError> {
//! use streamer_client::socket::Socket;
//! let mut socket = Socket::connect("ws://127.0.0.1:8080/local", "<jwt>").await?;
//! let id = socket.request("echo", serde_json::json!({ "hello": "world" })).await?;
//! let reply = socket.recv().await?;
//! assert_eq!(reply["request_id"], id.as_str());
//! socket.close().await;
//! # Ok(()) }
//! ```

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use streamer_proto::client::chunk::{self, CHUNK_ACTION, Chunk, Reassembler};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// The largest message sent whole by default (API Gateway: 32 KB frames).
pub const MAX_FRAME_BYTES: usize = 32_000;

/// How a [`Socket`] connects.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Join the server's `chunk` frames (default true); with false the
    /// socket connects with `chunks=false` and a frame over the gateway's
    /// limit arrives as a `PAYLOAD_TOO_LARGE` error instead.
    pub chunks: bool,
    /// The largest message sent whole; larger ones go as chunks.
    pub max_frame_bytes: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            chunks: true,
            max_frame_bytes: MAX_FRAME_BYTES,
        }
    }
}

/// Why a socket call failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The handshake was refused with this HTTP status (401: bad token;
    /// 429: too many connects; 503: unavailable).
    #[error("connection refused with HTTP {0}")]
    Refused(u16),
    /// The connection closed (with its close code, if any).
    #[error("connection closed{}", .0.map(|c| format!(" ({c})")).unwrap_or_default())]
    Closed(Option<u16>),
    /// A transport failure.
    #[error("websocket: {0}")]
    Transport(String),
    /// The server sent something that is not a JSON frame.
    #[error("unexpected frame: {0}")]
    Protocol(String),
}

fn transport(err: tokio_tungstenite::tungstenite::Error) -> SocketError {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            SocketError::Refused(response.status().as_u16())
        }
        tokio_tungstenite::tungstenite::Error::ConnectionClosed
        | tokio_tungstenite::tungstenite::Error::AlreadyClosed => SocketError::Closed(None),
        other => SocketError::Transport(other.to_string()),
    }
}

/// One connection.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    joiner: Reassembler,
    options: SocketOptions,
    counter: u64,
    seen: Seen,
}

/// The last offset seen of each stream with history, with its epoch.
#[derive(Debug, Default)]
struct Seen(std::collections::HashMap<String, (String, u64)>);

impl Seen {
    /// Records a history message's place; whether it was seen already (at
    /// or below the last offset of its stream, same epoch).
    fn copy(&mut self, frame: &Value) -> bool {
        if frame["type"] != "message" {
            return false;
        }
        let (Some(stream), Some(epoch), Some(offset)) = (
            frame["stream"].as_str(),
            frame["epoch"].as_str(),
            frame["offset"].as_u64(),
        ) else {
            return false;
        };
        match self.0.get_mut(stream) {
            Some((last_epoch, last)) if last_epoch == epoch => {
                if offset <= *last {
                    return true;
                }
                *last = offset;
                false
            }
            _ => {
                self.0.insert(stream.to_owned(), (epoch.to_owned(), offset));
                false
            }
        }
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// Connects to `url` (`ws://` or `wss://`) with `token`.
    pub async fn connect(url: &str, token: &str) -> Result<Self, SocketError> {
        Self::connect_with(url, token, SocketOptions::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(
        url: &str,
        token: &str,
        options: SocketOptions,
    ) -> Result<Self, SocketError> {
        let separator = if url.contains('?') { '&' } else { '?' };
        let chunks = if options.chunks { "" } else { "&chunks=false" };
        let (ws, _) = tokio_tungstenite::connect_async(format!(
            "{url}{separator}token={}{chunks}",
            encode(token)
        ))
        .await
        .map_err(transport)?;
        Ok(Self {
            ws,
            joiner: Reassembler::default(),
            options,
            counter: 0,
            seen: Seen::default(),
        })
    }

    /// Sends `message` (a client envelope: `{"id","action","payload"}`), as
    /// chunks when it is over the frame limit.
    pub async fn send(&mut self, message: &Value) -> Result<(), SocketError> {
        let text = message.to_string();
        let request_id = message
            .get("id")
            .or_else(|| message.get("request_id"))
            .cloned();
        let chunk_id = format!("r{}-{}", std::process::id(), self.next());
        let frames = if self.options.chunks {
            chunk::split(&text, self.options.max_frame_bytes, &chunk_id, |c| {
                chunk_frame(c, request_id.as_ref())
            })
        } else {
            None
        };
        for frame in frames.unwrap_or_else(|| vec![text]) {
            self.ws
                .send(Message::Text(frame.into()))
                .await
                .map_err(transport)?;
        }
        Ok(())
    }

    /// Sends `action` with `payload` under a fresh request id, and returns
    /// the id (replies carry it as `request_id`).
    pub async fn request(&mut self, action: &str, payload: Value) -> Result<String, SocketError> {
        let id = format!("req-{}-{}", std::process::id(), self.next());
        self.send(&json!({ "id": id, "action": action, "payload": payload }))
            .await?;
        Ok(id)
    }

    /// The next frame from the server, chunks joined. A `message` of a
    /// stream with history at or below the last offset seen of that stream
    /// (same epoch) is a copy — a live frame that raced a recovery, a
    /// retried send — and is dropped, whatever caused it.
    pub async fn recv(&mut self) -> Result<Value, SocketError> {
        loop {
            let frame = self.recv_frame().await?;
            if self.seen.copy(&frame) {
                continue;
            }
            return Ok(frame);
        }
    }

    async fn recv_frame(&mut self) -> Result<Value, SocketError> {
        loop {
            let message = match self.ws.next().await {
                None => return Err(SocketError::Closed(None)),
                Some(message) => message.map_err(transport)?,
            };
            let text = match message {
                Message::Text(text) => text.to_string(),
                Message::Close(frame) => {
                    return Err(SocketError::Closed(frame.map(|f| u16::from(f.code))));
                }
                Message::Binary(_) => {
                    return Err(SocketError::Protocol("a binary frame".into()));
                }
                _ => continue,
            };
            let frame: Value = serde_json::from_str(&text)
                .map_err(|_| SocketError::Protocol("a frame that is not JSON".into()))?;
            if frame["type"] != "chunk" {
                return Ok(frame);
            }
            let Ok(piece) = serde_json::from_value::<Chunk>(without_type(frame)) else {
                return Err(SocketError::Protocol("a malformed chunk".into()));
            };
            match self.joiner.add(piece) {
                Ok(None) => {}
                Ok(Some(joined)) => {
                    return serde_json::from_str(&joined).map_err(|_| {
                        SocketError::Protocol("chunks that join into no JSON".into())
                    });
                }
                Err(err) => {
                    return Err(SocketError::Protocol(format!("a chunk refused: {err:?}")));
                }
            }
        }
    }

    /// Closes the connection (1000).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }
}

fn chunk_frame(chunk: &Chunk, request_id: Option<&Value>) -> String {
    let mut frame = json!({ "action": CHUNK_ACTION, "payload": chunk });
    if let Some(id) = request_id {
        frame["id"] = id.clone();
    }
    frame.to_string()
}

fn without_type(mut frame: Value) -> Value {
    if let Some(object) = frame.as_object_mut() {
        object.remove("type");
    }
    frame
}

/// Percent-encodes a token for the query string (JWTs are URL-safe
/// already; anything else is escaped).
fn encode(token: &str) -> String {
    token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod seen_tests {
    use serde_json::json;

    use super::Seen;

    #[test]
    fn a_history_message_at_or_below_the_last_offset_is_a_copy() {
        let mut seen = Seen::default();
        let at = |offset: u64, epoch: &str| json!({"type": "message", "id": format!("group:g:{epoch}:{offset}"), "stream": "group:g", "epoch": epoch, "offset": offset, "data": 1});
        assert!(!seen.copy(&at(1, "e1")));
        assert!(!seen.copy(&at(2, "e1")));
        assert!(seen.copy(&at(2, "e1")), "the same message again");
        assert!(seen.copy(&at(1, "e1")), "an older one");
        assert!(!seen.copy(&at(1, "e2")), "a new epoch starts again");
        // Plain broadcasts and other frames pass.
        let plain = json!({"type": "message", "id": "m-1", "data": 1});
        assert!(!seen.copy(&plain));
        assert!(!seen.copy(&plain));
        assert!(!seen.copy(&json!({"type": "response", "request_id": "r"})));
    }
}
