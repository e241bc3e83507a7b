//! Streams and their history.
//!
//! A broadcast target within a tenant is a stream: `tenant`, `user:<id>` or
//! `group:<name>`. Streams that match `STREAMER_HISTORY` keep history: each
//! message gets the stream's next offset (gapless, from 1) and the stream's
//! epoch (an opaque string that changes only when the stream's history was
//! lost), and is kept for `STREAMER_HISTORY_SIZE` messages and
//! `STREAMER_HISTORY_TTL_SECS`, whichever is smaller. A client that missed
//! messages reads them back from its last offset ([`Recovery`]).
//!
//! [`History`] is the store: in memory on one machine ([`memory`]; a restart
//! loses it, so the epoch changes), or DynamoDB ([`dynamo`]; one atomic
//! counter per stream, so replicas share one sequence and a restart keeps
//! the epoch). One conformance suite runs against both.

pub mod conformance;
pub mod dynamo;
pub mod memory;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use streamer_proto::{
    client::{Frame, StreamPosition, timestamp_ms},
    ids,
};

use crate::{config::Patterns, error::Fault, registry::Scope};

/// Longest epoch accepted from a client (ours are 32 hex digits).
pub const MAX_EPOCH_LEN: usize = 64;

/// Longest stream name accepted (`group:` plus a 128-character group).
pub const MAX_STREAM_LEN: usize = 6 + ids::MAX_ID_LEN;

/// A stream within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Every connection of the tenant.
    Tenant,
    /// Every connection of one user.
    User(String),
    /// Every member of one group.
    Group(String),
}

impl Stream {
    /// Parses a stream name; `None` for an unknown kind or a bad id.
    pub fn parse(name: &str) -> Option<Self> {
        if name.len() > MAX_STREAM_LEN {
            return None;
        }
        if name == "tenant" {
            return Some(Stream::Tenant);
        }
        if let Some(user) = name.strip_prefix("user:") {
            return ids::valid_user_id(user).then(|| Stream::User(user.to_owned()));
        }
        if let Some(group) = name.strip_prefix("group:") {
            return ids::valid_group(group).then(|| Stream::Group(group.to_owned()));
        }
        None
    }

    /// The stream a broadcast scope sends on.
    pub fn of_scope(scope: &Scope) -> Self {
        match scope {
            Scope::Tenant(_) => Stream::Tenant,
            Scope::User { user_id, .. } => Stream::User(user_id.clone()),
            Scope::Group { group, .. } => Stream::Group(group.clone()),
        }
    }

    /// The stream's name.
    pub fn name(&self) -> String {
        match self {
            Stream::Tenant => "tenant".to_owned(),
            Stream::User(user) => format!("user:{user}"),
            Stream::Group(group) => format!("group:{group}"),
        }
    }
}

/// Where a stream stands: its latest offset (0 when empty) and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The latest offset given out.
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// The body.
    pub data: Value,
    /// The sender's topic.
    pub topic: Option<String>,
    /// When it was sent, ms since the epoch.
    pub at_ms: i64,
}

impl Stored {
    /// The `message` frame this message was sent as.
    pub fn frame(&self, stream: &str, epoch: &str) -> Frame {
        let position = StreamPosition {
            stream: stream.to_owned(),
            offset: self.offset,
            epoch: epoch.to_owned(),
        };
        Frame::Message {
            id: position.message_id(),
            data: self.data.clone(),
            topic: self.topic.clone(),
            position: Some(position),
            timestamp: timestamp_ms(self.at_ms),
        }
    }
}

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// Retained messages after `since`, in offset order.
    pub messages: Vec<Stored>,
    /// The stream's position now.
    pub position: Position,
    /// Whether `messages` holds every message after `since` in this epoch
    /// (false when some were no longer retained).
    pub complete: bool,
}

/// Why the history store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history unavailable: {0}")]
pub struct HistoryError(pub String);

impl From<HistoryError> for Fault {
    fn from(err: HistoryError) -> Self {
        tracing::warn!(error = %err, "history unavailable");
        Fault::unavailable("service temporarily unavailable, retry later")
    }
}

