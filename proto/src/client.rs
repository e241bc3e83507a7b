//! The client WebSocket protocol: the JSON envelope clients send and the
//! frames the server sends back. Internal error text never goes into a frame.

use std::{collections::HashMap, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ids;

/// Error codes a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidAction,
    NotFound,
    Unauthorized,
    Forbidden,
    RateLimited,
    DuplicateRequest,
    PayloadTooLarge,
    InternalError,
    Timeout,
    ServiceUnavailable,
    ProcessingFailed,
}

/// An error as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A human-readable message written for the client.
    pub message: String,
    /// Structured detail (e.g. schema violations), if any.
    pub details: Option<Value>,
    /// When to retry (for `RATE_LIMITED`).
    pub retry_after: Option<Duration>,
}

impl ClientError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// `VALIDATION_ERROR` with a message.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    /// `RATE_LIMITED`, retry after `wait` (reported in whole seconds, at least 1).
    pub fn rate_limited(wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(ErrorCode::RateLimited, "rate limit exceeded; slow down")
        }
    }

    /// The `error` object of a frame or HTTP body.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        if let Some(details) = &self.details {
            error.insert("details".into(), details.clone());
        }
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            error.insert("retry".into(), json!({ "after": secs.max(1) }));
        }
        Value::Object(error)
    }
}

/// RFC 3339 timestamp with milliseconds, UTC.
pub fn timestamp_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// RFC 3339 timestamp of milliseconds since the epoch.
pub fn timestamp_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An `error` frame.
pub fn error_frame(request_id: Option<&str>, error: &ClientError) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), json!("error"));
    if let Some(id) = request_id {
        frame.insert("request_id".into(), json!(id));
    }
    frame.insert("error".into(), error.to_json());
    frame.insert("timestamp".into(), json!(timestamp_now()));
    Value::Object(frame).to_string()
}

/// A successful `response` frame.
pub fn response_frame(request_id: &str, data: &Value) -> String {
    json!({ "type": "response", "request_id": request_id, "success": true, "data": data })
        .to_string()
}

/// A `pong` frame answering `ping`.
pub fn pong_frame(request_id: &str) -> String {
    json!({ "type": "pong", "request_id": request_id, "timestamp": timestamp_now() }).to_string()
}

/// A broadcast `message` frame.
pub fn message_frame(data: &Value, topic: Option<&str>) -> String {
    let mut frame = Map::new();
    frame.insert("type".into(), json!("message"));
    frame.insert("data".into(), data.clone());
    if let Some(topic) = topic {
        frame.insert("topic".into(), json!(topic));
    }
    frame.insert("timestamp".into(), json!(timestamp_now()));
    Value::Object(frame).to_string()
}

/// A parsed and validated client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The client's id, or a generated one.
    pub request_id: String,
    /// The action name (syntax already checked).
    pub action: String,
    /// The payload (`null` when absent).
    pub payload: Value,
    /// Client metadata; never trusted for identity.
    pub metadata: HashMap<String, String>,
}

/// Reads just the request id of a frame, without validating the rest; used to
/// label errors for frames refused before parsing (too large, rate limited).
pub fn peek_request_id(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Ids {
        id: Option<Value>,
        request_id: Option<Value>,
    }
    let ids: Ids = serde_json::from_str(body).ok()?;
    [ids.id, ids.request_id]
        .into_iter()
        .flatten()
        .find_map(|v| match v {
            Value::String(s) if ids::valid_request_id(&s) => Some(s),
            _ => None,
        })
}

