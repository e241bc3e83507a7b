//! The production registry on DynamoDB.
//!
//! Table layout (one table, `STREAMER_CONNECTIONS_TABLE`):
//!
//! | item | key `connection_id` | attributes |
//! | --- | --- | --- |
//! | a connection | the API Gateway id | `tenant_id`, `user_key` (`tenant#user`), `user_id`, `endpoint`, `permissions`, `source_ip`, `user_agent`, `connected_at`, `last_seen` (ms), `expires_at` (s, the TTL attribute), `groups`, `no_chunks` (only when the client refused chunks) |
//! | a tenant's counter | `tenant#<tenant>` (ids never contain `#`) | `active`: rows of the tenant |
//! | a group membership | `member#<connection>#<group>` | the member's row under `member_id` / `m_tenant`, `group_key` (`tenant#group`), `group` |
//!
//! GSIs `by-tenant` (`tenant_id`, `connection_id`), `by-user` (`user_key`,
//! `connection_id`) and `by-group` (`group_key`, `member_id`) project every
//! attribute, so a listing is one paginated Query with no read per row.
//!
//! Registration writes the row first (`attribute_not_exists`), then takes a
//! slot in the tenant's counter with a conditional `ADD` (the quota holds
//! with any number of replicas), giving the row back when the quota is
//! full; removal is a conditional delete whose winner alone gives the slot
//! back. No transactions: a busy tenant's counter is a single atomic item
//! update, never a transaction conflict. A call whose answer was lost may
//! still have been applied, so the counter can drift from the rows after an
//! outage; [`Registry::repair`] (run by every reconcile pass) recounts it.
//! Writing the row before the slot is what makes that recount exact while
//! clients keep connecting: see `repair.rs`.

mod items;
mod repair;

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    types::{AttributeValue, ReturnValue, Select},
};

use self::items::{
    connection_of, counter_key, counter_tenant, member_item, member_key, member_of, row_of,
    scoped_key,
};
use super::{Connection, Page, Registry, RegistryError, Repair, Scope, Ttl};
use crate::{
    clock::Clock,
    store::dynamo::{
        Item, TableSpec, batch_delete, condition_failed, describe, n, number, s, string, text,
    },
};

/// Name of the tenant GSI.
pub const TENANT_INDEX: &str = "by-tenant";
/// Name of the user GSI.
pub const USER_INDEX: &str = "by-user";
/// Name of the group-membership GSI.
pub const GROUP_INDEX: &str = "by-group";

/// The table as `tables create` makes it (production tables come from
/// `deploy/`).
pub fn table_spec() -> TableSpec {
    TableSpec {
        hash: string("connection_id"),
        range: None,
        indexes: vec![
            (TENANT_INDEX, string("tenant_id"), string("connection_id")),
            (USER_INDEX, string("user_key"), string("connection_id")),
            (GROUP_INDEX, string("group_key"), string("member_id")),
        ],
        ttl: Some("expires_at"),
    }
}

/// Creates the registry table (idempotent).
pub async fn create_table(client: &Client, table: &str) -> Result<(), RegistryError> {
    table_spec()
        .create(client, table)
        .await
        .map_err(RegistryError::Unavailable)
}

fn unavailable<E, R>(err: aws_sdk_dynamodb::error::SdkError<E, R>) -> RegistryError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    RegistryError::Unavailable(describe(&err))
}

/// Whether a conditional write was applied (`false`: its condition failed).
fn applied<T, E, R>(
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
) -> Result<bool, RegistryError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(err) if condition_failed(&err) => Ok(false),
        Err(err) => Err(unavailable(err)),
    }
}

/// The DynamoDB registry.
#[derive(Clone)]
pub struct DynamoRegistry {
    client: Client,
    table: Arc<str>,
    ttl: Ttl,
    clock: Clock,
}

