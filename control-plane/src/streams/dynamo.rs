//! History on DynamoDB (`STREAMER_HISTORY_TABLE`).
//!
//! One partition per stream, key `stream_key` = `tenant#stream` (tenant ids
//! never contain `#`), sort key `offset` (a number):
//!
//! | item | `offset` | attributes |
//! | --- | --- | --- |
//! | the stream's head | `0` | `last` (the latest offset), `epoch` |
//! | a message | its offset | `data` (JSON text), `topic`, `at_ms`, `expires_at` (s, the TTL attribute) |
//!
//! An append is one transaction: the head moves from `last` to `last + 1`
//! (conditioned on `last` being what this replica read) and the message is
//! put at `last + 1`. Either both happen or neither, so whichever replicas
//! append to one stream, an offset is never given twice, never skipped, and
//! always names a stored message. A replica that lost the race reads the
//! head again and retries. The head carries no TTL: the epoch (made when the
//! stream's first message is appended) outlives restarts and idle spells,
//! and changes only if the head item itself is lost. Reading is one
//! consistent `GetItem` of the head and one paginated `Query` after `since`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::ProvideErrorMetadata,
    types::{AttributeValue, Put, TransactWriteItem, Update},
};
use serde_json::Value;

use super::{History, HistoryError, Position, Read, Retention, Stored};
use crate::{
    clock::ms,
    store::dynamo::{Item, TableSpec, describe, n, number, numeric, s, string, text},
};

/// The table as `tables create` makes it (production: `deploy/`).
pub fn table_spec() -> TableSpec {
    TableSpec {
        hash: string("stream_key"),
        range: Some(numeric("offset")),
        indexes: Vec::new(),
        ttl: Some("expires_at"),
    }
}

/// Streams whose head this replica remembers (a cache: a stale entry only
/// costs one failed condition and a re-read).
const CACHED_HEADS: usize = 10_000;
/// Attempts of one append when other replicas keep winning the race.
const APPEND_ATTEMPTS: u32 = 32;

/// The DynamoDB history.
pub struct DynamoHistory {
    client: Client,
    table: Arc<str>,
    retention: Retention,
    heads: Mutex<HashMap<String, Position>>,
}

impl std::fmt::Debug for DynamoHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoHistory")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn key(tenant: &str, stream: &str) -> String {
    format!("{tenant}#{stream}")
}

fn head_key(stream_key: &str) -> Item {
    HashMap::from([
        ("stream_key".to_owned(), s(stream_key)),
        ("offset".to_owned(), n(0)),
    ])
}

fn offset_value(offset: u64) -> AttributeValue {
    AttributeValue::N(offset.to_string())
}

fn build(err: impl std::fmt::Display) -> HistoryError {
    HistoryError(err.to_string())
}

