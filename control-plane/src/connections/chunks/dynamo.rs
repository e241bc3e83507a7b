//! Chunked client messages in DynamoDB, so that pieces reaching different
//! replicas join (API Gateway may run a connection's `$default` calls on
//! any replica, even at once).
//!
//! Table layout (`STREAMER_CHUNKS_TABLE`):
//!
//! | item | key `connection_id`, `part` | attributes |
//! | --- | --- | --- |
//! | the message being joined | the connection, `-1` | `chunk_id`, `count`, `instance` (a random id naming this message), `started_at` (ms), `received`, `bytes`, `expires_at` (s, the TTL attribute) |
//! | a piece | the connection, its index | `data`, `instance` (its message's), `expires_at` |
//!
//! A piece costs a consistent read of the head, a conditional put of the
//! piece (refused when this message already has that index), and an atomic
//! `ADD` of its count and bytes to the head, conditional on the byte bound:
//! exactly one replica sees `received == count` and joins (one Query, then
//! the items are deleted). Pieces of a message that never completes, and
//! of a message refused half-way, are removed by the TTL; a piece left from
//! an earlier message never counts, because its `instance` differs.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use aws_sdk_dynamodb::{Client, types::ReturnValue};
use streamer_proto::client::chunk::{Chunk, JoinError};

use super::{Added, ChunkError, ChunkLimits, Chunks, expired};
use crate::store::dynamo::{
    Item, TableSpec, batch_delete, condition_failed, describe, n, number, numeric, s, string, text,
};

/// The table as `tables create` makes it (production: `deploy/`).
pub fn table_spec() -> TableSpec {
    TableSpec {
        hash: string("connection_id"),
        range: Some(numeric("part")),
        indexes: Vec::new(),
        ttl: Some("expires_at"),
    }
}

/// The head's `part`.
const HEAD: i64 = -1;
/// Attempts when another replica changes the head under us.
const ATTEMPTS: usize = 4;

/// The DynamoDB store.
pub struct DynamoChunks {
    client: Client,
    table: Arc<str>,
    limits: ChunkLimits,
}

impl std::fmt::Debug for DynamoChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoChunks")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// The message a head describes.
struct Head {
    chunk_id: String,
    count: u32,
    instance: String,
    started_ms: i64,
}

fn key(connection_id: &str, part: i64) -> Item {
    HashMap::from([
        ("connection_id".to_owned(), s(connection_id)),
        ("part".to_owned(), n(part)),
    ])
}

fn unavailable(what: &str, detail: String) -> ChunkError {
    tracing::warn!(error = %detail, "chunks table: {what} failed");
    ChunkError::Unavailable(detail)
}

impl DynamoChunks {
    /// A store on `table` holding messages to `limits`.
    pub fn new(client: Client, table: &str, limits: ChunkLimits) -> Self {
        Self {
            client,
            table: Arc::from(table),
            limits,
        }
    }

    fn expires_at(&self, started_ms: i64) -> i64 {
        (started_ms + crate::clock::ms(self.limits.timeout)) / 1000 + 1
    }

