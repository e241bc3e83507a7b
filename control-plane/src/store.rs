//! Opening the configured store: the embedded registry, or DynamoDB through
//! `aws-config` (standard AWS variables, including
//! `AWS_ENDPOINT_URL_DYNAMODB`, work unchanged).

use std::{sync::Arc, time::Duration};

use aws_sdk_dynamodb::config::{retry::RetryConfig, timeout::TimeoutConfig};

use crate::{
    config::{Config, StoreKind},
    registry::{
        Registry, RegistryError, Ttl, dynamo::DynamoRegistry, instrumented::Instrumented,
        memory::MemoryRegistry,
    },
    shared_limit::SharedMessageLimiter,
};

/// The opened stores.
pub struct Stores {
    /// The connection registry.
    pub registry: Arc<dyn Registry>,
    /// The shared message limiter, when configured.
    pub shared_limiter: Option<Arc<SharedMessageLimiter>>,
    /// The request queue.
    pub queue: Arc<dyn crate::queue::RequestQueue>,
    /// Removed connections that were in groups (for presence).
    pub departures: tokio::sync::mpsc::UnboundedReceiver<crate::registry::Connection>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("shared_limiter", &self.shared_limiter.is_some())
            .finish_non_exhaustive()
    }
}

/// A DynamoDB client from the standard AWS configuration, with a bounded
/// retry budget and timeouts: a store that is down is an error the client
/// sees within seconds, never a hang.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Opens the stores `config` selects.
pub async fn open(config: &Config) -> Stores {
    let ttl = Ttl {
        idle: config.store.connection_ttl,
        max_age: config.store.connection_ttl,
    };
    type Queue = Arc<dyn crate::queue::RequestQueue>;
    let (backend, shared_limiter, queue): (Arc<dyn Registry>, _, Queue) = match config.store.kind {
        StoreKind::Memory => (
            Arc::new(MemoryRegistry::with_ttl(ttl)),
            None,
            Arc::new(crate::queue::memory::MemoryQueue::new()),
        ),
        StoreKind::DynamoDb => {
            let client = dynamodb_client().await;
            let shared_limiter = config.store.shared_rate_limits.then(|| {
                Arc::new(SharedMessageLimiter::new(
                    client.clone(),
                    &config.store.rate_limits_table,
                    &config.limits,
                ))
            });
            let queue = Arc::new(crate::queue::dynamo::DynamoQueue::new(
                client.clone(),
                &config.store.requests_table,
            ));
            (
                Arc::new(DynamoRegistry::new(
                    client,
                    &config.store.connections_table,
                    ttl,
                )),
                shared_limiter,
                queue,
            )
        }
    };
    let (departures_tx, departures) = tokio::sync::mpsc::unbounded_channel();
    Stores {
        registry: Arc::new(Instrumented::new(backend).with_departures(departures_tx)),
        shared_limiter,
        queue,
        departures,
    }
}

/// `tables create`: makes the configured tables (idempotent) and returns
/// their names.
pub async fn create_tables(config: &Config) -> Result<Vec<String>, RegistryError> {
    let client = dynamodb_client().await;
    crate::registry::dynamo::create_table(&client, &config.store.connections_table).await?;
    crate::queue::dynamo::create_table(&client, &config.store.requests_table).await?;
    crate::shared_limit::create_table(&client, &config.store.rate_limits_table).await?;
    Ok(vec![
        config.store.connections_table.clone(),
        config.store.requests_table.clone(),
        config.store.rate_limits_table.clone(),
    ])
}
