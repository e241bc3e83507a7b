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
    /// ...of them one tenant's connections together: one tenant cannot
    /// take the whole budget from the others.
    pub max_held_bytes_per_tenant: usize,
    /// ...of them one connection.
    pub max_held_bytes_per_connection: usize,
}

/// Which share of the chunk budget was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Every connection together.
    Server,
    /// The sender's tenant's connections together.
    Tenant,
    /// The sender's connection.
    Connection,
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
    /// A share of the budget for unfinished messages is full; retry.
    Busy(Share),
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
            ChunkError::Busy(Share::Server) => Fault::unavailable(
                "too many chunked messages in flight on this server; send the piece again later",
            ),
            ChunkError::Busy(Share::Tenant) => Fault::unavailable(
                "your tenant holds its share of unfinished chunked messages; send the piece again when some complete",
            ),
            ChunkError::Busy(Share::Connection) => Fault::unavailable(
                "this connection holds its share of unfinished chunked messages; finish or drop the message first",
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
    /// Adds `chunk`, a piece of `connection_id`'s chunked message (a
    /// connection of `tenant_id`), at `now_ms`.
    async fn add(
        &self,
        connection_id: &str,
        tenant_id: &str,
        chunk: Chunk,
        now_ms: i64,
    ) -> Result<Added, ChunkError>;

    /// Frees every message not complete within the timeout, whether or not
    /// another piece arrives (the app calls it every second); how many.
    async fn expire(&self, now_ms: i64) -> usize;

    /// Drops the message `connection_id` is sending, if any (it
    /// disconnected, or the message was refused).
    async fn forget(&self, connection_id: &str);

    /// The connection is gone: drop what it left half-way (the embedded
    /// store forgets it; a store with a TTL may leave it to the TTL).
    async fn disconnected(&self, connection_id: &str);

    /// The bounds every message is held to.
    fn limits(&self) -> &ChunkLimits;
}

struct Partial {
    joiner: Joiner,
    tenant_id: String,
    started_ms: i64,
    bytes: usize,
}

/// The partial messages and their bytes, in all and per tenant; and the
/// messages freed at their timeout whose next piece is still to be told.
#[derive(Default)]
struct Held {
    partials: HashMap<String, Partial>,
    bytes: usize,
    by_tenant: HashMap<String, usize>,
    timed_out: HashMap<String, (String, i64)>,
}

impl Held {
    fn remove(&mut self, connection_id: &str) {
        if let Some(partial) = self.partials.remove(connection_id) {
            self.bytes -= partial.bytes;
            if let Some(tenant) = self.by_tenant.get_mut(&partial.tenant_id) {
                *tenant -= partial.bytes;
                if *tenant == 0 {
                    self.by_tenant.remove(&partial.tenant_id);
                }
            }
        }
    }

    /// Frees every message past the timeout; each connection's next piece
    /// of it is told it timed out (for another timeout).
    fn expire(&mut self, now_ms: i64, timeout: Duration) -> usize {
        self.timed_out
            .retain(|_, (_, at)| !expired(*at, now_ms, timeout));
        let stale: Vec<(String, String)> = self
            .partials
            .iter()
            .filter(|(_, p)| expired(p.started_ms, now_ms, timeout))
            .map(|(id, p)| (id.clone(), p.joiner.chunk_id().to_owned()))
            .collect();
        for (id, chunk_id) in &stale {
            self.remove(id);
            self.timed_out
                .insert(id.clone(), (chunk_id.clone(), now_ms));
        }
        stale.len()
    }

    /// Whether adding `len` bytes for `connection_id` of `tenant_id` stays
    /// within every share; the share that would overflow.
    fn room(
        &self,
        connection_id: &str,
        tenant_id: &str,
        len: usize,
        limits: &ChunkLimits,
    ) -> Result<(), Share> {
        let connection = self.partials.get(connection_id).map_or(0, |p| p.bytes);
        // Past the message bound the message is refused as too large (and
        // dropped) by the joiner, not held back by the share.
        if connection + len > limits.max_held_bytes_per_connection
            && connection + len <= limits.max_bytes
        {
            return Err(Share::Connection);
        }
        if self.by_tenant.get(tenant_id).copied().unwrap_or(0) + len
            > limits.max_held_bytes_per_tenant
        {
            return Err(Share::Tenant);
        }
        if self.bytes + len > limits.max_held_bytes {
            return Err(Share::Server);
        }
        Ok(())
    }
}