impl std::fmt::Debug for DynamoRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoRegistry")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl DynamoRegistry {
    /// A registry on `table`, reading time from `clock`.
    pub fn new(client: Client, table: &str, ttl: Ttl, clock: Clock) -> Self {
        Self {
            client,
            table: Arc::from(table),
            ttl,
            clock,
        }
    }

    /// Scans the table page by page: `configure` sets the scan's filter,
    /// `each` takes every page's items and says whether to go on.
    async fn scan_all(
        &self,
        configure: impl Fn(
            aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
        ) -> aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder,
        mut each: impl FnMut(&[Item]) -> bool,
    ) -> Result<(), RegistryError> {
        let mut start: Option<Item> = None;
        loop {
            let out = configure(self.client.scan().table_name(&*self.table))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            if !each(out.items()) {
                return Ok(());
            }
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(()),
            }
        }
    }

    /// An update of the item keyed `key`.
    fn update(
        &self,
        key: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&*self.table)
            .key("connection_id", s(key))
    }

    /// A delete of the connection row `connection_id` that never touches
    /// another kind of item.
    fn delete_row(
        &self,
        connection_id: &str,
    ) -> aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemFluentBuilder {
        self.client
            .delete_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .condition_expression("attribute_exists(tenant_id)")
    }

    /// Moves a tenant's live-connection counter by `delta`; with `max`, an
    /// increment only succeeds while the counter is below it.
    async fn bump(
        &self,
        tenant_id: &str,
        delta: i64,
        max: Option<u64>,
    ) -> Result<bool, RegistryError> {
        let mut update = self
            .update(&counter_key(tenant_id))
            .update_expression("ADD active :delta")
            .expression_attribute_values(":delta", n(delta));
        if let Some(max) = max {
            update = update
                .condition_expression("attribute_not_exists(active) OR active < :max")
                .expression_attribute_values(":max", n(i64::try_from(max).unwrap_or(i64::MAX)));
        }
        applied(update.send().await)
    }

    /// Gives a reserved quota slot back; a failure leaves the counter one
    /// high until the tenant's next recount, so it is logged.
    async fn release(&self, tenant_id: &str) {
        if let Err(err) = self.bump(tenant_id, -1, None).await {
            tracing::warn!(tenant_id, error = %err, "cannot decrement the tenant connection counter");
        }
    }

    /// Deletes the membership items of a removed connection (batched); what
    /// cannot be deleted now expires with its TTL and never lists (expired).
    async fn delete_members(&self, connection: &Connection) {
        let keys = connection.groups.iter().map(|group| {
            Item::from([(
                "connection_id".to_owned(),
                s(&member_key(&connection.connection_id, group)),
            )])
        });
        if let Err(error) = batch_delete(&self.client, &self.table, keys, 5).await {
            tracing::warn!(%error, "cannot delete group memberships");
        }
    }

    /// Deletes a row this replica wrote but could not register (no slot
    /// was taken for it, so none is given back). Best effort: a row left
    /// behind is a ghost that reconcile removes.
    async fn forget_row(&self, connection_id: &str) {
        let deleted = self.delete_row(connection_id).send().await;
        if let Err(err) = deleted
            && !condition_failed(&err)
        {
            tracing::warn!(connection_id, error = %describe(&err), "cannot take back an unregistered row");
        }
    }

    async fn get_raw(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        let out = self
            .client
            .get_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item().and_then(connection_of))
    }

    fn scope_query(
        &self,
        scope: &Scope,
        after: Option<&str>,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let (index, attribute, sort, value) = match scope {
            Scope::Tenant(tenant) => (TENANT_INDEX, "tenant_id", "connection_id", tenant.clone()),
            Scope::User { tenant_id, user_id } => (
                USER_INDEX,
                "user_key",
                "connection_id",
                scoped_key(tenant_id, user_id),
            ),
            Scope::Group { tenant_id, group } => (
                GROUP_INDEX,
                "group_key",
                "member_id",
                scoped_key(tenant_id, group),
            ),
        };
        let mut query = self
            .client
            .query()
            .table_name(&*self.table)
            .index_name(index)
            .expression_attribute_names("#pk", attribute)
            .expression_attribute_values(":pk", s(&value))
            .expression_attribute_values(":now", n(self.clock.now_ms().div_euclid(1000)))
            .filter_expression("expires_at > :now");
        match after {
            Some(after) => {
                query = query
                    .key_condition_expression("#pk = :pk AND #sk > :after")
                    .expression_attribute_names("#sk", sort)
                    .expression_attribute_values(":after", s(after));
            }
            None => query = query.key_condition_expression("#pk = :pk"),
        }
        query
    }
}

