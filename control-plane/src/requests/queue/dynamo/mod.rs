//! The request queue on DynamoDB (`STREAMER_REQUESTS_TABLE`).
//!
//! One item per request, key `pk` = `tenant#request_id` (tenant ids never
//! contain `#`, so ids are scoped to their tenant). Four GSIs, two of them
//! sparse: `by-tenant` (`tenant_id`, `request_id`) and `by-tenant-status`
//! (`tenant_status` = `tenant#status`, `request_id`) for listing;
//! `by-queue` (`queue_key` = the action, `ready_at`) holding only queued
//! requests of fleet-wide actions, in the order they may be leased (where
//! unbound processors lease); `by-tenant-queue` (`tenant_queue_key` =
//! `tenant#action`, `ready_at`) holding every queued request, where a
//! processor bound to a tenant leases, so another tenant's backlog never
//! stands in front of it (filtering one shared partition by tenant did:
//! 15 waiting requests of one tenant hid another's from its processor);
//! `by-wait` (`wait_shard`, one of eight, `ready_at`) from which requests
//! that waited too long expire; `by-lease` (`lease_key`,
//! `lease_expires`) holding only running ones, for expired leases. Every
//! transition is an UpdateItem conditioned on the current status (and the
//! lease owner), so a redelivered or late message never acts twice. A
//! fifth, sparse GSI `by-cancel` (`cancel_owner`, `pk`) holds cancelled
//! requests whose processor (on some replica) is still to be told; items
//! `#action#<scope>#<name>` publish the actions processors serve to every
//! replica, one definition per name and scope (a conditional write). Items
//! `#open#t#<tenant>` and `#open#u#<tenant>#<user>` count open requests,
//! so a create past the bound is refused in the same transaction.
//! Finished requests get a TTL (`expires_at`, 7 days).

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    operation::update_item::builders::UpdateItemFluentBuilder,
    types::{AttributeValue, ReturnValue},
};
use serde_json::Value;

mod items;

use self::items::{
    WAIT_SHARDS, finished_ttl, from_item, pk, queued_keys, tenant_queue_key, tenant_status, to_item,
};

/// The counter items of a tenant's and a user's open requests.
fn open_keys(tenant_id: &str, user_id: &str) -> [String; 2] {
    [
        format!("#open#t#{tenant_id}"),
        format!("#open#u#{tenant_id}#{user_id}"),
    ]
}

/// The attributes a request leaves behind when it stops waiting.
const QUEUED_KEYS: &str = "queue_key, tenant_queue_key, wait_shard, ready_at";
use super::{Failure, ProgressState, QueueError, QueueLimits, Request, RequestQueue, Status};
use crate::store::dynamo::{Item, TableSpec, condition_failed, describe, n, numeric, s, string};

/// Listing index.
pub const TENANT_INDEX: &str = "by-tenant";
/// Listing of one status.
pub const STATUS_INDEX: &str = "by-tenant-status";
/// Queued requests by action and readiness.
pub const QUEUE_INDEX: &str = "by-queue";
/// Queued requests by tenant and action, and readiness.
pub const TENANT_QUEUE_INDEX: &str = "by-tenant-queue";
/// Queued requests by shard and readiness (for expiry).
pub const WAIT_INDEX: &str = "by-wait";
/// Running requests by lease expiry.
pub const LEASE_INDEX: &str = "by-lease";
/// Cancelled requests by the processor session still to be told (sparse).
pub const CANCEL_INDEX: &str = "by-cancel";

fn unavailable<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    err: SdkError<E, R>,
) -> QueueError {
    QueueError::Unavailable(describe(&err))
}

/// The largest payload, and the largest result, one request item keeps.
pub const MAX_VALUE_BYTES: usize = 170_000;

