//! One holder at a time across the fleet, for background work every
//! replica could do (the reconcile job): a lease item in the shared
//! rate-limits table, taken with a conditional write and given back at the
//! end. A replica that dies holding it loses it when it expires.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;

use super::dynamo::{condition_failed, describe, n, s};

/// A lease on one piece of work.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Takes the lease for `ttl` if nobody else holds it (or renews it);
    /// whether this holder has it now.
    async fn acquire(&self, ttl: Duration, now_ms: i64) -> Result<bool, String>;

    /// Gives the lease back (only if this holder has it).
    async fn release(&self);
}

/// A lease item in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoLease {
    client: Client,
    table: Arc<str>,
    key: String,
    owner: String,
}

impl DynamoLease {
    /// The lease `name` in `table` (the rate-limits table, hash key
    /// `limiter_key`), held as `owner`.
    pub fn new(client: Client, table: &str, name: &str, owner: &str) -> Self {
        Self {
            client,
            table: Arc::from(table),
            key: format!("lease#{name}"),
            owner: owner.to_owned(),
        }
    }
}

#[async_trait]
impl Lease for DynamoLease {
    async fn acquire(&self, ttl: Duration, now_ms: i64) -> Result<bool, String> {
        let until = now_ms + crate::clock::ms(ttl);
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .item("limiter_key", s(&self.key))
            .item("owner", s(&self.owner))
            .item("until_ms", n(until))
            .item("expires_at", n(until / 1000 + 60))
            .condition_expression(
                "attribute_not_exists(limiter_key) OR until_ms < :now OR #owner = :me",
            )
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":me", s(&self.owner))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(describe(&err)),
        }
    }

    async fn release(&self) {
        let _ = self
            .client
            .delete_item()
            .table_name(&*self.table)
            .key("limiter_key", s(&self.key))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":me", s(&self.owner))
            .send()
            .await;
    }
}
