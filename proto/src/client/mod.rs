//! The client WebSocket protocol: the JSON envelope clients send
//! ([`envelope`]), the frames the server sends back ([`Frame`]) and the error
//! codes a client can see ([`ErrorCode`]). Every server → client frame is a
//! [`Frame`]; nothing else in the system writes frame JSON by hand, and no
//! internal error text ever goes into one.

pub mod chunk;
mod envelope;
mod error;
mod frame;

pub use envelope::{Envelope, parse_envelope, peek_request_id, strict_json};
pub use error::{ClientError, ErrorBody, ErrorCode, Retry};
pub use frame::{Frame, PresenceChange, PresenceEvent, StreamPosition};

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
