//! An in-memory gateway for unit tests: connections that are "open" receive
//! frames, everything else is gone (410), and every call is recorded.

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;

use std::sync::Arc;

use super::{Attempt, BatchAttempt, Delivery, DeliveryError, Endpoint, Outcome, PreparedFrame};

/// A fake Management API.
#[derive(Debug, Default)]
pub struct FakeGateway {
    open: DashMap<String, Vec<Bytes>>,
    unreachable: Mutex<bool>,
    deleted: Mutex<Vec<String>>,
    calls: std::sync::atomic::AtomicUsize,
    /// Ids per batch call it offers (0: none, as API Gateway).
    batch: std::sync::atomic::AtomicUsize,
    /// Ids named by each batch call made.
    batches: Mutex<Vec<usize>>,
    /// Answer every batch call with this instead (a throttle, say).
    batch_answer: Mutex<Option<Attempt>>,
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

    /// Offers a batch call of at most `ids` ids (0: none).
    pub fn offer_batches(&self, ids: usize) {
        self.batch.store(ids, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers every post and batch call with `attempt` (`None`: per id,
    /// as the connections are).
    pub fn answer_all_with(&self, attempt: Option<Attempt>) {
        if let Ok(mut a) = self.batch_answer.lock() {
            *a = attempt;
        }
    }

    /// How many ids each batch call named, in order.
    pub fn batches(&self) -> Vec<usize> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
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
        if let Some(attempt) = self.batch_answer.lock().ok().and_then(|a| *a) {
            return attempt;
        }
        match self.open.get_mut(connection_id) {
            Some(mut frames) => {
                frames.push(frame.bytes.clone());
                Attempt::Done(Outcome::Delivered)
            }
            None => Attempt::Done(Outcome::Gone),
        }
    }

    async fn batch_limit(&self, _endpoint: &Endpoint) -> usize {
        self.batch.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn post_batch(
        &self,
        _endpoint: &Endpoint,
        connection_ids: &[Arc<str>],
        frame: &PreparedFrame,
    ) -> BatchAttempt {
        self.called();
        if let Ok(mut b) = self.batches.lock() {
            b.push(connection_ids.len());
        }
        if self.unreachable() {
            return BatchAttempt::Whole(Attempt::Retryable);
        }
        if connection_ids.len() > self.batch.load(std::sync::atomic::Ordering::Relaxed) {
            return BatchAttempt::Whole(Attempt::Done(Outcome::Failed));
        }
        if let Some(attempt) = self.batch_answer.lock().ok().and_then(|a| *a) {
            return BatchAttempt::Whole(attempt);
        }
        let mut gone = Vec::new();
        for id in connection_ids {
            match self.open.get_mut(&**id) {
                Some(mut frames) => frames.push(frame.bytes.clone()),
                None => gone.push(id.to_string()),
            }
        }
        BatchAttempt::Answered { gone }
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