#[async_trait]
impl Registry for DynamoRegistry {
    async fn insert(
        &self,
        connection: Connection,
        max_per_tenant: u64,
    ) -> Result<(), RegistryError> {
        // The row first, then a slot in the tenant's counter: a repair pass
        // reads the counter before it scans the rows, so any row it misses
        // was written after that read and its slot moves the counter under
        // the pass's conditional write (see repair.rs).
        let tenant = &*connection.tenant_id;
        let expires_at = self
            .ttl
            .expires_at_ms(connection.connected_at_ms, connection.last_seen_ms);
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(row_of(&connection, expires_at)))
            .condition_expression("attribute_not_exists(connection_id)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(err) if condition_failed(&err) => return Err(RegistryError::AlreadyExists),
            Err(err) => {
                // The put may have been applied although its answer was lost:
                // take the row back (it holds no slot).
                self.forget_row(&connection.connection_id).await;
                return Err(unavailable(err));
            }
        }
        let max = (max_per_tenant > 0).then_some(max_per_tenant);
        match self.bump(tenant, 1, max).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.forget_row(&connection.connection_id).await;
                Err(RegistryError::QuotaExceeded {
                    limit: max_per_tenant,
                })
            }
            Err(err) => {
                // The slot may have been taken anyway; the next repair pass
                // gives it back if so.
                self.forget_row(&connection.connection_id).await;
                Err(err)
            }
        }
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        Ok(self
            .get_raw(connection_id)
            .await?
            .filter(|c| !c.expired(self.clock.now_ms())))
    }

    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        // The conditional delete decides which of several removers wins; only
        // the winner gives the tenant's slot back.
        let deleted = self
            .delete_row(connection_id)
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match deleted {
            Ok(out) => {
                let Some(connection) = out.attributes().and_then(connection_of) else {
                    return Ok(None);
                };
                self.release(&connection.tenant_id).await;
                self.delete_members(&connection).await;
                Ok(Some(connection))
            }
            Err(err) if condition_failed(&err) => Ok(None),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn list(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        let limit = limit.max(1);
        let mut items = Vec::with_capacity(limit.min(1024));
        let mut start: Option<Item> = None;
        // The filter on expiry applies after Limit, and a page stops at 1 MB:
        // keep querying until the page is full or the index is exhausted.
        loop {
            let want = i32::try_from(limit - items.len()).unwrap_or(i32::MAX);
            let out = self
                .scope_query(scope, after)
                .limit(want)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            let parse = if matches!(scope, Scope::Group { .. }) {
                member_of
            } else {
                connection_of
            };
            items.extend(out.items().iter().filter_map(parse));
            match out.last_evaluated_key() {
                Some(key) if items.len() < limit => start = Some(key.clone()),
                Some(_) => {
                    let next_after = items.last().map(|c| c.connection_id.to_string());
                    return Ok(Page { items, next_after });
                }
                None => {
                    return Ok(Page {
                        items,
                        next_after: None,
                    });
                }
            }
        }
    }

    async fn count(&self, scope: &Scope) -> Result<u64, RegistryError> {
        let mut total = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .scope_query(scope, None)
                .select(Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            total += u64::try_from(out.count()).unwrap_or(0);
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(total),
            }
        }
    }

    async fn tenants(&self, limit: usize) -> Result<Vec<(String, u64)>, RegistryError> {
        let mut tenants = Vec::new();
        self.scan_all(
            |scan| {
                scan.filter_expression("begins_with(connection_id, :counter) AND active > :zero")
                    .projection_expression("connection_id, active")
                    .expression_attribute_values(":counter", s("tenant#"))
                    .expression_attribute_values(":zero", n(0))
            },
            |items| {
                tenants.extend(items.iter().filter_map(|item| {
                    let tenant = text(item, "connection_id").and_then(counter_tenant)?;
                    let active = number(item, "active")?;
                    Some((tenant.to_owned(), u64::try_from(active).unwrap_or(0)))
                }));
                true
            },
        )
        .await?;
        tenants.sort_unstable();
        tenants.truncate(limit);
        Ok(tenants)
    }

    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError> {
        let Some(connection) = self.get_raw(connection_id).await? else {
            return Ok(false);
        };
        let last_seen = connection.last_seen_ms.max(now_ms);
        let expires_at = self
            .ttl
            .expires_at_ms(connection.connected_at_ms, last_seen);
        let result = self
            .update(connection_id)
            .update_expression("SET last_seen = :seen, expires_at = :exp")
            // Never recreate a removed row.
            .condition_expression("attribute_exists(connection_id)")
            .expression_attribute_values(":seen", n(last_seen))
            .expression_attribute_values(":exp", n(expires_at.div_euclid(1000)))
            .send()
            .await;
        applied(result)
    }

    async fn renew(
        &self,
        connection_id: &str,
        permissions: Arc<[Arc<str>]>,
        token_expires_ms: i64,
    ) -> Result<bool, RegistryError> {
        let result = self
            .update(connection_id)
            .update_expression("SET token_exp = :texp, #perms = :p")
            .expression_attribute_names("#perms", "permissions")
            // Never recreate a removed row.
            .condition_expression("attribute_exists(tenant_id)")
            .expression_attribute_values(":texp", n(token_expires_ms))
            .expression_attribute_values(
                ":p",
                AttributeValue::L(permissions.iter().map(|p| s(p)).collect()),
            )
            .send()
            .await;
        applied(result)
    }

    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError> {
        let updated = self
            .update(connection_id)
            .update_expression("ADD groups :g")
            // Never creates a row, and never a group beyond the limit.
            .condition_expression(
                "attribute_exists(tenant_id) AND (attribute_not_exists(groups) OR contains(groups, :name) OR size(groups) < :max)",
            )
            .expression_attribute_values(":g", AttributeValue::Ss(vec![group.to_owned()]))
            .expression_attribute_values(":name", s(group))
            .expression_attribute_values(":max", n(i64::try_from(max_groups).unwrap_or(i64::MAX)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        let row = match updated {
            Ok(out) => out
                .attributes()
                .and_then(connection_of)
                .ok_or(RegistryError::NotFound)?,
            Err(err) if condition_failed(&err) => {
                return match self.get_raw(connection_id).await? {
                    None => Err(RegistryError::NotFound),
                    Some(_) => Err(RegistryError::GroupLimit { limit: max_groups }),
                };
            }
            Err(err) => return Err(unavailable(err)),
        };
        if row.expired(self.clock.now_ms()) {
            return Err(RegistryError::NotFound);
        }
        let was_member = row.groups.iter().any(|g| &**g == group);
        let max_age = i64::try_from(self.ttl.max_age.as_millis()).unwrap_or(i64::MAX);
        let member = member_item(&row, group, row.connected_at_ms.saturating_add(max_age));
        self.client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(member))
            .send()
            .await
            .map_err(unavailable)?;
        // A remove that raced us read the groups before our membership item
        // existed: take it back so no orphan stays listed.
        if self.get_raw(connection_id).await?.is_none() {
            let _ = self
                .client
                .delete_item()
                .table_name(&*self.table)
                .key("connection_id", s(&member_key(connection_id, group)))
                .send()
                .await;
            return Err(RegistryError::NotFound);
        }
        Ok(!was_member)
    }

    async fn leave(&self, connection_id: &str, group: &str) -> Result<bool, RegistryError> {
        let updated = self
            .update(connection_id)
            .update_expression("DELETE groups :g")
            .condition_expression("attribute_exists(tenant_id) AND contains(groups, :name)")
            .expression_attribute_values(":g", AttributeValue::Ss(vec![group.to_owned()]))
            .expression_attribute_values(":name", s(group))
            .send()
            .await;
        if !applied(updated)? {
            return Ok(false);
        }
        self.client
            .delete_item()
            .table_name(&*self.table)
            .key("connection_id", s(&member_key(connection_id, group)))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(true)
    }

    async fn repair(&self) -> Result<Repair, RegistryError> {
        repair::run(self).await
    }

    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError> {
        let mut found = Vec::new();
        self.scan_all(
            |scan| {
                scan.filter_expression("attribute_exists(tenant_id) AND last_seen < :before")
                    .expression_attribute_values(":before", n(last_seen_before_ms))
            },
            |items| {
                found.extend(items.iter().filter_map(connection_of));
                found.len() < limit
            },
        )
        .await?;
        found.truncate(limit);
        Ok(found)
    }
}
