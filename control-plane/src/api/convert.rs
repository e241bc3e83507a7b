//! What every adapter shares: validating the ids a caller sends (an empty,
//! blank, over-long or malformed id is `INVALID_ARGUMENT`, never a wider
//! audience), converting domain values to their protobuf shape, and paging.

use serde_json::Value;
use streamer_proto::{ids, v1};

use super::pagetoken::PageTokens;
use crate::{
    delivery::broadcast::DeliveryReport,
    error::Fault,
    registry::{Connection, Registry, Scope},
};

/// Default and largest page sizes of list RPCs.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// A required tenant id.
pub fn tenant(tenant_id: &str) -> Result<&str, Fault> {
    if ids::valid_tenant_id(tenant_id) {
        Ok(tenant_id)
    } else {
        Err(Fault::invalid(
            "tenant_id is required: [A-Za-z0-9._:-], 1 to 128 characters",
        ))
    }
}

/// A required user id.
pub fn user(user_id: &str) -> Result<&str, Fault> {
    if ids::valid_user_id(user_id) {
        Ok(user_id)
    } else {
        Err(Fault::invalid(
            "user_id is required: 1 to 128 characters, no control characters or surrounding spaces",
        ))
    }
}

/// A required group name.
pub fn group(name: &str) -> Result<&str, Fault> {
    if ids::valid_group(name) {
        Ok(name)
    } else {
        Err(Fault::invalid(
            "group is required: [A-Za-z0-9._:-], 1 to 128 characters",
        ))
    }
}

/// A required connection id.
pub fn connection(connection_id: &str) -> Result<&str, Fault> {
    if ids::valid_connection_id(connection_id) {
        Ok(connection_id)
    } else {
        Err(Fault::invalid(
            "connection_id is required: [A-Za-z0-9+/=_-], 1 to 128 characters",
        ))
    }
}

/// A required request id.
pub fn request(request_id: &str) -> Result<&str, Fault> {
    if ids::valid_request_id(request_id) {
        Ok(request_id)
    } else {
        Err(Fault::invalid(
            "request_id is required: 1 to 128 characters, no control characters or surrounding spaces",
        ))
    }
}

/// A tenant, or one user of it when `user_id` is given (empty = the tenant).
pub fn tenant_or_user(tenant_id: &str, user_id: &str) -> Result<Scope, Fault> {
    let tenant_id = tenant(tenant_id)?.to_owned();
    if user_id.is_empty() {
        return Ok(Scope::Tenant(tenant_id));
    }
    Ok(Scope::User {
        tenant_id,
        user_id: user(user_id)?.to_owned(),
    })
}

/// One user of a tenant (both required).
pub fn user_scope(tenant_id: &str, user_id: &str) -> Result<Scope, Fault> {
    Ok(Scope::User {
        tenant_id: tenant(tenant_id)?.to_owned(),
        user_id: user(user_id)?.to_owned(),
    })
}

/// A group of a tenant (both required).
pub fn group_scope(tenant_id: &str, name: &str) -> Result<Scope, Fault> {
    Ok(Scope::Group {
        tenant_id: tenant(tenant_id)?.to_owned(),
        group: group(name)?.to_owned(),
    })
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A connection as the server API shows it.
pub fn connection_proto(c: &Connection) -> v1::Connection {
    v1::Connection {
        connection_id: c.connection_id.to_string(),
        tenant_id: c.tenant_id.to_string(),
        user_id: c.user_id.to_string(),
        endpoint: c.endpoint.to_string(),
        connected_at: Some(timestamp(c.connected_at_ms)),
        last_seen: Some(timestamp(c.last_seen_ms)),
        permissions: c.permissions.iter().map(|p| p.to_string()).collect(),
        source_ip: c.source_ip.to_string(),
        user_agent: c.user_agent.to_string(),
    }
}

/// A delivery report as the server API shows it.
pub fn report_proto(r: DeliveryReport) -> v1::DeliveryReport {
    v1::DeliveryReport {
        targeted: r.targeted,
        delivered: r.delivered,
        gone: r.gone,
        throttled: r.throttled,
        too_large: r.too_large,
        failed: r.failed,
    }
}

/// A protobuf `Value` as JSON.
pub fn value_to_json(value: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(list)) => list.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
    }
}

/// A list RPC's page size: 0 means the default, larger values are capped.
pub fn page_size(requested: i32) -> Result<usize, Fault> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(Fault::invalid("page_size must not be negative")),
    }
}

fn scope_key(scope: &Scope) -> String {
    match scope {
        Scope::Tenant(t) => format!("tenant\0{t}"),
        Scope::User { tenant_id, user_id } => format!("user\0{tenant_id}\0{user_id}"),
        Scope::Group { tenant_id, group } => format!("group\0{tenant_id}\0{group}"),
    }
}

/// Who is in a scope (a tenant, a user, a group), for the listing and
/// counting RPCs of the connection and group services: the caller's tenant
/// is checked first.
#[derive(Clone)]
pub struct Listing {
    /// The registry.
    pub registry: std::sync::Arc<dyn Registry>,
    /// Page tokens.
    pub tokens: PageTokens,
}

impl std::fmt::Debug for Listing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listing").finish_non_exhaustive()
    }
}

impl Listing {
    /// One page of `scope` for `caller`.
    pub async fn page(
        &self,
        caller: &super::auth::Caller,
        scope: &Scope,
        page_token: &str,
        page_size: i32,
    ) -> Result<(Vec<v1::Connection>, String), Fault> {
        caller.check_tenant(scope.tenant_id())?;
        connections_page(
            self.registry.as_ref(),
            &self.tokens,
            scope,
            page_token,
            page_size,
        )
        .await
    }

    /// How many connections `scope` has, for `caller`.
    pub async fn count(&self, caller: &super::auth::Caller, scope: &Scope) -> Result<u64, Fault> {
        caller.check_tenant(scope.tenant_id())?;
        Ok(self.registry.count(scope).await?)
    }
}

/// One page of `scope`: resumes after `page_token` (which must have been
/// minted for this very scope) and mints the next one.
pub async fn connections_page(
    registry: &dyn Registry,
    tokens: &PageTokens,
    scope: &Scope,
    page_token: &str,
    requested_size: i32,
) -> Result<(Vec<v1::Connection>, String), Fault> {
    let size = page_size(requested_size)?;
    let key = scope_key(scope);
    let after = match page_token {
        "" => None,
        token => Some(tokens.decode(&key, token)?),
    };
    let page = registry.list(scope, after.as_deref(), size).await?;
    let next = page
        .next_after
        .map(|after| tokens.encode(&key, &after))
        .unwrap_or_default();
    Ok((page.items.iter().map(connection_proto).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_blank_ids_are_refused_not_widened() {
        assert!(user_scope("acme", "").is_err());
        assert!(user_scope("acme", " ").is_err());
        assert!(user_scope("acme", &"u".repeat(129)).is_err());
        assert!(user_scope("", "alice").is_err());
        assert!(group_scope("acme", "").is_err());
        assert!(connection("").is_err());
        assert!(connection("../x").is_err());
        assert!(request(" ").is_err());
        assert_eq!(
            tenant_or_user("acme", "").expect("tenant"),
            Scope::Tenant("acme".into())
        );
        assert!(tenant_or_user("acme", "\t").is_err());
    }
}