/// The history store contract (embedded and DynamoDB backends).
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// Appends a message to `stream` of `tenant`; the message's offset and
    /// the stream's epoch. Offsets are gapless and strictly increasing per
    /// stream, whichever replica appends. With `once` (a keyed Send's
    /// tenant-scoped idempotency key and its window), the message is
    /// appended at most once per stream within the window: an append whose
    /// answer was lost but which landed (before or even after its retry)
    /// is never stored again; the retry answers the first append's
    /// position.
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        data: &Value,
        topic: Option<&str>,
        now_ms: i64,
        once: Option<(&str, std::time::Duration)>,
    ) -> Result<Position, HistoryError>;

    /// The stream's position.
    async fn position(&self, tenant: &str, stream: &str) -> Result<Position, HistoryError>;

    /// Up to `limit` retained messages after `since`, with the position and
    /// whether nothing after `since` is missing.
    async fn read(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        limit: usize,
        now_ms: i64,
    ) -> Result<Read, HistoryError>;
}

/// Retention: a message is kept for `size` messages and `ttl`, whichever
/// is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per stream.
    pub size: u64,
    /// How long a message is kept.
    pub ttl: Duration,
}

impl Default for Retention {
    /// The documented defaults: 1,000 messages, 10 minutes.
    fn default() -> Self {
        Self {
            size: 1000,
            ttl: Duration::from_secs(600),
        }
    }
}

/// Which streams keep history, and for how long.
#[derive(Clone)]
pub struct Streams {
    history: Arc<dyn History>,
    patterns: Patterns,
    recover_max: usize,
    budget: Arc<tokio::sync::Semaphore>,
}

/// Messages read from history per page (recovery and `ReadHistory`).
pub const PAGE_MESSAGES: usize = 4;
/// What a page is charged to the budget before it is read (its messages'
/// bytes, if more, after): four messages of up to 1 MiB.
const PAGE_RESERVE_BYTES: usize = 4 << 20;
/// How long a recovery or read waits for room in the budget before it is
/// refused `RATE_LIMITED`: well inside a client frame's own budget
/// (`OPERATION_BUDGET`, 4 s), so the client is told to retry later, not
/// that the service is unavailable.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// A recovery whose messages come to at most this is answered in its
/// response (as before); a larger one goes out a page at a time.
pub const INLINE_RECOVERY_BYTES: usize = 64 << 10;
/// The most history bytes one `ReadHistory` answer holds (it pages by
/// `next_since`).
pub const MAX_READ_BYTES: usize = 4 << 20;

/// A page of history and its place in the budget (freed on drop).
#[derive(Debug)]
pub struct Page {
    /// The read.
    pub read: Read,
    /// Its messages' bytes (their data as JSON).
    pub bytes: usize,
    _held: tokio::sync::OwnedSemaphorePermit,
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

/// The answer to `recover` (and to `join` with `since`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// The stream.
    pub stream: String,
    /// Its position now.
    pub position: Position,
    /// Whether every message after `since` in the client's epoch is in
    /// `messages`.
    pub recovered: bool,
    /// The missed messages, in offset order (when answered inline).
    pub messages: Vec<Stored>,
    /// How many missed messages went out as `message` frames before the
    /// answer (a recovery too large to answer inline).
    pub streamed: usize,
}

impl Recovery {
    /// The `data` of the `response` frame: the stream and its position,
    /// and with `missed` whether everything was recovered and the messages.
    pub fn to_json(&self, missed: bool) -> Value {
        let mut data = serde_json::json!({
            "stream": self.stream,
            "epoch": self.position.epoch,
            "offset": self.position.offset,
        });
        if missed {
            data["recovered"] = self.recovered.into();
            if self.streamed > 0 {
                data["streamed"] = self.streamed.into();
            }
            data["messages"] = self
                .messages
                .iter()
                .map(|m| {
                    serde_json::to_value(m.frame(&self.stream, &self.position.epoch))
                        .unwrap_or(Value::Null)
                })
                .collect();
        }
        data
    }
}

impl Streams {
    /// History for the streams `patterns` names, kept in `history`.
    pub fn new(history: Arc<dyn History>, patterns: Patterns, recover_max: usize) -> Self {
        Self::with_budget(history, patterns, recover_max, 64 << 20)
    }