impl DynamoHistory {
    /// A history on `table` with `retention`.
    pub fn new(client: Client, table: &str, retention: Retention) -> Self {
        Self {
            client,
            table: Arc::from(table),
            retention,
            heads: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, stream_key: &str) -> Option<Position> {
        self.heads.lock().ok()?.get(stream_key).cloned()
    }

    fn remember(&self, stream_key: &str, position: Position) {
        if let Ok(mut heads) = self.heads.lock() {
            if heads.len() >= CACHED_HEADS && !heads.contains_key(stream_key) {
                heads.clear();
            }
            heads.insert(stream_key.to_owned(), position);
        }
    }

    /// The head as stored (`None`: the stream has no history yet).
    async fn head(&self, stream_key: &str) -> Result<Option<Position>, HistoryError> {
        let got = self
            .client
            .get_item()
            .table_name(&*self.table)
            .set_key(Some(head_key(stream_key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| HistoryError(describe(&e)))?;
        Ok(got.item().and_then(|item| {
            Some(Position {
                offset: u64::try_from(number(item, "last")?).ok()?,
                epoch: text(item, "epoch")?.to_owned(),
            })
        }))
    }

    /// Moves the head from `seen` to the next offset and stores the message
    /// there, in one transaction; `Ok(None)` when another replica moved the
    /// head first.
    async fn try_append(
        &self,
        stream_key: &str,
        seen: Option<&Position>,
        message: &Stored,
        once: Option<&Once>,
    ) -> Result<Option<Position>, HistoryError> {
        let next = seen.map_or(1, |p| p.offset + 1);
        let epoch = seen.map_or_else(
            || uuid::Uuid::new_v4().simple().to_string(),
            |p| p.epoch.clone(),
        );
        let update = Update::builder()
            .table_name(&*self.table)
            .set_key(Some(head_key(stream_key)))
            .update_expression("SET #last = :next, #epoch = if_not_exists(#epoch, :epoch)")
            .expression_attribute_names("#last", "last")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_values(":next", offset_value(next))
            .expression_attribute_values(":epoch", s(&epoch));
        let update = match seen {
            Some(p) => update
                .condition_expression("#last = :seen AND #epoch = :epoch")
                .expression_attribute_values(":seen", offset_value(p.offset)),
            None => update.condition_expression("attribute_not_exists(#last)"),
        }
        .build()
        .map_err(build)?;
        let expires_at = (message.at_ms + ms(self.retention.ttl)) / 1000 + 1;
        let mut item = HashMap::from([
            ("stream_key".to_owned(), s(stream_key)),
            ("offset".to_owned(), offset_value(next)),
            ("data".to_owned(), s(&message.data.to_string())),
            ("at_ms".to_owned(), n(message.at_ms)),
            ("expires_at".to_owned(), n(expires_at)),
        ]);
        if let Some(topic) = &message.topic {
            item.insert("topic".to_owned(), s(topic));
        }
        let put = Put::builder()
            .table_name(&*self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#offset)")
            .expression_attribute_names("#offset", "offset")
            .build()
            .map_err(build)?;
        let marker = once
            .map(|once| {
                Put::builder()
                    .table_name(&*self.table)
                    .set_item(Some(HashMap::from([
                        ("stream_key".to_owned(), s(stream_key)),
                        ("offset".to_owned(), n(once.offset)),
                        ("at".to_owned(), offset_value(next)),
                        ("epoch".to_owned(), s(&epoch)),
                        ("expires_at".to_owned(), n(once.expires_at)),
                    ])))
                    // Free, or a marker past its window.
                    .condition_expression("attribute_not_exists(#offset) OR expires_at < :now")
                    .expression_attribute_names("#offset", "offset")
                    .expression_attribute_values(":now", n(once.now))
                    .build()
                    .map_err(build)
            })
            .transpose()?;
        let mut items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().put(put).build(),
        ];
        // A keyed Send's marker, in the same transaction: of all the tries
        // of one Send, whichever lands first stores the message; any other
        // (its retry, or itself arriving late after a timeout) is cancelled.
        if let Some(marker) = marker {
            items.push(TransactWriteItem::builder().put(marker).build());
        }
        let written = self
            .client
            .transact_write_items()
            // Idempotent under the SDK's own retries: an attempt whose
            // answer was lost (a timeout under load) is not applied twice
            // by its retry (which would store the message at two offsets).
            .client_request_token(uuid::Uuid::new_v4().simple().to_string())
            .set_transact_items(Some(items))
            .send()
            .await;
        match written {
            Ok(_) => Ok(Some(Position {
                offset: next,
                epoch,
            })),
            // Lost the race (a condition failed) or ran into another
            // replica's transaction: read the head again.
            Err(err)
                if matches!(
                    err.code(),
                    Some("TransactionCanceledException" | "TransactionConflictException")
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(HistoryError(describe(&err))),
        }
    }

    /// The oldest offset still retained by count when the head is `last`.
    fn floor(&self, last: u64) -> u64 {
        last.saturating_sub(self.retention.size)
    }
}

/// A keyed Send's marker in its stream's partition: at a negative offset
/// (messages are above 0, the head at 0), naming where the message went.
struct Once {
    offset: i64,
    /// Seconds since the epoch when this try began.
    now: i64,
    expires_at: i64,
}

/// The marker's offset for `token`: a negative number from its SHA-256.
fn once_offset(token: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    -1 - i64::from_be_bytes(first).rem_euclid(i64::MAX)
}

impl DynamoHistory {
    /// Where an earlier try of the same Send stored its message, if one did.
    async fn appended(
        &self,
        stream_key: &str,
        once: &Once,
    ) -> Result<Option<Position>, HistoryError> {
        let found = self
            .client
            .get_item()
            .table_name(&*self.table)
            .key("stream_key", s(stream_key))
            .key("offset", n(once.offset))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| HistoryError(describe(&e)))?;
        Ok(found.item().and_then(|item| {
            // Past its window (TTL deletes lazily): the key is free again.
            if number(item, "expires_at")? < once.now {
                return None;
            }
            Some(Position {
                offset: u64::try_from(number(item, "at")?).ok()?,
                epoch: text(item, "epoch")?.to_owned(),
            })
        }))
    }
}

fn stored_of(item: &Item) -> Option<Stored> {
    Some(Stored {
        offset: u64::try_from(number(item, "offset")?).ok()?,
        data: serde_json::from_str(text(item, "data")?).ok()?,
        topic: text(item, "topic").map(str::to_owned),
        at_ms: number(item, "at_ms")?,
    })
}

#[async_trait]
impl History for DynamoHistory {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        data: &Value,
        topic: Option<&str>,
        now_ms: i64,
        once: Option<(&str, Duration)>,
    ) -> Result<Position, HistoryError> {
        let stream_key = key(tenant, stream);
        let once = once.map(|(token, window)| Once {
            offset: once_offset(token),
            now: now_ms / 1000,
            expires_at: now_ms / 1000 + i64::try_from(window.as_secs()).unwrap_or(86_400),
        });
        let message = Stored {
            offset: 0,
            data: data.clone(),
            topic: topic.map(str::to_owned),
            at_ms: now_ms,
        };
        let mut seen = match self.cached(&stream_key) {
            Some(head) => Some(head),
            None => self.head(&stream_key).await?,
        };
        for attempt in 0..APPEND_ATTEMPTS {
            if let Some(position) = self
                .try_append(&stream_key, seen.as_ref(), &message, once.as_ref())
                .await?
            {
                self.remember(&stream_key, position.clone());
                return Ok(position);
            }
            // Cancelled: a race on the head, or the message's marker is
            // there (another try of the same Send landed, before or
            // meanwhile): then that try's position is the answer.
            if let Some(once) = &once
                && let Some(position) = self.appended(&stream_key, once).await?
            {
                return Ok(position);
            }
            if attempt > 2 {
                // Many replicas on one stream: spread the retries.
                let jitter = rand::random::<u64>() % (5 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
            seen = self.head(&stream_key).await?;
        }
        Err(HistoryError(format!(
            "append to {stream_key} lost {APPEND_ATTEMPTS} races in a row"
        )))
    }

    async fn position(&self, tenant: &str, stream: &str) -> Result<Position, HistoryError> {
        let stream_key = key(tenant, stream);
        match self.head(&stream_key).await? {
            Some(head) => Ok(head),
            // No message yet: the epoch is made by the first append, and
            // offset 0 is before any epoch's first message.
            None => Ok(Position {
                offset: 0,
                epoch: String::new(),
            }),
        }
    }

    async fn read(
        &self,
        tenant: &str,
        stream: &str,
        since: u64,
        limit: usize,
        now_ms: i64,
    ) -> Result<Read, HistoryError> {
        let stream_key = key(tenant, stream);
        let Some(head) = self.head(&stream_key).await? else {
            return Ok(Read {
                messages: Vec::new(),
                position: Position {
                    offset: 0,
                    epoch: String::new(),
                },
                complete: since == 0,
            });
        };
        let floor = self.floor(head.offset);
        let after = since.max(floor);
        let oldest_ms = now_ms - ms(self.retention.ttl);
        let mut messages = Vec::new();
        let mut start = None;
        // Expired items still present (DynamoDB deletes them lazily) are
        // skipped; one page is normally enough.
        while messages.len() < limit && after < head.offset {
            let page = self
                .client
                .query()
                .table_name(&*self.table)
                .key_condition_expression("stream_key = :key AND #offset BETWEEN :from AND :to")
                .expression_attribute_names("#offset", "offset")
                .expression_attribute_values(":key", s(&stream_key))
                .expression_attribute_values(":from", offset_value(after + 1))
                .expression_attribute_values(":to", offset_value(head.offset))
                .consistent_read(true)
                .limit(i32::try_from(limit - messages.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| HistoryError(describe(&e)))?;
            messages.extend(
                page.items()
                    .iter()
                    .filter_map(stored_of)
                    .filter(|m| m.at_ms > oldest_ms),
            );
            match page.last_evaluated_key() {
                Some(last) if !last.is_empty() => start = Some(last.clone()),
                _ => break,
            }
        }
        messages.truncate(limit);
        let complete = since == head.offset
            || (since >= floor && messages.first().is_some_and(|m| m.offset == since + 1));
        Ok(Read {
            messages,
            position: head,
            complete,
        })
    }
}