/// Parses a client frame. On failure returns the request id (when the client
/// gave a usable one) with the error.
pub fn parse_envelope(body: &str) -> Result<Envelope, (Option<String>, ClientError)> {
    let value: Value = serde_json::from_str(body)
        .map_err(|_| (None, ClientError::validation("message is not valid JSON")))?;
    let Value::Object(mut object) = value else {
        return Err((
            None,
            ClientError::validation("message must be a JSON object"),
        ));
    };

    let id = object.remove("id");
    let alias = object.remove("request_id");
    let request_id = match (id, alias) {
        (Some(a), Some(b)) if a != b => {
            return Err((
                None,
                ClientError::validation("id and request_id differ; send one of them"),
            ));
        }
        (Some(v), _) | (None, Some(v)) => match v {
            Value::String(s) if ids::valid_request_id(&s) => Some(s),
            Value::String(s) => {
                // Echo a bad id back only when it is short enough to be useful.
                let echo = (s.chars().count() <= 256).then_some(s);
                return Err((
                    echo,
                    ClientError::validation(format!(
                        "request id must be 1 to {} characters without control characters",
                        ids::MAX_ID_LEN
                    )),
                ));
            }
            Value::Null => None,
            _ => return Err((None, ClientError::validation("request id must be a string"))),
        },
        (None, None) => None,
    };
    let fail = |error: ClientError| (request_id.clone(), error);

    let action = match object.remove("action") {
        None | Some(Value::Null) => {
            return Err(fail(ClientError::validation("action is required")));
        }
        Some(Value::String(action)) if ids::valid_action(&action) => action,
        Some(Value::String(_)) => {
            return Err(fail(ClientError::validation(
                "action must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
            )));
        }
        Some(_) => return Err(fail(ClientError::validation("action must be a string"))),
    };

    let metadata = match object.remove("metadata") {
        None | Some(Value::Null) => HashMap::new(),
        Some(Value::Object(map)) => {
            let mut out = HashMap::with_capacity(map.len());
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        out.insert(k, s);
                    }
                    _ => {
                        return Err(fail(ClientError::validation(
                            "metadata values must be strings",
                        )));
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(fail(ClientError::validation(
                "metadata must be an object of strings",
            )));
        }
    };

    let payload = object.remove("payload").unwrap_or(Value::Null);
    let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    Ok(Envelope {
        request_id,
        action,
        payload,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> (Option<String>, ErrorCode, String) {
        let (id, e) = parse_envelope(body).expect_err("should fail");
        (id, e.code, e.message)
    }

    #[test]
    fn parses_the_original_envelope() {
        let env =
            parse_envelope(r#"{"id":"r1","action":"echo","payload":{"a":1},"metadata":{"k":"v"}}"#)
                .expect("ok");
        assert_eq!(env.request_id, "r1");
        assert_eq!(env.action, "echo");
        assert_eq!(env.payload, json!({"a":1}));
        assert_eq!(env.metadata.get("k").map(String::as_str), Some("v"));
        let env = parse_envelope(r#"{"request_id":"r2","action":"echo"}"#).expect("alias");
        assert_eq!(env.request_id, "r2");
        assert_eq!(env.payload, Value::Null);
        let env = parse_envelope(r#"{"action":"echo"}"#).expect("generated id");
        assert_eq!(env.request_id.len(), 36);
    }

    #[test]
    fn errors_carry_the_request_id() {
        assert_eq!(err("{not json").1, ErrorCode::ValidationError);
        assert_eq!(err("[1,2]").1, ErrorCode::ValidationError);
        let (id, code, _) = err(r#"{"id":"r1"}"#);
        assert_eq!(
            (id.as_deref(), code),
            (Some("r1"), ErrorCode::ValidationError)
        );
        let (id, code, msg) = err(r#"{"id":"r1","action":"drop table"}"#);
        assert_eq!(
            (id.as_deref(), code),
            (Some("r1"), ErrorCode::ValidationError)
        );
        assert!(msg.contains("action"));
        let long = "x".repeat(129);
        let (id, code, _) = err(&format!(r#"{{"id":"{long}","action":"echo"}}"#));
        assert_eq!((id, code), (Some(long), ErrorCode::ValidationError));
        let (id, _, _) = err(r#"{"id":"r1","action":"echo","metadata":{"k":1}}"#);
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(
            err(r#"{"id":"a","request_id":"b","action":"echo"}"#).1,
            ErrorCode::ValidationError
        );
        assert_eq!(
            err(r#"{"id":5,"action":"echo"}"#).1,
            ErrorCode::ValidationError
        );
    }

    #[test]
    fn peeks_ids_of_unparsed_frames() {
        assert_eq!(
            peek_request_id(r#"{"id":"r9","action":"x","payload":"yyyy"}"#).as_deref(),
            Some("r9")
        );
        assert_eq!(
            peek_request_id(r#"{"request_id":"r8"}"#).as_deref(),
            Some("r8")
        );
        assert_eq!(peek_request_id("garbage"), None);
    }

    #[test]
    fn frames_have_their_fields() {
        let e = ClientError::rate_limited(Duration::from_millis(1500));
        let frame: Value = serde_json::from_str(&error_frame(Some("r1"), &e)).expect("json");
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["request_id"], "r1");
        assert_eq!(frame["error"]["code"], "RATE_LIMITED");
        assert_eq!(frame["error"]["retry"]["after"], 2);
        let frame: Value =
            serde_json::from_str(&message_frame(&json!({"x":1}), Some("news"))).expect("json");
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["topic"], "news");
        assert!(frame["timestamp"].is_string());
    }
}
