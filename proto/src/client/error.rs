//! The error codes a client can see and the `error` object of a frame.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error codes a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    Cancelled,
}

impl ErrorCode {
    /// Every code, in the order the documentation lists them.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::ValidationError,
        ErrorCode::InvalidAction,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::DuplicateRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InternalError,
        ErrorCode::Timeout,
        ErrorCode::ServiceUnavailable,
        ErrorCode::ProcessingFailed,
        ErrorCode::Cancelled,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::InvalidAction => "INVALID_ACTION",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::DuplicateRequest => "DUPLICATE_REQUEST",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::ProcessingFailed => "PROCESSING_FAILED",
            ErrorCode::Cancelled => "CANCELLED",
        }
    }

    /// The code in lowercase, as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCode::ValidationError => "validation_error",
            ErrorCode::InvalidAction => "invalid_action",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::DuplicateRequest => "duplicate_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::ProcessingFailed => "processing_failed",
            ErrorCode::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the protocol's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == s)
            .ok_or_else(|| UnknownCode(s.to_owned()))
    }
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

    /// The same error with structured detail.
    pub fn with_details(self, details: Value) -> Self {
        Self {
            details: Some(details),
            ..self
        }
    }

    /// The whole seconds a client is told to wait (rounded up, at least 1),
    /// the same number in the frame and in an HTTP `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|wait| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
    }

    /// The `error` object of a frame or HTTP body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
            details: self.details.clone(),
            retry: self.retry_after_secs().map(|after| Retry { after }),
        }
    }

    /// The `error` object as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.body()).unwrap_or(Value::Null)
    }
}

/// The `error` object of an `error` frame (and of a refused `$connect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A message written for the client.
    pub message: String,
    /// Structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// When to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// When a client may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Whole seconds to wait.
    pub after: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(
                serde_json::to_value(code).expect("json"),
                Value::from(code.as_str())
            );
        }
        assert!("NOPE".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn the_client_protocol_page_lists_every_code() {
        let page = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/client-protocol.md"),
        )
        .expect("docs/client-protocol.md");
        for code in ErrorCode::ALL {
            assert!(
                page.contains(&format!("| `{}` |", code.as_str())),
                "docs/client-protocol.md does not list {}",
                code.as_str()
            );
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let e = ClientError::rate_limited(Duration::from_millis(5_001));
        assert_eq!(e.retry_after_secs(), Some(6));
        assert_eq!(e.to_json()["retry"]["after"], 6);
        let e = ClientError::rate_limited(Duration::from_millis(10));
        assert_eq!(e.retry_after_secs(), Some(1));
    }
}
