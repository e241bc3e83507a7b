//! The registry's item shapes in its one DynamoDB table, and their keys.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;

use super::super::Connection;
use crate::store::dynamo::{Item, n, number, s, text};

/// The key of a tenant's live-connection counter item (ids never contain `#`).
pub fn counter_key(tenant_id: &str) -> String {
    format!("tenant#{tenant_id}")
}

/// The tenant a counter key belongs to.
pub fn counter_tenant(key: &str) -> Option<&str> {
    key.strip_prefix("tenant#")
}

/// `tenant#user` (or `tenant#group`): the partition key of the user and
/// group indexes.
pub fn scoped_key(tenant_id: &str, name: &str) -> String {
    format!("{tenant_id}#{name}")
}

/// The key of a membership item.
pub fn member_key(connection_id: &str, group: &str) -> String {
    format!("member#{connection_id}#{group}")
}

/// A connection row (without its groups).
pub fn item_of(c: &Connection, expires_at_ms: i64) -> Item {
    Item::from([
        ("connection_id".to_owned(), s(&c.connection_id)),
        ("tenant_id".to_owned(), s(&c.tenant_id)),
        ("user_id".to_owned(), s(&c.user_id)),
        (
            "user_key".to_owned(),
            s(&scoped_key(&c.tenant_id, &c.user_id)),
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
        ("token_exp".to_owned(), n(c.token_expires_ms)),
    ])
    .into_iter()
    .chain((!c.chunks).then(|| ("no_chunks".to_owned(), AttributeValue::Bool(true))))
    .collect()
}

/// A connection row with its groups.
pub fn row_of(c: &Connection, expires_at_ms: i64) -> Item {
    let mut item = item_of(c, expires_at_ms);
    if !c.groups.is_empty() {
        item.insert(
            "groups".to_owned(),
            AttributeValue::Ss(c.groups.iter().map(|g| g.to_string()).collect()),
        );
    }
    item
}

/// The connection a row holds, if it is a connection row.
pub fn connection_of(item: &Item) -> Option<Connection> {
    let shared = |name: &str| text(item, name).map(Arc::<str>::from);
    let permissions = match item.get("permissions") {
        Some(AttributeValue::L(list)) => list
            .iter()
            .filter_map(|v| v.as_s().ok())
            .map(|p| Arc::from(p.as_str()))
            .collect(),
        _ => Vec::new(),
    };
    Some(Connection {
        connection_id: shared("connection_id")?,
        tenant_id: shared("tenant_id")?,
        user_id: shared("user_id")?,
        endpoint: shared("endpoint")?,
        permissions: permissions.into(),
        source_ip: shared("source_ip").unwrap_or_else(|| Arc::from("")),
        user_agent: shared("user_agent").unwrap_or_else(|| Arc::from("")),
        connected_at_ms: number(item, "connected_at")?,
        last_seen_ms: number(item, "last_seen")?,
        expires_at_ms: number(item, "expires_at")?.saturating_mul(1000),
        groups: groups_of(item).into_iter().map(Arc::from).collect(),
        chunks: !matches!(item.get("no_chunks"), Some(AttributeValue::Bool(true))),
        token_expires_ms: number(item, "token_exp").unwrap_or(0),
    })
}

/// The groups a row records.
pub fn groups_of(item: &Item) -> Vec<String> {
    match item.get("groups") {
        Some(AttributeValue::Ss(groups)) => groups.clone(),
        _ => Vec::new(),
    }
}

/// A group membership item: the member's row, denormalised so a group's
/// members list (and broadcast) with one Query and no read per member. Its
/// tenant and user live under other names, so it never shows up in the
/// tenant or user indexes.
pub fn member_item(c: &Connection, group: &str, expires_at_ms: i64) -> Item {
    let mut item = item_of(c, expires_at_ms);
    item.remove("tenant_id");
    item.remove("user_key");
    item.insert(
        "connection_id".to_owned(),
        s(&member_key(&c.connection_id, group)),
    );
    item.insert("member_id".to_owned(), s(&c.connection_id));
    item.insert("group_key".to_owned(), s(&scoped_key(&c.tenant_id, group)));
    item.insert("group".to_owned(), s(group));
    item.insert("m_tenant".to_owned(), s(&c.tenant_id));
    item
}

/// The member's connection, as a membership item records it.
pub fn member_of(item: &Item) -> Option<Connection> {
    let mut row = item.clone();
    row.insert("connection_id".to_owned(), row.get("member_id")?.clone());
    row.insert("tenant_id".to_owned(), row.get("m_tenant")?.clone());
    row.remove("groups");
    connection_of(&row)
}

/// The group a membership item is for: its own attribute, or (items written
/// before it was recorded) the tail of its key.
pub fn member_group(item: &Item) -> Option<String> {
    if let Some(group) = text(item, "group") {
        return Some(group.to_owned());
    }
    let key = text(item, "connection_id")?;
    let member = text(item, "member_id")?;
    key.strip_prefix(&format!("member#{member}#"))
        .map(str::to_owned)
}