    async fn head(&self, connection_id: &str) -> Result<Option<Head>, ChunkError> {
        let got = self
            .client
            .get_item()
            .table_name(&*self.table)
            .set_key(Some(key(connection_id, HEAD)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("read", describe(&e)))?;
        Ok(got.item().and_then(|item| {
            Some(Head {
                chunk_id: text(item, "chunk_id")?.to_owned(),
                count: u32::try_from(number(item, "count")?).ok()?,
                instance: text(item, "instance")?.to_owned(),
                started_ms: number(item, "started_at")?,
            })
        }))
    }

    /// Writes a new head for `chunk`'s message, replacing `previous` (an
    /// expired one); `false` when another replica wrote first.
    async fn start(
        &self,
        connection_id: &str,
        chunk: &Chunk,
        previous: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, ChunkError> {
        let mut item = key(connection_id, HEAD);
        item.insert("chunk_id".into(), s(&chunk.chunk_id));
        item.insert("count".into(), n(i64::from(chunk.count)));
        item.insert(
            "instance".into(),
            s(&uuid::Uuid::new_v4().simple().to_string()),
        );
        item.insert("started_at".into(), n(now_ms));
        item.insert("received".into(), n(0));
        item.insert("bytes".into(), n(0));
        item.insert("expires_at".into(), n(self.expires_at(now_ms)));
        let mut put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(item));
        put = match previous {
            None => put.condition_expression("attribute_not_exists(connection_id)"),
            Some(instance) => put
                .condition_expression("instance = :previous")
                .expression_attribute_values(":previous", s(instance)),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(condition_failed) => Ok(false),
            Err(err) => Err(unavailable("start", describe(&err))),
        }
    }

    async fn drop_head(&self, connection_id: &str, instance: &str) {
        let deleted = self
            .client
            .delete_item()
            .table_name(&*self.table)
            .set_key(Some(key(connection_id, HEAD)))
            .condition_expression("instance = :instance")
            .expression_attribute_values(":instance", s(instance))
            .send()
            .await;
        if let Err(err) = deleted
            && !err.as_service_error().is_some_and(condition_failed)
        {
            tracing::warn!(error = %describe(&err), "chunks table: cannot drop a message (its TTL will)");
        }
    }

    /// Reads every piece of `head`'s message, in order, and deletes the
    /// message's items.
    async fn join(&self, connection_id: &str, head: &Head) -> Result<String, ChunkError> {
        let mut parts: Vec<(i64, String)> = Vec::with_capacity(head.count as usize);
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&*self.table)
                .key_condition_expression("connection_id = :c AND part BETWEEN :from AND :to")
                .expression_attribute_values(":c", s(connection_id))
                .expression_attribute_values(":from", n(0))
                .expression_attribute_values(":to", n(i64::from(head.count) - 1))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable("join", describe(&e)))?;
            parts.extend(page.items().iter().filter_map(|item| {
                (text(item, "instance")? == head.instance)
                    .then(|| Some((number(item, "part")?, text(item, "data")?.to_owned())))?
            }));
            match page.last_evaluated_key() {
                Some(last) if !last.is_empty() => start = Some(last.clone()),
                _ => break,
            }
        }
        parts.sort_by_key(|(part, _)| *part);
        let complete = parts.len() == head.count as usize
            && parts.iter().zip(0..).all(|((part, _), i)| *part == i);
        self.delete(connection_id, head.count).await;
        if !complete {
            return Err(unavailable(
                "join",
                format!("{} of {} pieces readable", parts.len(), head.count),
            ));
        }
        Ok(parts.into_iter().map(|(_, data)| data).collect())
    }

    /// Deletes the head and `count` pieces (best effort: the TTL backs it).
    async fn delete(&self, connection_id: &str, count: u32) {
        let keys = std::iter::once(HEAD)
            .chain(0..i64::from(count))
            .map(|part| key(connection_id, part));
        if let Err(error) = batch_delete(&self.client, &self.table, keys, 3).await {
            tracing::warn!(%error, "chunks table: cannot delete a joined message (its TTL will)");
        }
    }
}

