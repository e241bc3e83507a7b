//! The production registry on DynamoDB.
//!
//! Table layout (one table, `STREAMER_CONNECTIONS_TABLE`):
//!
//! | item | key `connection_id` | attributes |
//! | --- | --- | --- |
//! | a connection | the API Gateway id | `tenant_id`, `user_key` (`tenant#user`), `user_id`, `endpoint`, `permissions`, `source_ip`, `user_agent`, `connected_at`, `last_seen` (ms), `expires_at` (s, the TTL attribute) |
//! | a tenant's counter | `tenant#<tenant>` (ids never contain `#`) | `active`: live rows of the tenant |
//!
//! GSIs `by-tenant` (`tenant_id`, `connection_id`) and `by-user` (`user_key`,
//! `connection_id`) project every attribute, so a listing is one paginated
//! Query with no read per row. Counter items carry neither GSI key, so they
//! never show up there.
//!
//! Registration reserves a slot in the tenant's counter with a conditional
//! `ADD` (the quota holds with any number of replicas), then writes the row
//! with `attribute_not_exists`; removal is a conditional delete whose winner
//! alone gives the slot back. No transactions: a busy tenant's counter is a
//! single atomic item update, never a transaction conflict.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
        KeyType, Projection, ProjectionType, ScalarAttributeType, Select, TimeToLiveSpecification,
    },
};

use super::{Connection, Page, Registry, RegistryError, Scope, Ttl, now_ms};

/// Name of the tenant GSI.
pub const TENANT_INDEX: &str = "by-tenant";
/// Name of the user GSI.
pub const USER_INDEX: &str = "by-user";
/// Name of the group-membership GSI.
pub const GROUP_INDEX: &str = "by-group";

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB registry.
#[derive(Clone)]
pub struct DynamoRegistry {
    client: Client,
    table: Arc<str>,
    ttl: Ttl,
}

impl std::fmt::Debug for DynamoRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoRegistry")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Whether a DynamoDB call failed only because its condition did not hold
/// (an answer, not an outage).
pub(crate) fn condition_failed(err: &impl ProvideErrorMetadata) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

fn counter_key(tenant_id: &str) -> String {
    format!("tenant#{tenant_id}")
}

fn user_key(tenant_id: &str, user_id: &str) -> String {
    format!("{tenant_id}#{user_id}")
}

fn unavailable<E: ProvideErrorMetadata + std::fmt::Debug, R>(err: SdkError<E, R>) -> RegistryError
where
    R: std::fmt::Debug,
{
    let detail = match &err {
        SdkError::ServiceError(service) => format!(
            "{}: {}",
            service.err().code().unwrap_or("service error"),
            service.err().message().unwrap_or_default()
        ),
        SdkError::TimeoutError(_) => "timeout".to_owned(),
        SdkError::DispatchFailure(_) => "cannot reach dynamodb".to_owned(),
        other => format!("{other:?}").chars().take(200).collect(),
    };
    RegistryError::Unavailable(detail)
}

fn item_of(c: &Connection, expires_at_ms: i64) -> Item {
    HashMap::from([
        ("connection_id".to_owned(), s(&c.connection_id)),
        ("tenant_id".to_owned(), s(&c.tenant_id)),
        ("user_id".to_owned(), s(&c.user_id)),
        (
            "user_key".to_owned(),
            s(&user_key(&c.tenant_id, &c.user_id)),
        ),
        ("endpoint".to_owned(), s(&c.endpoint)),
        (
            "permissions".to_owned(),
            AttributeValue::L(c.permissions.iter().map(|p| s(p)).collect()),
        ),
        ("source_ip".to_owned(), s(&c.source_ip)),
        ("user_agent".to_owned(), s(&c.user_agent)),
        ("connected_at".to_owned(), n(c.connected_at_ms)),
        ("last_seen".to_owned(), n(c.last_seen_ms)),
        ("expires_at".to_owned(), n(expires_at_ms.div_euclid(1000))),
    ])
}

fn with_groups(mut item: Item, c: &Connection) -> Item {
    if !c.groups.is_empty() {
        item.insert(
            "groups".to_owned(),
            AttributeValue::Ss(c.groups.iter().map(|g| g.to_string()).collect()),
        );
    }
    item
}