    /// [`Streams::new`] with at most `budget_bytes` of history being
    /// prepared for clients at once, every connection together
    /// (`STREAMER_HISTORY_RECOVER_MAX_INFLIGHT_BYTES`).
    pub fn with_budget(
        history: Arc<dyn History>,
        patterns: Patterns,
        recover_max: usize,
        budget_bytes: usize,
    ) -> Self {
        let units =
            usize::try_from(kib(budget_bytes.max(PAGE_RESERVE_BYTES))).unwrap_or(usize::MAX);
        Self {
            history,
            patterns,
            recover_max: recover_max.max(1),
            budget: Arc::new(tokio::sync::Semaphore::new(units)),
        }
    }

    /// Takes `bytes` of the budget, waiting (up to [`BUDGET_WAIT`]) for
    /// other reads to give theirs back; `RATE_LIMITED` past the wait.
    async fn reserve(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, Fault> {
        let units = kib(bytes).min(
            u32::try_from(self.budget.available_permits().max(1))
                .unwrap_or(u32::MAX)
                .max(kib(PAGE_RESERVE_BYTES)),
        );
        match tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(units)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Fault::rate_limited(
                "too much history is being sent to clients right now; retry shortly",
                std::time::Duration::from_secs(2),
            )),
        }
    }

    /// One page (at most [`PAGE_MESSAGES`]) of `stream` after `since`,
    /// charged to the budget while the page is held.
    pub async fn page(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        now_ms: i64,
    ) -> Result<Page, Fault> {
        self.page_of(tenant, stream, since, PAGE_MESSAGES, now_ms)
            .await
    }

    /// A page of up to `limit` messages; what it does not use of its
    /// reservation goes back to the budget at once.
    async fn page_of(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        limit: usize,
        now_ms: i64,
    ) -> Result<Page, Fault> {
        let mut held = self.reserve(PAGE_RESERVE_BYTES).await?;
        let read = self
            .history
            .read(tenant, stream, since, limit.max(1), now_ms)
            .await?;
        let bytes: usize = read.messages.iter().map(|m| m.data.to_string().len()).sum();
        let used = usize::try_from(kib(bytes.max(1))).unwrap_or(usize::MAX);
        if used > held.num_permits() {
            held.merge(
                self.reserve(bytes.saturating_sub(PAGE_RESERVE_BYTES))
                    .await?,
            );
        } else {
            drop(held.split(held.num_permits() - used));
        }
        Ok(Page {
            read,
            bytes,
            _held: held,
        })
    }

    /// How many messages the next page may hold: as many as the last
    /// page's average would fit in a page's reservation (4 to 256).
    fn next_limit(page: &Page) -> usize {
        let count = page.read.messages.len().max(1);
        let average = (page.bytes / count).max(1);
        (PAGE_RESERVE_BYTES / average).clamp(PAGE_MESSAGES, 256)
    }

    /// No stream keeps history.
    pub fn without_history() -> Self {
        Self::new(
            Arc::new(memory::MemoryHistory::new(Retention::default())),
            Patterns::default(),
            1,
        )
    }

    /// Whether `stream` keeps history.
    pub fn keeps(&self, stream: &str) -> bool {
        self.patterns.matches(stream)
    }

    /// Records a message sent to `stream`; its position when the stream
    /// keeps history.
    pub async fn record(
        &self,
        tenant: &str,
        stream: &str,
        data: &Value,
        topic: Option<&str>,
        now_ms: i64,
        once: Option<(&str, std::time::Duration)>,
    ) -> Result<Option<Position>, HistoryError> {
        if !self.keeps(stream) {
            return Ok(None);
        }
        self.history
            .append(tenant, stream, data, topic, now_ms, once)
            .await
            .map(Some)
    }

    /// The position of a stream that keeps history.
    pub async fn position(&self, tenant: &str, stream: &str) -> Result<Position, Fault> {
        self.check(stream)?;
        Ok(self.history.position(tenant, stream).await?)
    }

    /// Reads up to `limit` messages of a stream's history after `since`,
    /// and at most [`MAX_READ_BYTES`] of them (at least one), a page at a
    /// time under the budget; `complete` only when nothing after the last
    /// one returned was left out.
    pub async fn read(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        limit: usize,
        now_ms: i64,
    ) -> Result<Read, Fault> {
        self.check(stream)?;
        let limit = limit.clamp(1, self.recover_max);
        let mut pages = Vec::new();
        let mut messages: Vec<Stored> = Vec::new();
        let mut bytes = 0;
        let mut after = since;
        // No gap after `since`: the first page says.
        let mut complete = None;
        loop {
            let page = self.page(tenant, stream, after, now_ms).await?;
            let position = page.read.position.clone();
            complete.get_or_insert(page.read.complete);
            let last = page.read.messages.last().map(|m| m.offset);
            bytes += page.bytes;
            let room = limit - messages.len();
            messages.extend(page.read.messages.iter().take(room).cloned());
            pages.push(page);
            if messages.len() >= limit
                || bytes >= MAX_READ_BYTES
                || last.is_none_or(|last| last >= position.offset)
            {
                return Ok(Read {
                    messages,
                    position,
                    complete: complete.unwrap_or(false),
                });
            }
            after = last.unwrap_or(after);
        }
    }

    /// `VALIDATION_ERROR` unless `stream` keeps history.
    pub fn check(&self, stream: &str) -> Result<(), Fault> {
        if self.keeps(stream) {
            Ok(())
        } else {
            Err(Fault::invalid(format!(
                "stream {stream:?} keeps no history (see STREAMER_HISTORY)"
            )))
        }
    }

    /// The recovery of `stream` since `since`, when it fits in a response
    /// ([`INLINE_RECOVERY_BYTES`]) or history cannot fill the gap; `None`
    /// when it must be sent a page at a time ([`Streams::recover`]).
    pub async fn recover_inline(
        &self,
        tenant: &str,
        stream: &str,
        since: Option<(u64, &str)>,
        now_ms: i64,
    ) -> Result<Option<Recovery>, Fault> {
        Ok(
            match self.start_recovery(tenant, stream, since, now_ms).await? {
                Start::Done(recovery) => Some(recovery),
                Start::Stream { .. } => None,
            },
        )
    }

    async fn start_recovery(
        &self,
        tenant: &str,
        stream: &str,
        since: Option<(u64, &str)>,
        now_ms: i64,
    ) -> Result<Start, Fault> {
        self.check(stream)?;
        let done = |position: Position, recovered: bool, messages: Vec<Stored>| {
            Start::Done(Recovery {
                stream: stream.to_owned(),
                position,
                recovered,
                messages,
                streamed: 0,
            })
        };
        let Some((since, epoch)) = since else {
            let position = self.history.position(tenant, stream).await?;
            return Ok(done(position, true, Vec::new()));
        };
        let first = self.page(tenant, stream, since, now_ms).await?;
        let position = first.read.position.clone();
        // A client at offset 0 has seen nothing, in any epoch.
        let same_epoch = since == 0 || position.epoch == epoch;
        let too_many = position.offset.saturating_sub(since) > self.recover_max as u64;
        let recovered = same_epoch && first.read.complete && !too_many && since <= position.offset;
        if !same_epoch || too_many {
            return Ok(done(position, false, Vec::new()));
        }
        // Read on while what was missed still fits in one response.
        let mut bytes = first.bytes;
        let mut pages = vec![first];
        loop {
            let last = pages
                .last()
                .and_then(|p| p.read.messages.last())
                .map(|m| m.offset);
            let whole = last.is_none_or(|last| last >= position.offset);
            if whole && bytes <= INLINE_RECOVERY_BYTES {
                let messages = pages.into_iter().flat_map(|p| p.read.messages).collect();
                return Ok(done(position, recovered, messages));
            }
            if whole || bytes > INLINE_RECOVERY_BYTES {
                return Ok(Start::Stream {
                    pages,
                    position,
                    recovered,
                });
            }
            let limit = pages.last().map_or(PAGE_MESSAGES, Self::next_limit);
            let next = self
                .page_of(tenant, stream, last.unwrap_or(since), limit, now_ms)
                .await?;
            if next.read.messages.is_empty() {
                let messages = pages.into_iter().flat_map(|p| p.read.messages).collect();
                return Ok(done(position, recovered, messages));
            }
            bytes += next.bytes;
            pages.push(next);
        }
    }

    /// What a client missed on `stream` since `since` in `epoch` (`None`: it
    /// has seen nothing and wants only the position). A recovery whose
    /// messages come to at most [`INLINE_RECOVERY_BYTES`] has them in
    /// `messages`; a larger one hands each page to `send` (in offset
    /// order, each page under the budget until `send` returns) and
    /// answers with `messages` empty and `streamed` counting them, so no
    /// recovery holds more than a page in memory.
    pub async fn recover<F, Fut>(
        &self,
        tenant: &str,
        stream: &str,
        since: Option<(u64, &str)>,
        now_ms: i64,
        mut send: F,
    ) -> Result<Recovery, Fault>
    where
        F: FnMut(Vec<Stored>, Position) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (pages, position, recovered) =
            match self.start_recovery(tenant, stream, since, now_ms).await? {
                Start::Done(recovery) => return Ok(recovery),
                Start::Stream {
                    pages,
                    position,
                    recovered,
                } => (pages, position, recovered),
            };
        let mut streamed = 0;
        let mut last = None;
        let mut limit = PAGE_MESSAGES;
        for mut page in pages {
            last = page.read.messages.last().map(|m| m.offset).or(last);
            limit = Self::next_limit(&page);
            streamed += page.read.messages.len();
            send(std::mem::take(&mut page.read.messages), position.clone()).await;
        }
        while let Some(after) = last.filter(|last| *last < position.offset) {
            let mut page = self.page_of(tenant, stream, after, limit, now_ms).await?;
            if page.read.messages.is_empty() {
                break;
            }
            last = page.read.messages.last().map(|m| m.offset);
            limit = Self::next_limit(&page);
            streamed += page.read.messages.len();
            send(std::mem::take(&mut page.read.messages), position.clone()).await;
        }
        Ok(Recovery {
            stream: stream.to_owned(),
            position,
            recovered,
            messages: Vec::new(),
            streamed,
        })
    }
}

