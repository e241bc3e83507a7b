//! Client messages sent as `chunk` frames (a browser's frame is capped at
//! 32 KB, API Gateway's message at 128 KB): the pieces are kept until the
//! last one arrives, then joined and handled as one message
//! ([`streamer_proto::client::chunk`] says how they are cut).
//!
//! One chunked message per connection at a time, bounded by
//! `STREAMER_CHUNKED_MESSAGE_MAX_BYTES` (default 1 MiB),
//! `_MAX_CHUNKS` (64) and `_TIMEOUT_SECS` (30 s after its first piece). On
//! one machine the pieces wait in memory ([`MemoryChunks`]); with DynamoDB
//! they wait in the chunks table ([`dynamo::DynamoChunks`]), so pieces of
//! one message may reach different replicas, and a message that never
//! completes is removed by the table's TTL. Both pass one conformance
//! suite ([`conformance`]).

pub mod conformance;
pub mod dynamo;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;
use streamer_proto::client::chunk::{Chunk, JoinError, Joiner};

use crate::error::Fault;

/// The bounds of one chunked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Most bytes of joined text.
    pub max_bytes: usize,
    /// Most pieces.
    pub max_chunks: u32,
    /// How long after its first piece a message may complete.
    pub timeout: Duration,
}

/// What adding a piece did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// This piece started the message (it is charged to the message rate
    /// limit; the rest of its pieces are not).
    pub started: bool,
    /// The joined message, when this was the last piece.
    pub joined: Option<String>,
}

/// Why a piece was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The piece is malformed, repeated or does not match its message.
    Refused(JoinError),
    /// The message was not complete within the timeout; it is dropped.
    TimedOut,
    /// The store did not answer.
    Unavailable(String),
}

impl ChunkError {
    /// The error the client sees.
    pub fn fault(&self, limits: &ChunkLimits) -> Fault {
        match self {
            ChunkError::Refused(JoinError::Malformed(why)) => {
                Fault::invalid(format!("chunk: {why}"))
            }
            ChunkError::Refused(JoinError::Interleaved) => Fault::invalid(
                "chunk: another chunked message of this connection is incomplete; send its remaining chunks first (one chunked message at a time)",
            ),
            ChunkError::Refused(JoinError::CountChanged) => {
                Fault::invalid("chunk: count differs from the message's other chunks")
            }
            ChunkError::Refused(JoinError::Duplicate) => {
                Fault::invalid("chunk: this index was already received")
            }
            ChunkError::Refused(JoinError::TooLarge) => Fault::too_large(format!(
                "chunked message exceeds {} bytes or {} chunks; it is dropped",
                limits.max_bytes, limits.max_chunks
            )),
            ChunkError::TimedOut => Fault::invalid(format!(
                "chunked message not complete within {} s; it is dropped, send it again",
                limits.timeout.as_secs()
            )),
            ChunkError::Unavailable(_) => {
                Fault::unavailable("service temporarily unavailable, retry later")
            }
        }
    }

    /// Whether the message the piece belonged to is gone (the client must
    /// send it again from the start).
    pub fn dropped(&self) -> bool {
        matches!(
            self,
            ChunkError::TimedOut | ChunkError::Refused(JoinError::TooLarge)
        )
    }
}

/// Where pieces wait for the rest of their message.
#[async_trait]
pub trait Chunks: Send + Sync + 'static {
    /// Adds `chunk`, a piece of `connection_id`'s chunked message, at
    /// `now_ms`.
    async fn add(
        &self,
        connection_id: &str,
        chunk: Chunk,
        now_ms: i64,
    ) -> Result<Added, ChunkError>;

    /// Drops the message `connection_id` is sending, if any (it
    /// disconnected, or the message was refused).
    async fn forget(&self, connection_id: &str);

    /// The connection is gone: drop what it left half-way (the default
    /// forgets; a store with a TTL may leave it to the TTL).
    async fn disconnected(&self, connection_id: &str) {
        self.forget(connection_id).await;
    }

    /// The bounds every message is held to.
    fn limits(&self) -> &ChunkLimits;
}

struct Partial {
    joiner: Joiner,
    started_ms: i64,
}

/// The embedded store: pieces in memory, at most one message per
/// connection, dropped on disconnect, on completion, or when found expired.
pub struct MemoryChunks {
    limits: ChunkLimits,
    partials: Mutex<(HashMap<String, Partial>, i64)>,
}

impl std::fmt::Debug for MemoryChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryChunks")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MemoryChunks {
    /// An empty store holding messages to `limits`.
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            limits,
            partials: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Messages being joined (for tests of the bounds).
    pub fn pending(&self) -> usize {
        self.partials.lock().map(|p| p.0.len()).unwrap_or(0)
    }
}

fn expired(started_ms: i64, now_ms: i64, timeout: Duration) -> bool {
    now_ms.saturating_sub(started_ms) > crate::clock::ms(timeout)
}

#[async_trait]
impl Chunks for MemoryChunks {
    async fn add(
        &self,
        connection_id: &str,
        chunk: Chunk,
        now_ms: i64,
    ) -> Result<Added, ChunkError> {
        let limits = self.limits;
        let mut guard = self
            .partials
            .lock()
            .map_err(|_| ChunkError::Unavailable("poisoned".into()))?;
        let (partials, last_sweep) = &mut *guard;
        // Messages that never complete cost memory only until the next
        // sweep (at most one per timeout).
        if now_ms.saturating_sub(*last_sweep) > crate::clock::ms(limits.timeout) {
            partials.retain(|id, p| {
                id == connection_id || !expired(p.started_ms, now_ms, limits.timeout)
            });
            *last_sweep = now_ms;
        }
        let mut started = false;
        if let Some(partial) = partials.get(connection_id)
            && expired(partial.started_ms, now_ms, limits.timeout)
        {
            let same = partial.joiner.chunk_id() == chunk.chunk_id;
            partials.remove(connection_id);
            if same {
                return Err(ChunkError::TimedOut);
            }
        }
        let partial = match partials.entry(connection_id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                started = true;
                entry.insert(Partial {
                    joiner: Joiner::start(&chunk, limits.max_chunks)
                        .map_err(ChunkError::Refused)?,
                    started_ms: now_ms,
                })
            }
        };
        match partial.joiner.add(chunk, limits.max_bytes) {
            Ok(None) => Ok(Added {
                started,
                joined: None,
            }),
            Ok(Some(text)) => {
                partials.remove(connection_id);
                Ok(Added {
                    started,
                    joined: Some(text),
                })
            }
            Err(err) => {
                if err == JoinError::TooLarge || started {
                    partials.remove(connection_id);
                }
                Err(ChunkError::Refused(err))
            }
        }
    }

    async fn forget(&self, connection_id: &str) {
        if let Ok(mut partials) = self.partials.lock() {
            partials.0.remove(connection_id);
        }
    }

    fn limits(&self) -> &ChunkLimits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_chunks_pass_the_conformance_suite() {
        conformance::run(|limits| async move { MemoryChunks::new(limits) }).await;
    }

    #[tokio::test]
    async fn messages_that_never_complete_are_swept() {
        let limits = conformance::limits();
        let store = MemoryChunks::new(limits);
        for i in 0..100 {
            store
                .add(&format!("c{i}"), conformance::piece("m", 0, 2, "x"), 0)
                .await
                .expect("add");
        }
        assert_eq!(store.pending(), 100);
        let later = crate::clock::ms(limits.timeout) + 1;
        store
            .add("other", conformance::piece("m", 0, 2, "x"), later)
            .await
            .expect("add");
        assert_eq!(store.pending(), 1, "expired messages swept");
    }
}
