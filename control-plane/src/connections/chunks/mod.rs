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
    /// Most bytes of unfinished messages held at once, every connection
    /// together (the embedded store; DynamoDB's are bounded by the TTL).
    pub max_held_bytes: usize,
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
    /// The server holds as many unfinished messages as it may; retry.
    Busy,
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
            ChunkError::Busy => Fault::unavailable(
                "too many chunked messages in flight on this server; send the piece again later",
            ),
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
    bytes: usize,
}

/// The partial messages, when they were last swept, and their bytes.
#[derive(Default)]
struct Held {
    partials: HashMap<String, Partial>,
    last_sweep: i64,
    bytes: usize,
}

impl Held {
    fn remove(&mut self, connection_id: &str) {
        if let Some(partial) = self.partials.remove(connection_id) {
            self.bytes -= partial.bytes;
        }
    }

    /// Drops messages past the timeout (at most once per timeout), but
    /// not `keep`'s, whose next piece is told it timed out.
    fn sweep(&mut self, keep: &str, now_ms: i64, timeout: Duration) {
        if now_ms.saturating_sub(self.last_sweep) <= crate::clock::ms(timeout) {
            return;
        }
        self.last_sweep = now_ms;
        let stale: Vec<String> = self
            .partials
            .iter()
            .filter(|(id, p)| *id != keep && expired(p.started_ms, now_ms, timeout))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove(&id);
        }
    }
}

/// The embedded store: pieces in memory, at most one message per
/// connection, dropped on disconnect, on completion, or when found expired;
/// and at most [`ChunkLimits::max_held_bytes`] across every connection, so
/// many clients each holding a partial message cannot exhaust memory.
pub struct MemoryChunks {
    limits: ChunkLimits,
    held: Mutex<Held>,
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
            held: Mutex::new(Held::default()),
        }
    }

    /// Messages being joined, and their bytes (for tests of the bounds).
    pub fn pending(&self) -> (usize, usize) {
        self.held
            .lock()
            .map(|h| (h.partials.len(), h.bytes))
            .unwrap_or((0, 0))
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
        let mut held = self
            .held
            .lock()
            .map_err(|_| ChunkError::Unavailable("poisoned".into()))?;
        held.sweep(connection_id, now_ms, limits.timeout);
        if let Some(partial) = held.partials.get(connection_id)
            && expired(partial.started_ms, now_ms, limits.timeout)
        {
            let same = partial.joiner.chunk_id() == chunk.chunk_id;
            held.remove(connection_id);
            if same {
                return Err(ChunkError::TimedOut);
            }
        }
        let started = !held.partials.contains_key(connection_id);
        if started {
            let joiner = Joiner::start(&chunk, limits.max_chunks).map_err(ChunkError::Refused)?;
            held.partials.insert(
                connection_id.to_owned(),
                Partial {
                    joiner,
                    started_ms: now_ms,
                    bytes: 0,
                },
            );
        }
        let len = chunk.data.len();
        // The last piece frees what its message holds: never refused.
        let completes = held
            .partials
            .get(connection_id)
            .is_some_and(|p| p.joiner.remaining() == 1);
        if !completes && held.bytes + len > limits.max_held_bytes {
            if started {
                held.remove(connection_id);
            }
            return Err(ChunkError::Busy);
        }
        let Some(partial) = held.partials.get_mut(connection_id) else {
            return Err(ChunkError::Unavailable("lost a partial message".into()));
        };
        match partial.joiner.add(chunk, limits.max_bytes) {
            Ok(None) => {
                partial.bytes += len;
                held.bytes += len;
                Ok(Added {
                    started,
                    joined: None,
                })
            }
            Ok(Some(text)) => {
                held.remove(connection_id);
                Ok(Added {
                    started,
                    joined: Some(text),
                })
            }
            Err(err) => {
                if err == JoinError::TooLarge || started {
                    held.remove(connection_id);
                }
                Err(ChunkError::Refused(err))
            }
        }
    }

    async fn forget(&self, connection_id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(connection_id);
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
        assert_eq!(store.pending(), (100, 100));
        let later = crate::clock::ms(limits.timeout) + 1;
        store
            .add("other", conformance::piece("m", 0, 2, "x"), later)
            .await
            .expect("add");
        assert_eq!(store.pending(), (1, 1), "expired messages swept");
    }

    #[tokio::test]
    async fn every_connection_together_holds_at_most_the_memory_bound() {
        let limits = ChunkLimits {
            max_bytes: 1000,
            max_held_bytes: 250,
            ..conformance::limits()
        };
        let store = MemoryChunks::new(limits);
        let piece = |i: u32| conformance::piece("m", i, 2, &"x".repeat(100));
        store.add("a", piece(0), 0).await.expect("a");
        store.add("b", piece(0), 0).await.expect("b");
        assert_eq!(store.add("c", piece(0), 0).await, Err(ChunkError::Busy));
        assert_eq!(
            store.pending(),
            (2, 200),
            "the refused message holds nothing"
        );
        // A message that completes gives its bytes back.
        let done = store.add("a", piece(1), 0).await.expect("a joined");
        assert_eq!(done.joined.map(|j| j.len()), Some(200));
        store.add("c", piece(0), 0).await.expect("room again");
        store.forget("b").await;
        assert_eq!(store.pending(), (1, 100));
    }
}
