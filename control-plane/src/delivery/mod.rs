//! Delivery: getting frames to connections through the API Gateway
//! Management API.
//!
//! Two layers. The [`Delivery`] trait is the transport, one HTTP attempt at
//! a time: on AWS and in the emulator it is [`management_api`]
//! (`PostToConnection` on hyper, signed by [`signer`]; the SDK for the rare
//! `GetConnection` / `DeleteConnection`), in unit tests an in-memory fake.
//! On top, [`fanout::Fanout`] is the policy every send goes through
//! (broadcasts, request relays, presence): one process-wide request budget,
//! a concurrency that adapts to 429s, retries within a deadline, and fair
//! turns between broadcasts. [`broadcast`], [`presence`] and [`reconcile`]
//! use it.

pub mod broadcast;
#[cfg(test)]
pub mod fake;
pub mod fanout;
pub mod idempotency;
pub mod management_api;
pub mod own_endpoints;
pub mod presence;
pub mod reconcile;
pub mod signer;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::error::DeliveryError;

/// Whether a 410 for a connection made at `connected_at_ms` means it is
/// gone. API Gateway answers `GoneException` for a connection whose
/// `$connect` has not returned yet (the row is written during `$connect`,
/// the socket opens after it), so a send or a reconcile check within
/// `grace` of the connect must not remove the row
/// (`STREAMER_DELIVERY_CONNECTING_GRACE_MS`; `$connect` finishes within
/// the control plane's 4 s budget, the default 10 s leaves room for the
/// Lambda around it).
pub fn gone_for_good(connected_at_ms: i64, now_ms: i64, grace: std::time::Duration) -> bool {
    now_ms.saturating_sub(connected_at_ms) > crate::clock::ms(grace)
}

/// What happened to one frame sent to one connection, in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The gateway accepted the frame.
    Delivered,
    /// The gateway no longer has the connection (410).
    Gone,
    /// Still throttled (429) when the deadline came.
    Throttled,
    /// The frame is over the gateway's size limit (413).
    TooLarge,
    /// Any other failure, after every attempt that made sense.
    Failed,
}

/// What one HTTP attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Final: the attempt settled the recipient's outcome.
    Done(Outcome),
    /// Throttled (429 / `LimitExceededException`): slow down and retry.
    Throttled,
    /// A failure another attempt may not have (5xx, timeout, connection
    /// refused).
    Retryable,
}

/// What one batch call gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAttempt {
    /// The gateway answered for each id: these are gone, every other id
    /// named was delivered.
    Answered {
        /// Ids the gateway does not have.
        gone: Vec<String>,
    },
    /// The call as a whole gave this, for every id it named (throttled,
    /// retryable, too large, refused).
    Whole(Attempt),
}

/// A Management API endpoint (`https://{domain}/{stage}`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint as the registry stores it.
    pub raw: Arc<str>,
    /// `https` (else `http`).
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// The path before `/@connections` (the stage), without a trailing `/`.
    pub base_path: String,
}

impl Endpoint {
    /// Parses `raw`; `None` when it is not an `http(s)://authority/path` URL.
    pub fn parse(raw: &str) -> Option<Self> {
        let (https, rest) = if let Some(rest) = raw.strip_prefix("https://") {
            (true, rest)
        } else {
            (false, raw.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return None;
        }
        Some(Self {
            raw: Arc::from(raw),
            https,
            authority: authority.to_owned(),
            base_path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// A frame ready to send: its bytes and their SHA-256 (the same for every
/// recipient, so hashed once).
#[derive(Debug, Clone)]
pub struct PreparedFrame {
    /// The body.
    pub bytes: Bytes,
    /// Hex SHA-256 of the body.
    pub hash: String,
}

impl PreparedFrame {
    /// Prepares `bytes`.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            hash: signer::payload_hash(&bytes),
            bytes,
        }
    }
}

/// The gateway's Management API, one attempt per call.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// One attempt to post `frame` to one connection.
    async fn post(
        &self,
        endpoint: &Endpoint,
        connection_id: &str,
        frame: &PreparedFrame,
    ) -> Attempt;

    /// How many connection ids one [`Delivery::post_batch`] to `endpoint`
    /// may name: 0 when the endpoint has no batch call (API Gateway; or
    /// batching is off), else what its gateway announced, capped by
    /// `STREAMER_DELIVERY_BATCH_SIZE`. Found out once per endpoint.
    async fn batch_limit(&self, endpoint: &Endpoint) -> usize;

    /// One attempt to post `frame` to every connection of `connection_ids`
    /// at `endpoint` in a single call (Streamer's own gateway's batch
    /// call).
    async fn post_batch(
        &self,
        endpoint: &Endpoint,
        connection_ids: &[Arc<str>],
        frame: &PreparedFrame,
    ) -> BatchAttempt;

    /// Closes a connection at the gateway; `Ok(false)` when the gateway had
    /// already forgotten it.
    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError>;

    /// Whether the gateway still has a connection (`Ok(false)` on 410).
    async fn is_connected(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> Result<bool, DeliveryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_into_their_parts() {
        let e =
            Endpoint::parse("https://abc.execute-api.eu-west-1.amazonaws.com/prod").expect("aws");
        assert!(e.https);
        assert_eq!(e.authority, "abc.execute-api.eu-west-1.amazonaws.com");
        assert_eq!(e.base_path, "/prod");
        let e = Endpoint::parse("http://127.0.0.1:8080/local/").expect("local");
        assert_eq!(
            (e.https, e.authority.as_str(), e.base_path.as_str()),
            (false, "127.0.0.1:8080", "/local")
        );
        assert!(Endpoint::parse("ftp://x/y").is_none());
        assert!(Endpoint::parse("http://user@host/x").is_none());
        assert!(Endpoint::parse("http:///x").is_none());
    }
}
