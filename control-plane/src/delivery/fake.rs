//! An in-memory gateway for unit tests: connections that are "open" receive
//! frames, everything else is gone (410), and every call is recorded.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

use super::{Attempt, Delivery, DeliveryError, Endpoint, Outcome, PreparedFrame};

/// A fake Management API.
#[derive(Debug, Default)]
pub struct FakeGateway {
    open: DashMap<String, Vec<Bytes>>,
    unreachable: Mutex<bool>,
    deleted: Mutex<Vec<String>>,
    calls: std::sync::atomic::AtomicUsize,
}

impl FakeGateway {
    /// A gateway with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a connection.
    pub fn open(&self, connection_id: &str) {
        self.open.insert(connection_id.to_owned(), Vec::new());
    }

    /// Forgets a connection (its `$disconnect` got lost).
    pub fn forget(&self, connection_id: &str) {
        self.open.remove(connection_id);
    }

    /// Makes every call fail as if the endpoint refused connections.
    pub fn set_unreachable(&self, unreachable: bool) {
        if let Ok(mut u) = self.unreachable.lock() {
            *u = unreachable;
        }
    }

    fn unreachable(&self) -> bool {
        self.unreachable.lock().map(|u| *u).unwrap_or(false)
    }

    /// The frames a connection received, as text.
    pub fn received(&self, connection_id: &str) -> Vec<String> {
        self.open
            .get(connection_id)
            .map(|frames| {
                frames
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls made so far, of every kind.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn called(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Connections closed through `delete`.
    pub fn deleted(&self) -> Vec<String> {
        self.deleted.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Delivery for FakeGateway {
    async fn post(
        &self,
        _endpoint: &Endpoint,
        connection_id: &str,
        frame: &PreparedFrame,
    ) -> Attempt {
        self.called();
        if self.unreachable() {
            return Attempt::Retryable;
        }
        match self.open.get_mut(connection_id) {
            Some(mut frames) => {
                frames.push(frame.bytes.clone());
                Attempt::Done(Outcome::Delivered)
            }
            None => Attempt::Done(Outcome::Gone),
        }
    }

    async fn delete(&self, _endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError> {
        self.called();
        if self.unreachable() {
            return Err(DeliveryError("connection refused".into()));
        }
        if let Ok(mut deleted) = self.deleted.lock() {
            deleted.push(connection_id.to_owned());
        }
        Ok(self.open.remove(connection_id).is_some())
    }

    async fn is_connected(
        &self,
        _endpoint: &str,
        connection_id: &str,
    ) -> Result<bool, DeliveryError> {
        self.called();
        if self.unreachable() {
            return Err(DeliveryError("connection refused".into()));
        }
        Ok(self.open.contains_key(connection_id))
    }
}
