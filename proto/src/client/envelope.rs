//! Parsing what clients send: the JSON envelope
//! `{"id", "action", "payload", "metadata"}`, strictly (a repeated key is an
//! error, not "the last one wins").

use std::collections::HashMap;

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value};

use super::ClientError;
use crate::ids;

/// JSON text as a [`Value`], refusing any object that repeats a key (at any
/// depth). `serde_json` keeps the last of repeated keys, so
/// `{"action":"echo","action":"whoami"}` would otherwise run `whoami` while a
/// proxy that keeps the first one saw `echo`.
pub fn strict_json(text: &str) -> Result<Value, serde_json::Error> {
    let StrictValue(value) = serde_json::from_str(text)?;
    Ok(value)
}

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(object))
    }
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
    let value = strict_json(body).map_err(|err| {
        let message = if err.to_string().starts_with("duplicate key") {
            "message repeats a key; send each key once"
        } else {
            "message is not valid JSON"
        };
        (None, ClientError::validation(message))
    })?;
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
            Value::String(_) => {
                // A bad id is never echoed back: it may be huge or hostile.
                return Err((
                    None,
                    ClientError::validation(format!(
                        "request id must be 1 to {} characters, without control characters or surrounding spaces",
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
    use serde_json::json;

    use super::*;
    use crate::client::ErrorCode;

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
        assert_eq!(
            (id, code),
            (None, ErrorCode::ValidationError),
            "a bad id is never echoed"
        );
        assert_eq!(err(r#"{"id":" padded ","action":"echo"}"#).0, None);
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
    fn repeated_keys_are_refused_at_any_depth() {
        let (id, e) = parse_envelope(r#"{"action":"echo","action":"whoami"}"#).expect_err("dup");
        assert_eq!((id, e.code), (None, ErrorCode::ValidationError));
        assert!(e.message.contains("repeats a key"), "{}", e.message);
        assert!(parse_envelope(r#"{"action":"echo","payload":{"a":1,"a":2}}"#).is_err());
        assert!(parse_envelope(r#"{"action":"echo","payload":[{"a":1},{"a":2}]}"#).is_ok());
        assert_eq!(
            strict_json(r#"{"n":1.5,"big":18446744073709551615,"neg":-3,"s":"x","z":null}"#)
                .expect("parse"),
            serde_json::json!({"n":1.5,"big":18446744073709551615u64,"neg":-3,"s":"x","z":null})
        );
    }
}