fn connection_of(item: &Item) -> Option<Connection> {
    let text = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .map(|s| Arc::<str>::from(s.as_str()))
    };
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<i64>().ok())
    };
    let permissions = match item.get("permissions") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|v| v.as_s().ok())
            .map(|p| Arc::from(p.as_str()))
            .collect(),
        _ => Vec::new(),
    };
    Some(Connection {
        connection_id: text("connection_id")?,
        tenant_id: text("tenant_id")?,
        user_id: text("user_id")?,
        endpoint: text("endpoint")?,
        permissions: permissions.into(),
        source_ip: text("source_ip").unwrap_or_else(|| Arc::from("")),
        user_agent: text("user_agent").unwrap_or_else(|| Arc::from("")),
        connected_at_ms: number("connected_at")?,
        last_seen_ms: number("last_seen")?,
        expires_at_ms: number("expires_at")?.saturating_mul(1000),
        groups: match item.get("groups") {
            Some(AttributeValue::Ss(groups)) => {
                groups.iter().map(|g| Arc::from(g.as_str())).collect()
            }
            _ => Vec::new().into(),
        },
    })
}

fn member_key(connection_id: &str, group: &str) -> String {
    format!("member#{connection_id}#{group}")
}

/// A group membership item: the member's row, denormalised so a group's
/// members list (and broadcast) with one Query and no read per member. Its
/// tenant and user live under other names, so it never shows up in the
/// tenant or user indexes.
fn member_item(c: &Connection, group: &str, expires_at_ms: i64) -> Item {
    let mut item = item_of(c, expires_at_ms);
    item.remove("tenant_id");
    item.remove("user_key");
    item.remove("groups");
    item.insert(
        "connection_id".to_owned(),
        s(&member_key(&c.connection_id, group)),
    );
    item.insert("member_id".to_owned(), s(&c.connection_id));
    item.insert("group_key".to_owned(), s(&user_key(&c.tenant_id, group)));
    item.insert("m_tenant".to_owned(), s(&c.tenant_id));
    item
}

fn member_of(item: &Item) -> Option<Connection> {
    let mut row = item.clone();
    row.insert("connection_id".to_owned(), row.get("member_id")?.clone());
    row.insert("tenant_id".to_owned(), row.get("m_tenant")?.clone());
    connection_of(&row)
}

/// The table's key schema, indexes, on-demand billing and TTL, as `tables
/// create` makes them (production tables come from `deploy/`).
pub async fn create_table(client: &Client, table: &str) -> Result<(), RegistryError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))
    };
    let index =
        |name: &str, partition: &str, sort: &str| -> Result<GlobalSecondaryIndex, RegistryError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(partition, KeyType::Hash)?)
                .key_schema(key(sort, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(|e| RegistryError::Unavailable(e.to_string()))
        };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("connection_id")?)
        .attribute_definitions(attr("tenant_id")?)
        .attribute_definitions(attr("user_key")?)
        .attribute_definitions(attr("group_key")?)
        .attribute_definitions(attr("member_id")?)
        .key_schema(key("connection_id", KeyType::Hash)?)
        .global_secondary_indexes(index(TENANT_INDEX, "tenant_id", "connection_id")?)
        .global_secondary_indexes(index(USER_INDEX, "user_key", "connection_id")?)
        .global_secondary_indexes(index(GROUP_INDEX, "group_key", "member_id")?)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(err) if err.code() == Some("ResourceInUseException") => {}
        Err(err) => return Err(unavailable(err)),
    }
    wait_active(client, table).await?;
    enable_ttl(client, table, "expires_at").await
}

/// Waits (bounded) until a table is ACTIVE.
pub async fn wait_active(client: &Client, table: &str) -> Result<(), RegistryError> {
    for _ in 0..120 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(unavailable)?;
        let status = described.table().and_then(|t| t.table_status());
        if status == Some(&aws_sdk_dynamodb::types::TableStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(RegistryError::Unavailable(format!(
        "table {table} did not become active"
    )))
}

/// Turns TTL on for `attribute` (idempotent).
pub async fn enable_ttl(
    client: &Client,
    table: &str,
    attribute: &str,
) -> Result<(), RegistryError> {
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already enabled.
        Err(err) if err.code() == Some("ValidationException") => Ok(()),
        Err(err) => Err(unavailable(err)),
    }
}

