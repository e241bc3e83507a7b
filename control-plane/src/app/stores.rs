//! Opening the configured store: the embedded registry and queue, or
//! DynamoDB through `aws-config` (standard AWS variables, including
//! `AWS_ENDPOINT_URL_DYNAMODB`, work unchanged); and `tables create`.

use std::sync::Arc;

use crate::connections::chunks::{ChunkLimits, Chunks, MemoryChunks, dynamo::DynamoChunks};
use crate::{
    clock::Clock,
    config::{Config, StoreKind},
    registry::{
        Connection, Registry, Ttl,
        dynamo::DynamoRegistry,
        instrumented::Instrumented,
        legacy::{LegacyMirror, Shape as LegacyShape},
        memory::MemoryRegistry,
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
        max_held_bytes_per_tenant: config.limits.chunked_held_max_bytes_per_tenant,
        max_held_bytes_per_connection: config.limits.chunked_held_max_bytes_per_connection,
    };
    let (departures_tx, departures) = tokio::sync::mpsc::unbounded_channel();
    match config.store.kind {
        StoreKind::Memory => Stores {
            registry: registry_stack(
                Arc::new(MemoryRegistry::with_ttl(ttl, clock)),
                None,
                Some(departures_tx),
            ),
            queue: Arc::new(MemoryQueue::new().with_limits(config.jobs.queue_limits)),
            history: Arc::new(MemoryHistory::new(retention)),
            chunks: Arc::new(MemoryChunks::new(chunk_limits)),
            dynamodb: None,
            departures,
        },
        StoreKind::DynamoDb => {
            let client = dynamo::client().await;
            Stores {
                registry: registry_stack(
                    Arc::new(DynamoRegistry::new(
                        client.clone(),
                        &config.store.connections_table,
                        ttl,
                        clock,
                    )),
                    config
                        .store
                        .legacy_mirror_table
                        .as_deref()
                        .map(|table| (client.clone(), table, config.store.legacy_shape)),
                    Some(departures_tx),
                ),
                queue: Arc::new(
                    DynamoQueue::new(client.clone(), &config.store.requests_table)
                        .with_limits(config.jobs.queue_limits),
                ),
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

/// The registry as the app serves it: `backend`, dual-written into the Go
/// system's table when `mirror` names it (client, table, item shape), and
/// instrumented outermost (spans, metrics, and the departures presence
/// needs). The conformance suites run through this very stack, so a
/// decorator that fails to forward a call fails them.
pub fn registry_stack(
    backend: Arc<dyn Registry>,
    mirror: Option<(aws_sdk_dynamodb::Client, &str, LegacyShape)>,
    departures: Option<tokio::sync::mpsc::UnboundedSender<Connection>>,
) -> Arc<dyn Registry> {
    let mirrored: Arc<dyn Registry> = match mirror {
        Some((client, table, shape)) => Arc::new(LegacyMirror::new(backend, client, table, shape)),
        None => backend,
    };
    let instrumented = Instrumented::new(mirrored);
    Arc::new(match departures {
        Some(departures) => instrumented.with_departures(departures),
        None => instrumented,
    })
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