/// The table as `tables create` makes it.
pub fn table_spec() -> TableSpec {
    TableSpec {
        hash: string("pk"),
        range: None,
        indexes: vec![
            (TENANT_INDEX, string("tenant_id"), string("request_id")),
            (STATUS_INDEX, string("tenant_status"), string("request_id")),
            (QUEUE_INDEX, string("queue_key"), numeric("ready_at")),
            (
                TENANT_QUEUE_INDEX,
                string("tenant_queue_key"),
                numeric("ready_at"),
            ),
            (WAIT_INDEX, string("wait_shard"), numeric("ready_at")),
            (LEASE_INDEX, string("lease_key"), numeric("lease_expires")),
            (CANCEL_INDEX, string("cancel_owner"), string("pk")),
        ],
        ttl: Some("expires_at"),
    }
}

/// Creates the requests table (idempotent): key, GSIs, on-demand, TTL.
pub async fn create_table(client: &Client, table: &str) -> Result<(), QueueError> {
    table_spec()
        .create(client, table)
        .await
        .map_err(QueueError::Unavailable)
}

/// The DynamoDB request queue.
#[derive(Clone)]
pub struct DynamoQueue {
    client: Client,
    table: Arc<str>,
    limits: QueueLimits,
}

impl std::fmt::Debug for DynamoQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoQueue")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl DynamoQueue {
    /// A queue on `table`.
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: Arc::from(table),
            limits: QueueLimits::default(),
        }
    }

    /// The same queue, bounding open requests per user and tenant.
    pub fn with_limits(self, limits: QueueLimits) -> Self {
        Self { limits, ..self }
    }

    fn counted(&self) -> bool {
        self.limits.max_per_user > 0 || self.limits.max_per_tenant > 0
    }

    /// Gives a finished request's place back to its user and tenant.
    async fn release_open(&self, request: &Request) {
        if !self.counted() {
            return;
        }
        for key in open_keys(&request.tenant_id, &request.user_id) {
            if let Err(err) = self
                .client
                .update_item()
                .table_name(&*self.table)
                .key("pk", s(&key))
                .update_expression("ADD #open :minus")
                .expression_attribute_names("#open", "open")
                .expression_attribute_values(":minus", n(-1))
                .send()
                .await
            {
                tracing::warn!(error = %describe(&err), "cannot count a finished request out");
            }
        }
    }

    /// A transition that may finish the request: the open counts follow.
    async fn finish(
        &self,
        tenant_id: &str,
        request_id: &str,
        update: UpdateItemFluentBuilder,
    ) -> Result<Request, QueueError> {
        let request = self.transition(tenant_id, request_id, update).await?;
        if request.status.is_final() {
            self.release_open(&request).await;
        }
        Ok(request)
    }

    fn update(&self, tenant_id: &str, request_id: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&*self.table)
            .key("pk", s(&pk(tenant_id, request_id)))
            .expression_attribute_names("#status", "status")
            .return_values(ReturnValue::AllNew)
    }

    /// A create that counts the request into its user's and tenant's open
    /// requests in the same transaction, each count conditioned on its
    /// bound, so no flood gets past it whatever the replicas.
    async fn create_counted(&self, request: Request) -> Result<(), QueueError> {
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        let build = |e: aws_sdk_dynamodb::error::BuildError| QueueError::Unavailable(e.to_string());
        let put = Put::builder()
            .table_name(&*self.table)
            .set_item(Some(to_item(&request)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        let [tenant_key, user_key] = open_keys(&request.tenant_id, &request.user_id);
        let count = |key: &str, max: u64| {
            let update = Update::builder()
                .table_name(&*self.table)
                .key("pk", s(key))
                .update_expression("ADD #open :one")
                .expression_attribute_names("#open", "open")
                .expression_attribute_values(":one", n(1));
            match max {
                0 => update,
                max => update
                    .condition_expression("attribute_not_exists(#open) OR #open < :max")
                    .expression_attribute_values(":max", n(i64::try_from(max).unwrap_or(i64::MAX))),
            }
            .build()
        };
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(
                TransactWriteItem::builder()
                    .update(count(&tenant_key, self.limits.max_per_tenant).map_err(build)?)
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .update(count(&user_key, self.limits.max_per_user).map_err(build)?)
                    .build(),
            )
            .send()
            .await;
        let err = match written {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let reasons: Vec<bool> = err
            .as_service_error()
            .and_then(|e| match e {
                aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => Some(
                    c.cancellation_reasons()
                        .iter()
                        .map(|r| r.code() == Some("ConditionalCheckFailed"))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default();
        match reasons.as_slice() {
            [true, ..] => match self.get(&request.tenant_id, &request.request_id).await? {
                Some(existing) => Err(QueueError::Duplicate {
                    status: existing.status.as_str(),
                    user_id: existing.user_id,
                }),
                None => Err(QueueError::Unavailable(
                    "request vanished during create".into(),
                )),
            },
            [_, true, ..] => Err(QueueError::Full {
                who: "tenant",
                max: self.limits.max_per_tenant,
            }),
            [_, _, true] => Err(QueueError::Full {
                who: "user",
                max: self.limits.max_per_user,
            }),
            _ => Err(unavailable(err)),
        }
    }

    /// Runs a conditional transition; a failed condition reads the request
    /// back to tell `NotFound` from `Conflict`.
    async fn transition(
        &self,
        tenant_id: &str,
        request_id: &str,
        update: UpdateItemFluentBuilder,
    ) -> Result<Request, QueueError> {
        match update.send().await {
            Ok(out) => out
                .attributes()
                .and_then(from_item)
                .ok_or_else(|| QueueError::Unavailable("unreadable request item".into())),
            Err(e) if condition_failed(&e) => match self.get(tenant_id, request_id).await? {
                Some(current) => Err(QueueError::Conflict {
                    status: current.status.as_str(),
                }),
                None => Err(QueueError::NotFound),
            },
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl RequestQueue for DynamoQueue {
    /// A request is one item and an item holds 400 KB: payload and result
    /// get 170,000 bytes each, leaving room for the rest.
    fn max_value_bytes(&self) -> Option<usize> {
        Some(MAX_VALUE_BYTES)
    }

    async fn create(&self, request: Request) -> Result<(), QueueError> {
        if self.counted() {
            return self.create_counted(request).await;
        }
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(to_item(&request)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if condition_failed(&e) => {
                match self.get(&request.tenant_id, &request.request_id).await? {
                    Some(existing) => Err(QueueError::Duplicate {
                        status: existing.status.as_str(),
                        user_id: existing.user_id,
                    }),
                    None => Err(QueueError::Unavailable(
                        "request vanished during create".into(),
                    )),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn get(&self, tenant_id: &str, request_id: &str) -> Result<Option<Request>, QueueError> {
        let out = self
            .client
            .get_item()
            .table_name(&*self.table)
            .key("pk", s(&pk(tenant_id, request_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item().and_then(from_item))
    }

    async fn list(
        &self,
        tenant_id: &str,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Request>, Option<String>), QueueError> {
        let limit = limit.max(1);
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            // One status: its own index; all: the tenant index.
            let (index, key, value) = match status {
                Some(status) => (
                    STATUS_INDEX,
                    "tenant_status",
                    tenant_status(tenant_id, status),
                ),
                None => (TENANT_INDEX, "tenant_id", tenant_id.to_owned()),
            };
            let mut query = self
                .client
                .query()
                .table_name(&*self.table)
                .index_name(index)
                .expression_attribute_names("#pk", key)
                .expression_attribute_values(":t", s(&value))
                .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            query = match after {
                Some(after) => query
                    .key_condition_expression("#pk = :t AND request_id > :after")
                    .expression_attribute_values(":after", s(after)),
                None => query.key_condition_expression("#pk = :t"),
            };
            let out = query.send().await.map_err(unavailable)?;
            found.extend(out.items().iter().filter_map(from_item));
            match out.last_evaluated_key() {
                Some(key) if found.len() < limit => start = Some(key.clone()),
                Some(_) => {
                    let next = found.last().map(|r: &Request| r.request_id.clone());
                    return Ok((found, next));
                }
                None => return Ok((found, None)),
            }
        }
    }

    async fn lease(
        &self,
        actions: &[String],
        tenant: Option<&str>,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<Request>, QueueError> {
        // The oldest few of each partition this processor may serve: its
        // tenant's (bound) or the fleet-wide actions' (unbound). No filter
        // after the read, so no other tenant's backlog can hide them.
        let mut candidates: Vec<Request> = Vec::new();
        for action in actions {
            let (index, key, value) = match tenant {
                Some(tenant) => (
                    TENANT_QUEUE_INDEX,
                    "tenant_queue_key",
                    tenant_queue_key(tenant, action),
                ),
                None => (QUEUE_INDEX, "queue_key", action.clone()),
            };
            let out = self
                .client
                .query()
                .table_name(&*self.table)
                .index_name(index)
                .key_condition_expression("#k = :k AND ready_at <= :now")
                .expression_attribute_names("#k", key)
                .expression_attribute_values(":k", s(&value))
                .expression_attribute_values(":now", n(now_ms))
                .limit(10)
                .send()
                .await
                .map_err(unavailable)?;
            candidates.extend(out.items().iter().filter_map(from_item));
        }
        candidates.sort_by_key(|r| (r.not_before_ms.max(r.created_ms), r.created_ms));
        for candidate in candidates {
            let lease_until =
                now_ms + i64::try_from(candidate.lease_timeout_ms).unwrap_or(i64::MAX / 2);
            let update = self
                .update(&candidate.tenant_id, &candidate.request_id)
                .update_expression(
                    "SET #status = :running, tenant_status = :ts, lease_owner = :o, lease_expires = :le, lease_key = :lk, \
                     attempts = attempts + :one, updated = :now REMOVE queue_key, tenant_queue_key, wait_shard, ready_at",
                )
                .condition_expression("#status = :queued AND ready_at <= :now")
                .expression_attribute_values(":running", s(Status::Running.as_str()))
                .expression_attribute_values(":queued", s(Status::Queued.as_str()))
                .expression_attribute_values(":ts", s(&tenant_status(&candidate.tenant_id, Status::Running)))
                .expression_attribute_values(":o", s(owner))
                .expression_attribute_values(":le", n(lease_until))
                .expression_attribute_values(":lk", s("running"))
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":now", n(now_ms));
            match self
                .transition(&candidate.tenant_id, &candidate.request_id, update)
                .await
            {
                Ok(leased) => return Ok(Some(leased)),
                // Another processor won this one; try the next.
                Err(QueueError::Conflict { .. } | QueueError::NotFound) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn progress(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        progress: ProgressState,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        let encoded = serde_json::json!({
            "percentage": progress.percentage,
            "message": progress.message,
            "details": progress.details,
        })
        .to_string();
        let update = self
            .update(tenant_id, request_id)
            .update_expression(
                "SET progress = :p, lease_expires = lease_timeout_ms + :now, updated = :now",
            )
            .condition_expression("#status = :running AND lease_owner = :o")
            .expression_attribute_values(":p", s(&encoded))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":running", s(Status::Running.as_str()))
            .expression_attribute_values(":o", s(owner));
        self.transition(tenant_id, request_id, update).await
    }

    async fn complete(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        result: Value,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        let update = self
            .update(tenant_id, request_id)
            .update_expression(
                "SET #status = :done, tenant_status = :ts, #result = :r, updated = :now, expires_at = :ttl REMOVE lease_owner, lease_key",
            )
            .condition_expression("#status = :running AND lease_owner = :o")
            .expression_attribute_names("#result", "result")
            .expression_attribute_values(":done", s(Status::Completed.as_str()))
            .expression_attribute_values(":ts", s(&tenant_status(tenant_id, Status::Completed)))
            .expression_attribute_values(":r", s(&result.to_string()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":ttl", finished_ttl(now_ms))
            .expression_attribute_values(":running", s(Status::Running.as_str()))
            .expression_attribute_values(":o", s(owner));
        self.finish(tenant_id, request_id, update).await
    }

    async fn fail(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: Option<&str>,
        failure: Failure,
        retry_at: Option<i64>,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        let mut update = self
            .update(tenant_id, request_id)
            .expression_attribute_values(":now", n(now_ms));
        update = match retry_at {
            Some(at) => {
                let current = self.get(tenant_id, request_id).await?.ok_or(QueueError::NotFound)?;
                let keys = queued_keys(&current);
                let set: Vec<String> = keys
                    .iter()
                    .map(|(name, _)| format!("{name} = :{name}"))
                    .collect();
                let mut update = update
                    .update_expression(format!(
                        "SET #status = :queued, tenant_status = :ts, not_before = :at, ready_at = :at, updated = :now, {} \
                         REMOVE lease_owner, lease_key",
                        set.join(", ")
                    ))
                    .expression_attribute_values(":queued", s(Status::Queued.as_str()))
                    .expression_attribute_values(":ts", s(&tenant_status(tenant_id, Status::Queued)))
                    .expression_attribute_values(":at", n(at));
                for (name, value) in keys {
                    update = update.expression_attribute_values(format!(":{name}"), value);
                }
                update
            }
            None => update
                .update_expression(
                    "SET #status = :failed, tenant_status = :ts, error_code = :c, error_message = :m, updated = :now, expires_at = :ttl \
                     REMOVE lease_owner, lease_key",
                )
                .expression_attribute_values(":failed", s(Status::Failed.as_str()))
                .expression_attribute_values(":ts", s(&tenant_status(tenant_id, Status::Failed)))
                .expression_attribute_values(":c", s(&failure.code))
                .expression_attribute_values(":m", s(&failure.message))
                .expression_attribute_values(":ttl", finished_ttl(now_ms)),
        };
        update = update.expression_attribute_values(":running", s(Status::Running.as_str()));
        update = match owner {
            Some(owner) => update
                .condition_expression("#status = :running AND lease_owner = :o")
                .expression_attribute_values(":o", s(owner)),
            None => update.condition_expression("#status = :running"),
        };
        self.finish(tenant_id, request_id, update).await
    }

    async fn cancel(
        &self,
        tenant_id: &str,
        request_id: &str,
        holder: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, QueueError> {
        let update = self
            .update(tenant_id, request_id)
            .expression_attribute_values(":cancelled", s(Status::Cancelled.as_str()))
            .expression_attribute_values(":ts", s(&tenant_status(tenant_id, Status::Cancelled)))
            .expression_attribute_values(":queued", s(Status::Queued.as_str()))
            .expression_attribute_values(":running", s(Status::Running.as_str()))
            .expression_attribute_values(":c", s("CANCELLED"))
            .expression_attribute_values(":m", s("request cancelled"))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":ttl", finished_ttl(now_ms));
        let update = match holder {
            // The holder is remembered (sparse `by-cancel` index) until its
            // replica has told the processor.
            Some(holder) => update
                .update_expression(
                    "SET #status = :cancelled, tenant_status = :ts, error_code = :c, error_message = :m, updated = :now, expires_at = :ttl, cancel_owner = :o \
                     REMOVE lease_owner, lease_key, queue_key, tenant_queue_key, wait_shard, ready_at",
                )
                .condition_expression("(#status = :queued OR #status = :running) AND lease_owner = :o")
                .expression_attribute_values(":o", s(holder)),
            None => update
                .update_expression(
                    "SET #status = :cancelled, tenant_status = :ts, error_code = :c, error_message = :m, updated = :now, expires_at = :ttl \
                     REMOVE lease_owner, lease_key, queue_key, tenant_queue_key, wait_shard, ready_at",
                )
                .condition_expression(
                    "(#status = :queued OR #status = :running) AND attribute_not_exists(lease_owner)",
                ),
        };
        self.finish(tenant_id, request_id, update).await
    }

    async fn claim_action(
        &self,
        scope: &str,
        name: &str,
        spec: &Value,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError> {
        // `#` first: no tenant id (and so no request key) starts with it.
        let key = format!("#action#{scope}#{name}");
        let text = spec.to_string();
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .item("pk", s(&key))
            .item("spec", s(&text))
            .item("until_ms", n(until_ms))
            .item("expires_at", n(until_ms / 1000 + 3600))
            .condition_expression("attribute_not_exists(pk) OR spec = :spec OR until_ms < :now")
            .expression_attribute_values(":spec", s(&text))
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        match put {
            Ok(_) => Ok(None),
            Err(err) if condition_failed(&err) => {
                match self.published_action(scope, name, now_ms).await? {
                    Some(existing) => Ok(Some(existing)),
                    // Expired meanwhile: the next claim takes it.
                    None => Ok(Some(Value::Null)),
                }
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn published_action(
        &self,
        scope: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError> {
        let got = self
            .client
            .get_item()
            .table_name(&*self.table)
            .key("pk", s(&format!("#action#{scope}#{name}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(got.item().and_then(|item| {
            let until: i64 = item.get("until_ms")?.as_n().ok()?.parse().ok()?;
            let spec = item.get("spec")?.as_s().ok()?;
            (until > now_ms)
                .then(|| serde_json::from_str(spec).ok())
                .flatten()
        }))
    }

    async fn expire_waiting(
        &self,
        ready_before_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Request>, QueueError> {
        let mut expired = Vec::new();
        for shard in 0..WAIT_SHARDS {
            if expired.len() >= limit {
                break;
            }
            let out = self
                .client
                .query()
                .table_name(&*self.table)
                .index_name(WAIT_INDEX)
                .key_condition_expression("wait_shard = :w AND ready_at <= :before")
                .expression_attribute_values(":w", s(&format!("w{shard}")))
                .expression_attribute_values(":before", n(ready_before_ms))
                .limit(i32::try_from(limit - expired.len()).unwrap_or(i32::MAX))
                .send()
                .await
                .map_err(unavailable)?;
            for candidate in out.items().iter().filter_map(from_item) {
                let update = self
                    .update(&candidate.tenant_id, &candidate.request_id)
                    .update_expression(format!(
                        "SET #status = :expired, tenant_status = :ts, error_code = :c, error_message = :m, updated = :now, expires_at = :ttl REMOVE {QUEUED_KEYS}"
                    ))
                    .condition_expression("#status = :queued AND ready_at <= :before")
                    .expression_attribute_values(":expired", s(Status::Expired.as_str()))
                    .expression_attribute_values(":queued", s(Status::Queued.as_str()))
                    .expression_attribute_values(
                        ":ts",
                        s(&tenant_status(&candidate.tenant_id, Status::Expired)),
                    )
                    .expression_attribute_values(":c", s("TIMEOUT"))
                    .expression_attribute_values(
                        ":m",
                        s("the request waited too long for a processor"),
                    )
                    .expression_attribute_values(":now", n(now_ms))
                    .expression_attribute_values(":before", n(ready_before_ms))
                    .expression_attribute_values(":ttl", finished_ttl(now_ms));
                match self
                    .finish(&candidate.tenant_id, &candidate.request_id, update)
                    .await
                {
                    Ok(request) => expired.push(request),
                    // Leased or cancelled meanwhile.
                    Err(QueueError::Conflict { .. } | QueueError::NotFound) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(expired)
    }

    async fn cancels_for(&self, owner: &str) -> Result<Vec<(String, String)>, QueueError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&*self.table)
                .index_name(CANCEL_INDEX)
                .key_condition_expression("cancel_owner = :o")
                .expression_attribute_values(":o", s(owner))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            // `pk` is `tenant#request_id` (tenant ids never hold `#`); the
            // index projects keys only.
            found.extend(page.items().iter().filter_map(|item| {
                let (tenant, id) = item.get("pk")?.as_s().ok()?.split_once('#')?;
                Some((tenant.to_owned(), id.to_owned()))
            }));
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(found),
            }
        }
    }

    async fn cancel_told(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
    ) -> Result<(), QueueError> {
        let told = self
            .client
            .update_item()
            .table_name(&*self.table)
            .key("pk", s(&pk(tenant_id, request_id)))
            .update_expression("REMOVE cancel_owner")
            .condition_expression("cancel_owner = :o")
            .expression_attribute_values(":o", s(owner))
            .send()
            .await;
        match told {
            Ok(_) => Ok(()),
            Err(err) if condition_failed(&err) => Ok(()),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn subscribe(
        &self,
        tenant_id: &str,
        request_id: &str,
        connection_id: &str,
    ) -> Result<Request, QueueError> {
        let current = self
            .get(tenant_id, request_id)
            .await?
            .ok_or(QueueError::NotFound)?;
        if current.subscribers.iter().any(|c| c == connection_id) {
            return Ok(current);
        }
        let update = self
            .client
            .update_item()
            .table_name(&*self.table)
            .key("pk", s(&pk(tenant_id, request_id)))
            .return_values(ReturnValue::AllNew)
            .update_expression("SET subscribers = list_append(subscribers, :c)")
            .condition_expression("attribute_exists(pk) AND NOT contains(subscribers, :cid)")
            .expression_attribute_values(":c", AttributeValue::L(vec![s(connection_id)]))
            .expression_attribute_values(":cid", s(connection_id));
        match self.transition(tenant_id, request_id, update).await {
            Ok(r) => Ok(r),
            // Subscribed meanwhile: read it back.
            Err(QueueError::Conflict { .. }) => self
                .get(tenant_id, request_id)
                .await?
                .ok_or(QueueError::NotFound),
            Err(e) => Err(e),
        }
    }

    async fn expired_leases(&self, now_ms: i64, limit: usize) -> Result<Vec<Request>, QueueError> {
        let out = self
            .client
            .query()
            .table_name(&*self.table)
            .index_name(LEASE_INDEX)
            .key_condition_expression("lease_key = :lk AND lease_expires < :now")
            .expression_attribute_values(":lk", s("running"))
            .expression_attribute_values(":now", n(now_ms))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .items()
            .iter()
            .filter_map(from_item)
            .filter(|r| r.status == Status::Running)
            .collect())
    }

    /// Every queued request, whatever its action (read from the expiry
    /// index, which holds them all).
    async fn queued_stats(&self, _actions: &[String]) -> Result<(u64, Option<i64>), QueueError> {
        let mut depth = 0u64;
        let mut oldest: Option<i64> = None;
        for shard in 0..WAIT_SHARDS {
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .query()
                    .table_name(&*self.table)
                    .index_name(WAIT_INDEX)
                    .key_condition_expression("wait_shard = :w")
                    .expression_attribute_values(":w", s(&format!("w{shard}")))
                    .projection_expression("created")
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(unavailable)?;
                for item in out.items() {
                    depth += 1;
                    if let Some(created) = item
                        .get("created")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok())
                    {
                        oldest = Some(oldest.map_or(created, |o: i64| o.min(created)));
                    }
                }
                match out.last_evaluated_key() {
                    Some(key) => start = Some(key.clone()),
                    None => break,
                }
            }
        }
        Ok((depth, oldest))
    }
}