impl DynamoRegistry {
    /// A registry on `table`.
    pub fn new(client: Client, table: &str, ttl: Ttl) -> Self {
        Self {
            client,
            table: Arc::from(table),
            ttl,
        }
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
            .client
            .update_item()
            .table_name(&*self.table)
            .key("connection_id", s(&counter_key(tenant_id)))
            .update_expression("ADD active :delta")
            .expression_attribute_values(":delta", n(delta));
        if let Some(max) = max {
            update = update
                .condition_expression("attribute_not_exists(active) OR active < :max")
                .expression_attribute_values(":max", n(i64::try_from(max).unwrap_or(i64::MAX)));
        }
        match update.send().await {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
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
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let requests: Vec<WriteRequest> = connection
            .groups
            .iter()
            .filter_map(|group| {
                let delete = DeleteRequest::builder()
                    .key(
                        "connection_id",
                        s(&member_key(&connection.connection_id, group)),
                    )
                    .build()
                    .ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            for _ in 0..5 {
                if pending.is_empty() {
                    break;
                }
                match self
                    .client
                    .batch_write_item()
                    .request_items(self.table.to_string(), pending.clone())
                    .send()
                    .await
                {
                    Ok(out) => {
                        pending = out
                            .unprocessed_items()
                            .and_then(|items| items.get(&*self.table))
                            .cloned()
                            .unwrap_or_default();
                    }
                    Err(err) => {
                        tracing::warn!(error = %unavailable(err), "cannot delete group memberships");
                        break;
                    }
                }
            }
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
                user_key(tenant_id, user_id),
            ),
            Scope::Group { tenant_id, group } => (
                GROUP_INDEX,
                "group_key",
                "member_id",
                user_key(tenant_id, group),
            ),
        };
        let mut query = self
            .client
            .query()
            .table_name(&*self.table)
            .index_name(index)
            .expression_attribute_names("#pk", attribute)
            .expression_attribute_values(":pk", s(&value))
            .expression_attribute_values(":now", n(now_ms().div_euclid(1000)))
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
        // Reserve a slot in the tenant's counter first (an atomic conditional
        // ADD: no transaction, so a busy tenant's counter never conflicts),
        // then write the row; give the slot back if the row cannot be written.
        let tenant = &*connection.tenant_id;
        let max = (max_per_tenant > 0).then_some(max_per_tenant);
        if !self.bump(tenant, 1, max).await? {
            return Err(RegistryError::QuotaExceeded {
                limit: max_per_tenant,
            });
        }
        let expires_at = self
            .ttl
            .expires_at_ms(connection.connected_at_ms, connection.last_seen_ms);
        let put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(with_groups(
                item_of(&connection, expires_at),
                &connection,
            )))
            .condition_expression("attribute_not_exists(connection_id)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(err) => {
                self.release(tenant).await;
                if condition_failed(&err) {
                    Err(RegistryError::AlreadyExists)
                } else {
                    Err(unavailable(err))
                }
            }
        }
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        Ok(self
            .get_raw(connection_id)
            .await?
            .filter(|c| !c.expired(now_ms())))
    }

    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        // The conditional delete decides which of several removers wins; only
        // the winner gives the tenant's slot back.
        let deleted = self
            .client
            .delete_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .condition_expression("attribute_exists(tenant_id)")
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
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

    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError> {
        let Some(connection) = self.get_raw(connection_id).await? else {
            return Ok(false);
        };
        let last_seen = connection.last_seen_ms.max(now_ms);
        let expires_at = self
            .ttl
            .expires_at_ms(connection.connected_at_ms, last_seen);
        let result = self
            .client
            .update_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .update_expression("SET last_seen = :seen, expires_at = :exp")
            // Never recreate a removed row.
            .condition_expression("attribute_exists(connection_id)")
            .expression_attribute_values(":seen", n(last_seen))
            .expression_attribute_values(":exp", n(expires_at.div_euclid(1000)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if condition_failed(&err) => Ok(false),
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError> {
        let updated = self
            .client
            .update_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .update_expression("ADD groups :g")
            // Never creates a row, and never a group beyond the limit.
            .condition_expression(
                "attribute_exists(tenant_id) AND (attribute_not_exists(groups) OR contains(groups, :name) OR size(groups) < :max)",
            )
            .expression_attribute_values(":g", AttributeValue::Ss(vec![group.to_owned()]))
            .expression_attribute_values(":name", s(group))
            .expression_attribute_values(":max", n(i64::try_from(max_groups).unwrap_or(i64::MAX)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
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
        if row.expired(now_ms()) {
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
            .client
            .update_item()
            .table_name(&*self.table)
            .key("connection_id", s(connection_id))
            .update_expression("DELETE groups :g")
            .condition_expression("attribute_exists(tenant_id) AND contains(groups, :name)")
            .expression_attribute_values(":g", AttributeValue::Ss(vec![group.to_owned()]))
            .expression_attribute_values(":name", s(group))
            .send()
            .await;
        match updated {
            Ok(_) => {}
            Err(err) if condition_failed(&err) => {
                return Ok(false);
            }
            Err(err) => return Err(unavailable(err)),
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

    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&*self.table)
                .filter_expression("attribute_exists(tenant_id) AND last_seen < :before")
                .expression_attribute_values(":before", n(last_seen_before_ms))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            found.extend(out.items().iter().filter_map(connection_of));
            if found.len() >= limit {
                found.truncate(limit);
                return Ok(found);
            }
            match out.last_evaluated_key() {
                Some(key) => start = Some(key.clone()),
                None => return Ok(found),
            }
        }
    }
}
