//! Every frame the server sends a client, as one type.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ClientError, ErrorBody, timestamp_now};

/// Join or leave, in a `presence` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEvent {
    /// Someone joined the group.
    Join,
    /// Someone left the group or disconnected.
    Leave,
}

impl PresenceEvent {
    /// The event's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceEvent::Join => "join",
            PresenceEvent::Leave => "leave",
        }
    }
}

/// One join or leave, in a `presence` frame's `changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// Join or leave.
    pub event: PresenceEvent,
    /// Who.
    pub user_id: String,
    /// Which connection.
    pub connection_id: String,
    /// When.
    pub timestamp: String,
}

/// Where a message sits in a stream that keeps history: its offset (gapless,
/// from 1) and the stream's epoch (changes when the stream's history was
/// lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream's name: `tenant`, `user:<id>` or `group:<name>`.
    pub stream: String,
    /// The message's offset in the stream.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

impl StreamPosition {
    /// The id of the message at this position: `{stream}:{epoch}:{offset}`.
    pub fn message_id(&self) -> String {
        format!("{}:{}:{}", self.stream, self.epoch, self.offset)
    }
}

/// A server → client frame. Serialized as a JSON object whose `type` names
/// the variant (`{"type":"response",...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// The answer to a synchronous action.
    Response {
        /// The client's request id.
        request_id: String,
        /// Always true (failures are `error` frames).
        success: bool,
        /// The action's result.
        data: Value,
    },
    /// A failure, about a request when `request_id` is present.
    Error {
        /// The request the error is about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// The code, message and detail.
        error: ErrorBody,
        /// When the error was sent.
        timestamp: String,
    },
    /// The answer to `ping`.
    Pong {
        /// The client's request id.
        request_id: String,
        /// When the pong was sent.
        timestamp: String,
    },
    /// A long-running request was accepted.
    Acknowledgment {
        /// The client's request id.
        request_id: String,
        /// `queued`.
        status: String,
        /// What happens next.
        message: String,
    },
    /// Progress of a long-running request.
    Progress {
        /// The request.
        request_id: String,
        /// 0 to 100.
        percentage: u32,
        /// The current step.
        message: String,
        /// Structured detail from the processor.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<Value>,
        /// When the processor reported it.
        timestamp: String,
    },
    /// A long-running request finished with a result.
    Complete {
        /// The request.
        request_id: String,
        /// The result.
        result: Value,
        /// When it finished.
        timestamp: String,
    },
    /// An application message (a broadcast).
    Message {
        /// The message's id, the same on every copy of it (a live frame, a
        /// recovered one, a retry's): `{stream}:{epoch}:{offset}` for a
        /// stream with history, otherwise one made per Send. A client drops
        /// a second frame with an id it has seen.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        id: String,
        /// The body.
        data: Value,
        /// The sender's topic, for the client to dispatch on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The stream position, when the stream keeps history.
        #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
        position: Option<StreamPosition>,
        /// When it was sent.
        timestamp: String,
    },
    /// Members joined or left a group the client is in: every change
    /// since the group's last presence frame (at most one frame per group
    /// per interval), oldest first, in `changes`; the last of them also in
    /// `event`, `user_id`, `connection_id` and `timestamp`, as a frame for
    /// one change always had it.
    Presence {
        /// The group.
        group: String,
        /// The last change: join or leave.
        event: PresenceEvent,
        /// The last change: who.
        user_id: String,
        /// The last change: which connection.
        connection_id: String,
        /// The last change: when.
        timestamp: String,
        /// Every change, oldest first.
        changes: Vec<PresenceChange>,
        /// Changes were left out (more than a frame carries): list the
        /// members to know where things stand.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A piece of a frame too large for one gateway message: the client
    /// joins the pieces and handles the frame they make
    /// ([`super::chunk`]).
    Chunk {
        /// Names the frame; the same in every piece.
        chunk_id: String,
        /// The piece's position, from 0.
        index: u32,
        /// How many pieces there are.
        count: u32,
        /// The piece of the frame's JSON text.
        data: String,
    },
}

impl Frame {
    /// A successful `response`.
    pub fn response(request_id: &str, data: Value) -> Self {
        Frame::Response {
            request_id: request_id.to_owned(),
            success: true,
            data,
        }
    }

    /// An `error` frame.
    pub fn error(request_id: Option<&str>, error: &ClientError) -> Self {
        Frame::Error {
            request_id: request_id.map(str::to_owned),
            error: error.body(),
            timestamp: timestamp_now(),
        }
    }

    /// The `pong` answering `ping`.
    pub fn pong(request_id: &str) -> Self {
        Frame::Pong {
            request_id: request_id.to_owned(),
            timestamp: timestamp_now(),
        }
    }

