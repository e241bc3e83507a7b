//! Opening the configured store: the embedded registry and queue, or
//! DynamoDB through `aws-config` (standard AWS variables, including
//! `AWS_ENDPOINT_URL_DYNAMODB`, work unchanged); and `tables create`.

use std::sync::Arc;

use crate::{
    clock::Clock,
    config::{Config, StoreKind},
    registry::{
        Connection, Registry, Ttl, dynamo::DynamoRegistry, instrumented::Instrumented,
        memory::MemoryRegistry,
    },
    requests::queue::{RequestQueue, dynamo::DynamoQueue, memory::MemoryQueue},
    store::dynamo,
};

/// The opened stores.
pub struct Stores {
    /// The connection registry (instrumented).
    pub registry: Arc<dyn Registry>,
    /// The request queue.
    pub queue: Arc<dyn RequestQueue>,
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
    let (backend, queue, dynamodb): (Arc<dyn Registry>, Arc<dyn RequestQueue>, _) =
        match config.store.kind {
            StoreKind::Memory => (
                Arc::new(MemoryRegistry::with_ttl(ttl, clock)),
                Arc::new(MemoryQueue::new()),
                None,
            ),
            StoreKind::DynamoDb => {
                let client = dynamo::client().await;
                (
                    Arc::new(DynamoRegistry::new(
                        client.clone(),
                        &config.store.connections_table,
                        ttl,
                        clock,
                    )),
                    Arc::new(DynamoQueue::new(
                        client.clone(),
                        &config.store.requests_table,
                    )),
                    Some(client),
                )
            }
        };
    let (departures_tx, departures) = tokio::sync::mpsc::unbounded_channel();
    Stores {
        registry: Arc::new(Instrumented::new(backend).with_departures(departures_tx)),
        queue,
        dynamodb,
        departures,
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
