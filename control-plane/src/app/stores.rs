//! Opening the configured store: the embedded registry and queue, or
//! DynamoDB through `aws-config` (standard AWS variables, including
//! `AWS_ENDPOINT_URL_DYNAMODB`, work unchanged); and `tables create`.

use std::sync::Arc;

use crate::connections::chunks::{ChunkLimits, Chunks, MemoryChunks, dynamo::DynamoChunks};
use crate::{
    clock::Clock,
    config::{Config, StoreKind},
    registry::{
        Connection, Registry, Ttl, dynamo::DynamoRegistry, instrumented::Instrumented,
        legacy::LegacyMirror, memory::MemoryRegistry,
    },
    requests::queue::{RequestQueue, dynamo::DynamoQueue, memory::MemoryQueue},
    store::dynamo,
    streams::{History, Retention, dynamo::DynamoHistory, memory::MemoryHistory},
};

/// The opened stores.
pub struct Stores {
    /// The connection registry (instrumented).
    pub registry: Arc<dyn Registry>,
    /// The request queue.
    pub queue: Arc<dyn RequestQueue>,
    /// Stream history.
    pub history: Arc<dyn History>,
    /// Chunked client messages being joined.
    pub chunks: Arc<dyn Chunks>,
    /// The DynamoDB client, when the store is DynamoDB (for the shared
    /// rate limits).
    pub dynamodb: Option<aws_sdk_dynamodb::Client>,
    /// Removed connections that were in groups (for presence).
    pub departures: tokio::sync::mpsc::UnboundedReceiver<Connection>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("dynamodb", &self.dynamodb.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens the stores `config` selects, reading time from `clock`.
pub async fn open(config: &Config, clock: Clock) -> Stores {
    let ttl = Ttl {
        idle: config.store.connection_ttl,
        max_age: config.store.connection_ttl,
    };
    let retention = Retention {
        size: config.history.size,
        ttl: config.history.ttl,
    };
    let chunk_limits = ChunkLimits {
        max_bytes: config.limits.chunked_max_bytes,
        max_chunks: config.limits.chunked_max_chunks,
        timeout: config.limits.chunked_timeout,
        max_held_bytes: config.limits.chunked_held_max_bytes,
    };
    let (departures_tx, departures) = tokio::sync::mpsc::unbounded_channel();
    let instrumented = |backend: Arc<dyn Registry>| -> Arc<dyn Registry> {
        Arc::new(Instrumented::new(backend).with_departures(departures_tx.clone()))
    };
    match config.store.kind {
        StoreKind::Memory => Stores {
            registry: instrumented(Arc::new(MemoryRegistry::with_ttl(ttl, clock))),
            queue: Arc::new(MemoryQueue::new()),
            history: Arc::new(MemoryHistory::new(retention)),
            chunks: Arc::new(MemoryChunks::new(chunk_limits)),
            dynamodb: None,
            departures,
        },
        StoreKind::DynamoDb => {
            let client = dynamo::client().await;
            Stores {
                registry: instrumented({
                    let registry: Arc<dyn Registry> = Arc::new(DynamoRegistry::new(
                        client.clone(),
                        &config.store.connections_table,
                        ttl,
                        clock,
                    ));
                    match &config.store.legacy_mirror_table {
                        Some(table) => Arc::new(LegacyMirror::new(
                            registry,
                            client.clone(),
                            table,
                            config.store.legacy_shape,
                        )),
                        None => registry,
                    }
                }),
                queue: Arc::new(DynamoQueue::new(
                    client.clone(),
                    &config.store.requests_table,
                )),
                history: Arc::new(DynamoHistory::new(
                    client.clone(),
                    &config.history.table,
                    retention,
                )),
                chunks: Arc::new(DynamoChunks::new(
                    client.clone(),
                    &config.store.chunks_table,
                    chunk_limits,
                )),
                dynamodb: Some(client),
                departures,
            }
        }
    }
}

/// What `tables create` makes, by setting and name.
pub fn tables(config: &Config) -> Vec<(&'static str, String, dynamo::TableSpec)> {
    vec![
        (
            "STREAMER_CONNECTIONS_TABLE",
            config.store.connections_table.clone(),
            crate::registry::dynamo::table_spec(),
        ),
        (
            "STREAMER_REQUESTS_TABLE",
            config.store.requests_table.clone(),
            crate::requests::queue::dynamo::table_spec(),
        ),
        (
            "STREAMER_RATE_LIMITS_TABLE",
            config.store.rate_limits_table.clone(),
            dynamo::TableSpec {
                hash: dynamo::string("limiter_key"),
                range: None,
                indexes: Vec::new(),
                ttl: Some("expires_at"),
            },
        ),
        (
            "STREAMER_HISTORY_TABLE",
            config.history.table.clone(),
            crate::streams::dynamo::table_spec(),
        ),
        (
            "STREAMER_CHUNKS_TABLE",
            config.store.chunks_table.clone(),
            crate::connections::chunks::dynamo::table_spec(),
        ),
    ]
}

/// `tables create`: makes the configured tables (idempotent) and returns
/// their names; a failure names the table and the cause.
pub async fn create_tables(config: &Config) -> Result<Vec<String>, String> {
    let client = dynamo::client().await;
    let mut made = Vec::new();
    for (setting, table, spec) in tables(config) {
        spec.create(&client, &table)
            .await
            .map_err(|cause| format!("cannot create table {table} ({setting}): {cause}"))?;
        made.push(table);
    }
    Ok(made)
}