    /// The acknowledgment of a queued request.
    pub fn acknowledgment(request_id: &str) -> Self {
        Frame::Acknowledgment {
            request_id: request_id.to_owned(),
            status: "queued".to_owned(),
            message: "request accepted; progress and the result follow".to_owned(),
        }
    }

    /// A `progress` frame.
    pub fn progress(
        request_id: &str,
        percentage: u32,
        message: &str,
        details: Option<Value>,
    ) -> Self {
        Frame::Progress {
            request_id: request_id.to_owned(),
            percentage,
            message: message.to_owned(),
            details,
            timestamp: timestamp_now(),
        }
    }

    /// A `complete` frame.
    pub fn complete(request_id: &str, result: Value) -> Self {
        Frame::Complete {
            request_id: request_id.to_owned(),
            result,
            timestamp: timestamp_now(),
        }
    }

    /// A broadcast `message`.
    pub fn message(data: Value, topic: Option<&str>, position: Option<StreamPosition>) -> Self {
        Frame::Message {
            id: position
                .as_ref()
                .map(StreamPosition::message_id)
                .unwrap_or_default(),
            data,
            topic: topic.map(str::to_owned),
            position,
            timestamp: timestamp_now(),
        }
    }

    /// A `presence` frame for one change.
    pub fn presence(group: &str, event: PresenceEvent, user_id: &str, connection_id: &str) -> Self {
        let change = PresenceChange {
            event,
            user_id: user_id.to_owned(),
            connection_id: connection_id.to_owned(),
            timestamp: timestamp_now(),
        };
        Self::presence_changes(group, vec![change], false)
    }

    /// A `presence` frame carrying `changes` (at least one).
    pub fn presence_changes(group: &str, changes: Vec<PresenceChange>, truncated: bool) -> Self {
        let last = changes.last().cloned().unwrap_or(PresenceChange {
            event: PresenceEvent::Leave,
            user_id: String::new(),
            connection_id: String::new(),
            timestamp: timestamp_now(),
        });
        Frame::Presence {
            group: group.to_owned(),
            event: last.event,
            user_id: last.user_id,
            connection_id: last.connection_id,
            timestamp: last.timestamp,
            changes,
            truncated,
        }
    }

    /// A `chunk` frame carrying `chunk`.
    pub fn chunk(chunk: &super::chunk::Chunk) -> Self {
        Frame::Chunk {
            chunk_id: chunk.chunk_id.clone(),
            index: chunk.index,
            count: chunk.count,
            data: chunk.data.clone(),
        }
    }

    /// The frame as JSON text, ready to send.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn value(frame: &Frame) -> Value {
        serde_json::from_str(&frame.to_json()).expect("json")
    }

    #[test]
    fn frames_have_their_fields() {
        let e = ClientError::rate_limited(Duration::from_millis(1500));
        let frame = value(&Frame::error(Some("r1"), &e));
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["request_id"], "r1");
        assert_eq!(frame["error"]["code"], "RATE_LIMITED");
        assert_eq!(frame["error"]["retry"]["after"], 2);
        assert!(value(&Frame::error(None, &e)).get("request_id").is_none());

        let frame = value(&Frame::message(json!({"x":1}), Some("news"), None));
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["topic"], "news");
        assert!(frame["timestamp"].is_string());
        assert!(frame.get("offset").is_none());

        let position = StreamPosition {
            stream: "group:room-1".into(),
            offset: 42,
            epoch: "e1".into(),
        };
        let frame = value(&Frame::message(json!("hi"), None, Some(position.clone())));
        assert_eq!(frame["stream"], "group:room-1");
        assert_eq!(frame["offset"], 42);
        assert_eq!(frame["epoch"], "e1");
        let back: Frame = serde_json::from_value(frame).expect("parse");
        assert!(matches!(back, Frame::Message { position: Some(p), .. } if p == position));

        let frame = value(&Frame::response("r2", json!({"ok": true})));
        assert_eq!(
            frame,
            json!({"type":"response","request_id":"r2","success":true,"data":{"ok":true}})
        );
        let frame = value(&Frame::presence("g", PresenceEvent::Leave, "u", "c"));
        assert_eq!(frame["event"], "leave");
        assert_eq!(frame["changes"][0]["connection_id"], "c");
        assert!(frame.get("truncated").is_none());
        let frame = value(&Frame::acknowledgment("r3"));
        assert_eq!(frame["status"], "queued");
        let frame = value(&Frame::progress("r4", 50, "half", None));
        assert!(frame.get("details").is_none());
    }
}
