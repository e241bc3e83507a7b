//! The per-connection message limit shared by every control-plane replica,
//! kept in DynamoDB (`STREAMER_SHARED_RATE_LIMITS=true`).
//!
//! GCRA with the theoretical arrival time (`tat`, ms) stored per connection
//! and advanced with a conditional write on its previous value, so
//! concurrent replicas never both spend the same cell.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aws_sdk_dynamodb::{
    Client,
    types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
        ScalarAttributeType,
    },
};

use crate::{
    config::LimitsConfig,
    registry::{RegistryError, dynamo, now_ms},
};

/// Optimistic-concurrency retries before giving up on one check.
const MAX_TRIES: usize = 5;

/// A shared limiter decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedCheck {
    /// The message may pass.
    Allowed,
    /// Over the limit; retry after this long.
    Limited(Duration),
}

/// GCRA over DynamoDB.
#[derive(Clone)]
pub struct SharedMessageLimiter {
    client: Client,
    table: Arc<str>,
    emission_ms: i64,
    burst: i64,
}

impl std::fmt::Debug for SharedMessageLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMessageLimiter")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: impl std::fmt::Debug) -> RegistryError {
    RegistryError::Unavailable(format!("{err:?}").chars().take(200).collect())
}

/// Creates the rate-limit table (key `limiter_key`, TTL `expires_at`).
pub async fn create_table(client: &Client, table: &str) -> Result<(), RegistryError> {
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("limiter_key")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(unavailable)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("limiter_key")
                .key_type(KeyType::Hash)
                .build()
                .map_err(unavailable)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(err)
            if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&err)
                == Some("ResourceInUseException") => {}
        Err(err) => return Err(unavailable(err)),
    }
    dynamo::wait_active(client, table).await?;
    dynamo::enable_ttl(client, table, "expires_at").await
}

impl SharedMessageLimiter {
    /// The limiter for `limits` on `table`.
    pub fn new(client: Client, table: &str, limits: &LimitsConfig) -> Self {
        Self {
            client,
            table: Arc::from(table),
            emission_ms: (60_000 / i64::from(limits.messages_per_minute.max(1))).max(1),
            burst: i64::from(limits.message_burst.max(1)),
        }
    }

    /// Spends one cell of `connection_id`'s budget, if there is one.
    pub async fn check(&self, connection_id: &str) -> Result<SharedCheck, RegistryError> {
        let key = format!("msg#{connection_id}");
        for _ in 0..MAX_TRIES {
            let now = now_ms();
            let current = self
                .client
                .get_item()
                .table_name(&*self.table)
                .key("limiter_key", AttributeValue::S(key.clone()))
                .consistent_read(true)
                .send()
                .await
                .map_err(unavailable)?;
            let old_tat = current
                .item()
                .and_then(|item| item.get("tat"))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<i64>().ok());
            let new_tat = old_tat.unwrap_or(now).max(now) + self.emission_ms;
            let over = new_tat - now - self.emission_ms * self.burst;
            if over > 0 {
                return Ok(SharedCheck::Limited(Duration::from_millis(
                    u64::try_from(over).unwrap_or(0),
                )));
            }
            let item = HashMap::from([
                ("limiter_key".to_owned(), AttributeValue::S(key.clone())),
                ("tat".to_owned(), AttributeValue::N(new_tat.to_string())),
                (
                    "expires_at".to_owned(),
                    AttributeValue::N((new_tat / 1000 + 3600).to_string()),
                ),
            ]);
            let mut put = self
                .client
                .put_item()
                .table_name(&*self.table)
                .set_item(Some(item));
            put = match old_tat {
                Some(old) => put
                    .condition_expression("tat = :old")
                    .expression_attribute_values(":old", AttributeValue::N(old.to_string())),
                None => put.condition_expression("attribute_not_exists(limiter_key)"),
            };
            match put.send().await {
                Ok(_) => return Ok(SharedCheck::Allowed),
                Err(err) if dynamo::condition_failed(&err) => {
                    continue;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
        Err(RegistryError::Unavailable("rate limit contention".into()))
    }
}