/// How a recovery starts: answered, or to be sent a page at a time.
enum Start {
    Done(Recovery),
    Stream {
        pages: Vec<Page>,
        position: Position,
        recovered: bool,
    },
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use super::*;

    #[tokio::test]
    async fn the_embedded_history_passes_the_conformance_suite() {
        // One store per retention, shared by every caller asking for it (as
        // one process's history is).
        let made: Mutex<HashMap<u64, Arc<dyn History>>> = Mutex::new(HashMap::new());
        let make = |retention: Retention| -> Arc<dyn History> {
            made.lock()
                .expect("lock")
                .entry(retention.size)
                .or_insert_with(|| Arc::new(memory::MemoryHistory::new(retention)))
                .clone()
        };
        conformance::run_all(&make, "").await;
    }

    #[tokio::test]
    async fn a_new_embedded_history_is_a_new_epoch() {
        let data = serde_json::json!(1);
        let first = memory::MemoryHistory::new(Retention::default());
        let before = first
            .append("t", "tenant", &data, None, 1, None)
            .await
            .expect("append");
        let restarted = memory::MemoryHistory::new(Retention::default());
        let after = restarted
            .append("t", "tenant", &data, None, 2, None)
            .await
            .expect("append");
        assert_ne!(before.epoch, after.epoch);
        let streams = Streams::new(Arc::new(restarted), Patterns::new(["tenant"]), 10);
        let recovery = streams
            .recover("t", "tenant", Some((1, &before.epoch)), 3, |_, _| async {})
            .await
            .expect("recover");
        assert!(!recovery.recovered);
        assert!(recovery.messages.is_empty());
        assert_eq!(recovery.position, after);
    }

    #[test]
    fn stream_names_parse_and_refuse() {
        assert_eq!(Stream::parse("tenant"), Some(Stream::Tenant));
        assert_eq!(
            Stream::parse("user:alice"),
            Some(Stream::User("alice".into()))
        );
        assert_eq!(
            Stream::parse("group:room-1"),
            Some(Stream::Group("room-1".into()))
        );
        assert_eq!(Stream::parse("group:a b"), None);
        assert_eq!(Stream::parse("user:"), None);
        assert_eq!(Stream::parse("channel:x"), None);
        assert_eq!(
            Stream::parse(&format!("group:{}", "x".repeat(10_000))),
            None
        );
        assert_eq!(Stream::Group("room-1".into()).name(), "group:room-1");
    }
}