#[async_trait]
impl Chunks for DynamoChunks {
    /// Pieces wait in the table, not in memory: the shares of the memory
    /// budget do not apply; a connection holds at most one message of at
    /// most the message bound, and the TTL removes what never completes.
    async fn add(
        &self,
        connection_id: &str,
        _tenant_id: &str,
        chunk: Chunk,
        now_ms: i64,
    ) -> Result<Added, ChunkError> {
        chunk
            .check()
            .map_err(|why| ChunkError::Refused(JoinError::Malformed(why)))?;
        let limits = self.limits;
        let mut started = false;
        let mut found = None;
        for _ in 0..ATTEMPTS {
            match self.head(connection_id).await? {
                Some(head) if expired(head.started_ms, now_ms, limits.timeout) => {
                    if head.chunk_id == chunk.chunk_id {
                        self.drop_head(connection_id, &head.instance).await;
                        return Err(ChunkError::TimedOut);
                    }
                    if chunk.count > limits.max_chunks {
                        return Err(ChunkError::Refused(JoinError::TooLarge));
                    }
                    if self
                        .start(connection_id, &chunk, Some(&head.instance), now_ms)
                        .await?
                    {
                        started = true;
                    }
                }
                Some(head) => {
                    found = Some(head);
                    break;
                }
                None => {
                    if chunk.count > limits.max_chunks {
                        return Err(ChunkError::Refused(JoinError::TooLarge));
                    }
                    if self.start(connection_id, &chunk, None, now_ms).await? {
                        started = true;
                    }
                }
            }
        }
        let Some(head) = found else {
            return Err(unavailable("add", "the head kept changing".into()));
        };
        if head.chunk_id != chunk.chunk_id {
            return Err(ChunkError::Refused(JoinError::Interleaved));
        }
        if head.count != chunk.count {
            return Err(ChunkError::Refused(JoinError::CountChanged));
        }
        let bytes = i64::try_from(chunk.data.len()).unwrap_or(i64::MAX);
        let max = i64::try_from(limits.max_bytes).unwrap_or(i64::MAX);
        if bytes > max {
            self.drop_head(connection_id, &head.instance).await;
            return Err(ChunkError::Refused(JoinError::TooLarge));
        }
        let mut item = key(connection_id, i64::from(chunk.index));
        item.insert("data".into(), s(&chunk.data));
        item.insert("instance".into(), s(&head.instance));
        item.insert("expires_at".into(), n(self.expires_at(head.started_ms)));
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(connection_id) OR instance <> :instance")
            .expression_attribute_values(":instance", s(&head.instance))
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(err) if err.as_service_error().is_some_and(condition_failed) => {
                return Err(ChunkError::Refused(JoinError::Duplicate));
            }
            Err(err) => return Err(unavailable("put", describe(&err))),
        }
        let counted = self
            .client
            .update_item()
            .table_name(&*self.table)
            .set_key(Some(key(connection_id, HEAD)))
            .update_expression("ADD received :one, #bytes :len")
            .condition_expression("instance = :instance AND #bytes <= :room")
            .expression_attribute_names("#bytes", "bytes")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":len", n(bytes))
            .expression_attribute_values(":instance", s(&head.instance))
            .expression_attribute_values(":room", n(max - bytes))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let received = match counted {
            Ok(out) => out
                .attributes()
                .and_then(|item| number(item, "received"))
                .unwrap_or(0),
            Err(err) if err.as_service_error().is_some_and(condition_failed) => {
                // Over the byte bound, or the message was dropped meanwhile.
                self.drop_head(connection_id, &head.instance).await;
                return Err(ChunkError::Refused(JoinError::TooLarge));
            }
            Err(err) => return Err(unavailable("count", describe(&err))),
        };
        if received < i64::from(head.count) {
            return Ok(Added {
                started,
                joined: None,
            });
        }
        Ok(Added {
            started,
            joined: Some(self.join(connection_id, &head).await?),
        })
    }

    async fn forget(&self, connection_id: &str) {
        if let Err(err) = self
            .client
            .delete_item()
            .table_name(&*self.table)
            .set_key(Some(key(connection_id, HEAD)))
            .send()
            .await
        {
            tracing::warn!(error = %describe(&err), "chunks table: cannot drop a message (its TTL will)");
        }
    }

    async fn disconnected(&self, _connection_id: &str) {
        // Nothing to do: a message left half-way expires with the TTL, and
        // a delete on every disconnect would cost a write per connection.
    }

    async fn expire(&self, _now_ms: i64) -> usize {
        // The table's TTL frees what never completes (it holds no memory
        // here), and the next piece of a message past its timeout is told.
        0
    }

    fn limits(&self) -> &ChunkLimits {
        &self.limits
    }
}
