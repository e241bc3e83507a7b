//! Delivery: getting frames to connections through the API Gateway
//! Management API. The [`Delivery`] trait is the edge of the room (the
//! Management API on AWS and in the emulator, an in-memory fake in tests);
//! on top of it sit broadcast fan-out ([`broadcast`]), presence
//! announcements ([`presence`]) and the stale-connection reconcile
//! ([`reconcile`]).

pub mod broadcast;
#[cfg(test)]
pub mod fake;
pub mod management_api;
pub mod presence;
pub mod reconcile;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::error::DeliveryError;

/// What happened to one frame sent to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The gateway accepted the frame.
    Delivered,
    /// The gateway no longer has the connection (410).
    Gone,
    /// Still throttled (429) after every attempt.
    Throttled,
    /// The frame is over the gateway's size limit (413).
    TooLarge,
    /// Any other failure, after every attempt that made sense.
    Failed,
}

/// The gateway's Management API, as delivery needs it.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// Posts `frame` to one connection, retrying what is worth retrying.
    async fn post(&self, endpoint: &str, connection_id: &str, frame: Bytes) -> Outcome;

    /// Closes a connection at the gateway; `Ok(false)` when the gateway had
    /// already forgotten it.
    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError>;

    /// Whether the gateway still has a connection (`Ok(false)` on 410).
    async fn is_connected(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> Result<bool, DeliveryError>;

    /// Calls in flight per broadcast.
    fn concurrency(&self) -> usize;
}
