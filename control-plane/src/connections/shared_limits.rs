//! Rate limits shared by every control-plane replica, kept in DynamoDB (on by
//! default with `STREAMER_STORE=dynamodb`): one connection's messages and one
//! IP's connects spend one budget whichever replica they reach.
//!
//! GCRA with the theoretical arrival time (`tat`, ms) stored per key and
//! advanced with a conditional write on its previous value, so concurrent
//! replicas never both spend the same cell. Each check costs one consistent
//! read and one conditional write. When the store cannot answer, this
//! replica's own limiter decides (a limit that holds per replica beats
//! refusing every client while the store is down).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

use super::limits::{LocalLimits, RateLimiter};
use crate::{
    clock::Clock,
    config::LimitsConfig,
    error::RegistryError,
    store::dynamo::{Item, condition_failed, describe, n, number, s},
};

/// Optimistic-concurrency retries before giving up on one check.
const MAX_TRIES: usize = 5;

/// One GCRA budget: a cell every `emission_ms`, `burst` cells at once.
#[derive(Debug, Clone, Copy)]
struct Budget {
    emission_ms: i64,
    burst: i64,
}

impl Budget {
    fn per_minute(rate: u32, burst: u32) -> Self {
        Self {
            emission_ms: (60_000 / i64::from(rate.max(1))).max(1),
            burst: i64::from(burst.max(1)),
        }
    }
}

/// The limits in DynamoDB, with this replica's as the fallback.
pub struct SharedLimits {
    client: Client,
    table: Arc<str>,
    clock: Clock,
    messages: Budget,
    connects: Budget,
    fallback: LocalLimits,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// The limits of `config` on `table`.
    pub fn new(client: Client, table: &str, limits: &LimitsConfig, clock: Clock) -> Self {
        Self {
            client,
            table: Arc::from(table),
            clock,
            messages: Budget::per_minute(limits.messages_per_minute, limits.message_burst),
            connects: Budget::per_minute(
                limits.connects_per_minute_per_ip,
                limits.connects_per_minute_per_ip,
            ),
            fallback: LocalLimits::new(limits),
        }
    }

    /// Spends one cell of `key`'s budget, if there is one.
    async fn spend(
        &self,
        key: &str,
        budget: Budget,
    ) -> Result<Result<(), Duration>, RegistryError> {
        for _ in 0..MAX_TRIES {
            let now = self.clock.now_ms();
            let current = self
                .client
                .get_item()
                .table_name(&*self.table)
                .key("limiter_key", s(key))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| RegistryError::Unavailable(describe(&e)))?;
            let old_tat = current.item().and_then(|item| number(item, "tat"));
            let new_tat = old_tat.unwrap_or(now).max(now) + budget.emission_ms;
            let over = new_tat - now - budget.emission_ms * budget.burst;
            if over > 0 {
                return Ok(Err(Duration::from_millis(u64::try_from(over).unwrap_or(0))));
            }
            let item = Item::from([
                ("limiter_key".to_owned(), s(key)),
                ("tat".to_owned(), n(new_tat)),
                ("expires_at".to_owned(), n(new_tat / 1000 + 3600)),
            ]);
            let mut put = self
                .client
                .put_item()
                .table_name(&*self.table)
                .set_item(Some(item));
            put = match old_tat {
                Some(old) => put
                    .condition_expression("tat = :old")
                    .expression_attribute_values(":old", n(old)),
                None => put.condition_expression("attribute_not_exists(limiter_key)"),
            };
            match put.send().await {
                Ok(_) => return Ok(Ok(())),
                Err(err) if condition_failed(&err) => continue,
                Err(err) => return Err(RegistryError::Unavailable(describe(&err))),
            }
        }
        Err(RegistryError::Unavailable("rate limit contention".into()))
    }
}

#[async_trait]
impl RateLimiter for SharedLimits {
    async fn check_message(&self, connection_id: &str) -> Result<(), Duration> {
        match self
            .spend(&format!("msg#{connection_id}"), self.messages)
            .await
        {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!(error = %err, "shared message limit unavailable; using this replica's");
                self.fallback.message(connection_id)
            }
        }
    }

    async fn check_connect(&self, source_ip: &str) -> Result<(), Duration> {
        match self.spend(&format!("ip#{source_ip}"), self.connects).await {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::warn!(error = %err, "shared connect limit unavailable; using this replica's");
                self.fallback.connect(source_ip)
            }
        }
    }

    fn housekeeping(&self) {
        self.fallback.retain_recent();
    }
}
