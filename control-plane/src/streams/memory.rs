//! History in memory: one bounded ring buffer per stream. Nothing survives
//! a restart, so every process run has its own epoch (a random prefix), and
//! a client that recovers across a restart is told `recovered: false`.
//!
//! A retained message costs its JSON text plus about 80 bytes (the ring
//! slot, the `Value` tree's nodes are kept as parsed JSON).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use async_trait::async_trait;
use serde_json::Value;

use super::{History, HistoryError, Position, Read, Retention, Stored};
use crate::clock::ms;

struct Ring {
    last: u64,
    messages: VecDeque<Stored>,
}

/// The embedded history.
pub struct MemoryHistory {
    epoch: String,
    retention: Retention,
    streams: Mutex<HashMap<(String, String), Ring>>,
}

impl std::fmt::Debug for MemoryHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHistory")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl MemoryHistory {
    /// An empty history with `retention`, in a new epoch.
    pub fn new(retention: Retention) -> Self {
        Self {
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            retention,
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn trim(&self, ring: &mut Ring, now_ms: i64) {
        let oldest = now_ms - ms(self.retention.ttl);
        while ring
            .messages
            .front()
            .is_some_and(|m| m.at_ms <= oldest || ring.messages.len() as u64 > self.retention.size)
        {
            ring.messages.pop_front();
        }
    }
}

fn poisoned<T>(_: T) -> HistoryError {
    HistoryError("history lock poisoned".into())
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        data: &Value,
        topic: Option<&str>,
        now_ms: i64,
        // In one process an append always answers what it did: a retry
        // after a refusal stored nothing, so the Send's key is enough.
        _once: Option<(&str, std::time::Duration)>,
    ) -> Result<Position, HistoryError> {
        let mut streams = self.streams.lock().map_err(poisoned)?;
        let ring = streams
            .entry((tenant.to_owned(), stream.to_owned()))
            .or_insert_with(|| Ring {
                last: 0,
                messages: VecDeque::new(),
            });
        ring.last += 1;
        ring.messages.push_back(Stored {
            offset: ring.last,
            data: data.clone(),
            topic: topic.map(str::to_owned),
            at_ms: now_ms,
        });
        let offset = ring.last;
        self.trim(ring, now_ms);
        Ok(Position {
            offset,
            epoch: self.epoch.clone(),
        })
    }

    async fn position(&self, tenant: &str, stream: &str) -> Result<Position, HistoryError> {
        let streams = self.streams.lock().map_err(poisoned)?;
        Ok(Position {
            offset: streams
                .get(&(tenant.to_owned(), stream.to_owned()))
                .map_or(0, |r| r.last),
            epoch: self.epoch.clone(),
        })
    }

    async fn read(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        limit: usize,
        now_ms: i64,
    ) -> Result<Read, HistoryError> {
        let mut streams = self.streams.lock().map_err(poisoned)?;
        let position = |last| Position {
            offset: last,
            epoch: self.epoch.clone(),
        };
        let Some(ring) = streams.get_mut(&(tenant.to_owned(), stream.to_owned())) else {
            return Ok(Read {
                messages: Vec::new(),
                position: position(0),
                complete: since == 0,
            });
        };
        self.trim(ring, now_ms);
        let first_kept = ring.messages.front().map_or(ring.last + 1, |m| m.offset);
        let messages: Vec<Stored> = ring
            .messages
            .iter()
            .filter(|m| m.offset > since)
            .take(limit)
            .cloned()
            .collect();
        Ok(Read {
            complete: since + 1 >= first_kept && since <= ring.last,
            messages,
            position: position(ring.last),
        })
    }
}