/// The embedded store: pieces in memory, at most one message per
/// connection, dropped on disconnect, on completion, or at its timeout
/// ([`Chunks::expire`]); and at most [`ChunkLimits::max_held_bytes`] across
/// every connection, of which one tenant may hold
/// [`ChunkLimits::max_held_bytes_per_tenant`], so neither many clients nor
/// one tenant's clients can exhaust memory or the budget others need.
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
        tenant_id: &str,
        chunk: Chunk,
        now_ms: i64,
    ) -> Result<Added, ChunkError> {
        let limits = self.limits;
        let mut held = self
            .held
            .lock()
            .map_err(|_| ChunkError::Unavailable("poisoned".into()))?;
        if let Some(partial) = held.partials.get(connection_id)
            && expired(partial.started_ms, now_ms, limits.timeout)
        {
            let same = partial.joiner.chunk_id() == chunk.chunk_id;
            held.remove(connection_id);
            if same {
                return Err(ChunkError::TimedOut);
            }
        }
        if let Some((chunk_id, _)) = held.timed_out.remove(connection_id)
            && chunk_id == chunk.chunk_id
        {
            return Err(ChunkError::TimedOut);
        }
        let started = !held.partials.contains_key(connection_id);
        if started {
            let joiner = Joiner::start(&chunk, limits.max_chunks).map_err(ChunkError::Refused)?;
            held.partials.insert(
                connection_id.to_owned(),
                Partial {
                    joiner,
                    tenant_id: tenant_id.to_owned(),
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
        if !completes && let Err(share) = held.room(connection_id, tenant_id, len, &limits) {
            if started {
                held.remove(connection_id);
            }
            return Err(ChunkError::Busy(share));
        }
        let Some(partial) = held.partials.get_mut(connection_id) else {
            return Err(ChunkError::Unavailable("lost a partial message".into()));
        };
        match partial.joiner.add(chunk, limits.max_bytes) {
            Ok(None) => {
                partial.bytes += len;
                let tenant = partial.tenant_id.clone();
                held.bytes += len;
                *held.by_tenant.entry(tenant).or_default() += len;
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

    async fn disconnected(&self, connection_id: &str) {
        self.forget(connection_id).await;
        if let Ok(mut held) = self.held.lock() {
            held.timed_out.remove(connection_id);
        }
    }

    async fn expire(&self, now_ms: i64) -> usize {
        self.held
            .lock()
            .map(|mut held| held.expire(now_ms, self.limits.timeout))
            .unwrap_or(0)
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
    async fn messages_that_never_complete_are_freed_at_their_timeout() {
        let limits = conformance::limits();
        let store = MemoryChunks::new(limits);
        for i in 0..100 {
            store
                .add(&format!("c{i}"), "t", conformance::piece("m", 0, 2, "x"), 0)
                .await
                .expect("add");
        }
        assert_eq!(store.pending(), (100, 100));
        let at_timeout = crate::clock::ms(limits.timeout);
        assert_eq!(store.expire(at_timeout).await, 0, "not before the timeout");
        assert_eq!(store.expire(at_timeout + 1).await, 100);
        assert_eq!(
            store.pending(),
            (0, 0),
            "freed with no other piece arriving"
        );
        // The next piece of a freed message is told it timed out, once.
        assert_eq!(
            store
                .add(
                    "c7",
                    "t",
                    conformance::piece("m", 1, 2, "x"),
                    at_timeout + 2
                )
                .await,
            Err(ChunkError::TimedOut)
        );
    }

    #[tokio::test]
    async fn every_connection_together_holds_at_most_the_memory_bound() {
        let limits = ChunkLimits {
            max_bytes: 1000,
            max_held_bytes: 250,
            max_held_bytes_per_tenant: 250,
            max_held_bytes_per_connection: 1000,
            ..conformance::limits()
        };
        let store = MemoryChunks::new(limits);
        let piece = |i: u32| conformance::piece("m", i, 2, &"x".repeat(100));
        store.add("a", "t", piece(0), 0).await.expect("a");
        store.add("b", "u", piece(0), 0).await.expect("b");
        assert_eq!(
            store.add("c", "v", piece(0), 0).await,
            Err(ChunkError::Busy(Share::Server))
        );
        assert_eq!(
            store.pending(),
            (2, 200),
            "the refused message holds nothing"
        );
        // A message that completes gives its bytes back.
        let done = store.add("a", "t", piece(1), 0).await.expect("a joined");
        assert_eq!(done.joined.map(|j| j.len()), Some(200));
        store.add("c", "v", piece(0), 0).await.expect("room again");
        store.forget("b").await;
        assert_eq!(store.pending(), (1, 100));
    }

    #[tokio::test]
    async fn one_tenant_holds_at_most_its_share_and_others_still_get_room() {
        let limits = ChunkLimits {
            max_bytes: 1000,
            max_held_bytes: 1000,
            max_held_bytes_per_tenant: 250,
            max_held_bytes_per_connection: 150,
            ..conformance::limits()
        };
        let store = MemoryChunks::new(limits);
        let piece = |i: u32, count: u32| conformance::piece("m", i, count, &"x".repeat(100));
        store.add("e1", "evil", piece(0, 3), 0).await.expect("e1");
        store.add("e2", "evil", piece(0, 3), 0).await.expect("e2");
        assert_eq!(
            store.add("e3", "evil", piece(0, 3), 0).await,
            Err(ChunkError::Busy(Share::Tenant)),
            "the tenant's share is full"
        );
        assert_eq!(
            store.add("e1", "evil", piece(1, 3), 0).await,
            Err(ChunkError::Busy(Share::Connection)),
            "so is the connection's"
        );
        let fault = ChunkError::Busy(Share::Tenant).fault(&limits);
        assert!(fault.to_string().contains("tenant"), "{fault}");
        store
            .add("o1", "other", piece(0, 2), 0)
            .await
            .expect("another tenant has room");
        let joined = store
            .add("o1", "other", piece(1, 2), 0)
            .await
            .expect("joined");
        assert!(joined.joined.is_some());
    }
}
