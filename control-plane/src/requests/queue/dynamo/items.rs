//! How a request is laid out as a DynamoDB item, and read back.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::Value;

use crate::{
    requests::queue::{Failure, ProgressState, Request, Status},
    store::dynamo::{Item, n, s},
};

/// How long finished requests are kept.
pub(super) const FINISHED_TTL_SECS: i64 = 7 * 24 * 3600;

pub(super) fn tenant_status(tenant_id: &str, status: Status) -> String {
    format!("{tenant_id}#{}", status.as_str())
}

pub(super) fn pk(tenant_id: &str, request_id: &str) -> String {
    format!("{tenant_id}#{request_id}")
}

pub(super) fn to_item(r: &Request) -> Item {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(&pk(&r.tenant_id, &r.request_id))),
        ("tenant_id".to_owned(), s(&r.tenant_id)),
        ("request_id".to_owned(), s(&r.request_id)),
        ("action".to_owned(), s(&r.action)),
        ("payload".to_owned(), s(&r.payload.to_string())),
        ("user_id".to_owned(), s(&r.user_id)),
        ("status".to_owned(), s(r.status.as_str())),
        (
            "tenant_status".to_owned(),
            s(&tenant_status(&r.tenant_id, r.status)),
        ),
        ("attempts".to_owned(), n(i64::from(r.attempts))),
        ("max_attempts".to_owned(), n(i64::from(r.max_attempts))),
        (
            "lease_timeout_ms".to_owned(),
            n(i64::try_from(r.lease_timeout_ms).unwrap_or(i64::MAX)),
        ),
        ("lease_expires".to_owned(), n(r.lease_expires_ms)),
        ("not_before".to_owned(), n(r.not_before_ms)),
        (
            "subscribers".to_owned(),
            AttributeValue::L(r.subscribers.iter().map(|c| s(c)).collect()),
        ),
        ("created".to_owned(), n(r.created_ms)),
        ("updated".to_owned(), n(r.updated_ms)),
    ]);
    if r.scoped {
        item.insert("scoped".to_owned(), AttributeValue::Bool(true));
    }
    if r.status == Status::Queued {
        for (name, value) in queued_keys(r) {
            item.insert(name.to_owned(), value);
        }
        item.insert("ready_at".to_owned(), n(r.ready_at_ms()));
    }
    item
}

/// The index keys of a queued request: `tenant_queue_key` (its tenant and
/// action: bound processors lease from there), `wait_shard` (expiry reads
/// it), and `queue_key` (its action: unbound processors lease from there)
/// unless its action is its tenant's own.
pub(super) fn queued_keys(r: &Request) -> Vec<(&'static str, AttributeValue)> {
    let mut keys = vec![
        (
            "tenant_queue_key",
            s(&tenant_queue_key(&r.tenant_id, &r.action)),
        ),
        ("wait_shard", s(&wait_shard(&r.tenant_id, &r.request_id))),
    ];
    if !r.scoped {
        keys.push(("queue_key", s(&r.action)));
    }
    keys
}

pub(super) fn tenant_queue_key(tenant_id: &str, action: &str) -> String {
    format!("{tenant_id}#{action}")
}

/// How many partitions the expiry index spreads queued requests over (one
/// would be a hot key under a flood).
pub(super) const WAIT_SHARDS: u32 = 8;

pub(super) fn wait_shard(tenant_id: &str, request_id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (tenant_id, request_id).hash(&mut hasher);
    format!("w{}", hasher.finish() % u64::from(WAIT_SHARDS))
}

pub(super) fn from_item(item: &Item) -> Option<Request> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    let json = |k: &str| text(k).and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let progress = json("progress").and_then(|p| {
        Some(ProgressState {
            percentage: u32::try_from(p.get("percentage")?.as_u64()?).ok()?,
            message: p.get("message")?.as_str()?.to_owned(),
            details: p.get("details").filter(|d| !d.is_null()).cloned(),
        })
    });
    let error = match (text("error_code"), text("error_message")) {
        (Some(code), Some(message)) => Some(Failure { code, message }),
        _ => None,
    };
    Some(Request {
        tenant_id: text("tenant_id")?,
        request_id: text("request_id")?,
        action: text("action")?,
        payload: json("payload").unwrap_or(Value::Null),
        user_id: text("user_id").unwrap_or_default(),
        status: Status::parse(&text("status")?)?,
        attempts: u32::try_from(num("attempts")?).ok()?,
        max_attempts: u32::try_from(num("max_attempts")?).ok()?,
        lease_timeout_ms: u64::try_from(num("lease_timeout_ms")?).ok()?,
        lease_owner: text("lease_owner"),
        cancel_owner: text("cancel_owner"),
        lease_expires_ms: num("lease_expires").unwrap_or(0),
        not_before_ms: num("not_before").unwrap_or(0),
        progress,
        result: json("result"),
        error,
        subscribers: match item.get("subscribers") {
            Some(AttributeValue::L(list)) => {
                list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
            }
            _ => Vec::new(),
        },
        created_ms: num("created")?,
        updated_ms: num("updated")?,
        scoped: item.get("scoped").and_then(|v| v.as_bool().ok()).copied() == Some(true),
    })
}

pub(super) fn finished_ttl(now_ms: i64) -> AttributeValue {
    n(now_ms / 1000 + FINISHED_TTL_SECS)
}
