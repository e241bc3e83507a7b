//! The Go system's connection rows (pay-theory/streamer, `internal/store`),
//! for the migration: reading them into Streamer's registry ([`import`],
//! `streamer-control-plane migrate legacy-connections`) and mirroring
//! Streamer's connection writes into its table ([`LegacyMirror`], the
//! plan's dual write, `STREAMER_LEGACY_MIRROR_TABLE`). Both off by default.
//!
//! The Go system wrote two item shapes over its life:
//!
//! | shape | key | attributes |
//! | --- | --- | --- |
//! | [`Shape::Classic`] (`store.Connection`, `dynamodbav` tags) | `ConnectionID` | `UserID`, `TenantID`, `Endpoint` (`domain/stage`, no scheme), `ConnectedAt`, `LastPing` (RFC 3339), `Metadata` (`user_agent`, `ip_address`, `permissions` as a JSON array), `TTL` (s) |
//! | [`Shape::DynamOrm`] (`dynamorm.Connection`) | `pk` = `CONN#<id>`, `sk` = `METADATA` | `connection_id`, `user_id`, `tenant_id`, `endpoint`, `connected_at`, `last_ping`, `metadata`, `ttl` |
//!
//! Times are read as RFC 3339 strings (Go's encoding of `time.Time`) or as
//! epoch numbers (seconds or milliseconds), whichever the item holds.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use aws_sdk_dynamodb::{Client, types::AttributeValue};
use streamer_proto::ids;

use super::{Connection, Page, Registry, RegistryError, Repair, Scope, Ttl};
use crate::store::dynamo::{Item, TableSpec, describe, n, s, string, text};

/// How long the Go system kept a row (its `TTL`: 24 h after connect).
const LEGACY_TTL_SECS: i64 = 24 * 3600;

pub use crate::config::LegacyShape as Shape;

impl Shape {
    /// The attribute names of this shape: id, user, tenant, endpoint,
    /// connected, last ping, metadata, ttl.
    fn names(self) -> [&'static str; 8] {
        match self {
            Shape::Classic => [
                "ConnectionID",
                "UserID",
                "TenantID",
                "Endpoint",
                "ConnectedAt",
                "LastPing",
                "Metadata",
                "TTL",
            ],
            Shape::DynamOrm => [
                "connection_id",
                "user_id",
                "tenant_id",
                "endpoint",
                "connected_at",
                "last_ping",
                "metadata",
                "ttl",
            ],
        }
    }

    /// The key of connection `id`'s item.
    pub fn key(self, id: &str) -> Item {
        match self {
            Shape::Classic => HashMap::from([("ConnectionID".to_owned(), s(id))]),
            Shape::DynamOrm => HashMap::from([
                ("pk".to_owned(), s(&format!("CONN#{id}"))),
                ("sk".to_owned(), s("METADATA")),
            ]),
        }
    }

    /// The shape `item` is in, if it is a connection item.
    pub fn of(item: &Item) -> Option<Shape> {
        if text(item, "ConnectionID").is_some() {
            return Some(Shape::Classic);
        }
        let dynamorm = text(item, "pk").is_some_and(|pk| pk.starts_with("CONN#"))
            && text(item, "sk") == Some("METADATA");
        dynamorm.then_some(Shape::DynamOrm)
    }
}

/// The Go system's connections table in `shape`, keys only (it made its
/// own; this is for local trials and tests of the migration).
pub fn table_spec(shape: Shape) -> TableSpec {
    match shape {
        Shape::Classic => TableSpec {
            hash: string("ConnectionID"),
            range: None,
            indexes: Vec::new(),
            ttl: Some("TTL"),
        },
        Shape::DynamOrm => TableSpec {
            hash: string("pk"),
            range: Some(string("sk")),
            indexes: Vec::new(),
            ttl: Some("ttl"),
        },
    }
}

/// Why a legacy item was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a connection item (a request, a subscription, another shape).
    NotAConnection,
    /// A connection item Streamer cannot use; says what is wrong.
    Invalid(&'static str),
    /// The row's connection cannot still be open.
    Expired,
}

/// Milliseconds since the epoch of a time attribute: an RFC 3339 string or
/// a number of seconds (or milliseconds, when it is that large).
fn time_ms(value: Option<&AttributeValue>) -> Option<i64> {
    match value? {
        AttributeValue::S(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis()),
        AttributeValue::N(number) => {
            let number: f64 = number.parse().ok()?;
            // Seconds until the year 5138; milliseconds above.
            #[allow(clippy::cast_possible_truncation)]
            Some(if number.abs() < 1e11 {
                (number * 1000.0) as i64
            } else {
                number as i64
            })
        }
        _ => None,
    }
}

/// `https://domain/stage` for the Go system's `domain/stage` (it wrote no
/// scheme), leaving `https://` (and a local emulator's `http://`) alone and
/// turning `wss://` into `https://`.
pub fn endpoint_in(legacy: &str) -> Option<String> {
    let legacy = legacy.trim_end_matches('/');
    let endpoint = if legacy.starts_with("https://") || legacy.starts_with("http://") {
        legacy.to_owned()
    } else {
        format!(
            "https://{}",
            legacy.strip_prefix("wss://").unwrap_or(legacy)
        )
    };
    crate::delivery::Endpoint::parse(&endpoint).map(|_| endpoint)
}

/// The Go system's `domain/stage` for a Streamer `https://` endpoint (a
/// local emulator's `http://` endpoint keeps its scheme, so it reads back
/// as it was).
pub fn endpoint_out(endpoint: &str) -> String {
    endpoint
        .strip_prefix("https://")
        .unwrap_or(endpoint)
        .to_owned()
}

/// The connection a legacy item records, as Streamer registers it (its
/// expiry from `ttl`, as if it had connected here).
pub fn connection_of(item: &Item, ttl: Ttl, now_ms: i64) -> Result<Connection, Skip> {
    let shape = Shape::of(item).ok_or(Skip::NotAConnection)?;
    let [
        id,
        user,
        tenant,
        endpoint,
        connected,
        ping,
        metadata,
        legacy_ttl,
    ] = shape.names();
    let connection_id = text(item, id).ok_or(Skip::Invalid("no connection id"))?;
    if !ids::valid_connection_id(connection_id) {
        return Err(Skip::Invalid("connection id Streamer cannot use"));
    }
    let tenant_id = text(item, tenant).ok_or(Skip::Invalid("no tenant"))?;
    if !ids::valid_tenant_id(tenant_id) {
        return Err(Skip::Invalid("tenant id Streamer cannot use"));
    }
    let user_id = text(item, user).ok_or(Skip::Invalid("no user"))?;
    if !ids::valid_user_id(user_id) {
        return Err(Skip::Invalid("user id Streamer cannot use"));
    }
    let endpoint = text(item, endpoint)
        .and_then(endpoint_in)
        .ok_or(Skip::Invalid("no usable endpoint"))?;
    let connected_at_ms = time_ms(item.get(connected)).ok_or(Skip::Invalid("no connect time"))?;
    let last_seen_ms = time_ms(item.get(ping)).unwrap_or(connected_at_ms);
    let meta = match item.get(metadata) {
        Some(AttributeValue::M(map)) => map.clone(),
        _ => HashMap::new(),
    };
    let field = |name: &str| meta.get(name).and_then(|v| v.as_s().ok()).cloned();
    let permissions: Vec<Arc<str>> = field("permissions")
        .and_then(|json| serde_json::from_str::<Vec<String>>(&json).ok())
        .unwrap_or_default()
        .into_iter()
        .map(Arc::from)
        .collect();
    let expires_at_ms = ttl.expires_at_ms(connected_at_ms, last_seen_ms);
    let legacy_expired = time_ms(item.get(legacy_ttl)).is_some_and(|at| at <= now_ms);
    if expires_at_ms <= now_ms || legacy_expired {
        return Err(Skip::Expired);
    }
    Ok(Connection {
        connection_id: connection_id.into(),
        tenant_id: tenant_id.into(),
        user_id: user_id.into(),
        endpoint: endpoint.into(),
        permissions: permissions.into(),
        source_ip: field("ip_address").unwrap_or_default().into(),
        user_agent: field("user_agent")
            .map(|ua| ua.chars().take(256).collect::<String>())
            .unwrap_or_default()
            .into(),
        connected_at_ms,
        last_seen_ms,
        expires_at_ms,
        groups: Vec::new().into(),
        chunks: true,
        // The Go system kept no token end.
        token_expires_ms: 0,
    })
}

fn rfc3339(ms: i64) -> AttributeValue {
    AttributeValue::S(
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    )
}

/// `connection` as the Go system writes it, in `shape`.
pub fn item_of(connection: &Connection, shape: Shape) -> Item {
    let [id, user, tenant, endpoint, connected, ping, metadata, ttl] = shape.names();
    let permissions = serde_json::to_string(
        &connection
            .permissions
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| "[]".into());
    let mut item = shape.key(&connection.connection_id);
    item.insert(id.into(), s(&connection.connection_id));
    item.insert(user.into(), s(&connection.user_id));
    item.insert(tenant.into(), s(&connection.tenant_id));
    item.insert(endpoint.into(), s(&endpoint_out(&connection.endpoint)));
    item.insert(connected.into(), rfc3339(connection.connected_at_ms));
    item.insert(ping.into(), rfc3339(connection.last_seen_ms));
    item.insert(
        metadata.into(),
        AttributeValue::M(HashMap::from([
            ("user_agent".to_owned(), s(&connection.user_agent)),
            ("ip_address".to_owned(), s(&connection.source_ip)),
            ("permissions".to_owned(), s(&permissions)),
        ])),
    );
    item.insert(
        ttl.into(),
        n(connection.connected_at_ms / 1000 + LEGACY_TTL_SECS),
    );
    item
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Items read from the legacy table.
    pub scanned: u64,
    /// Connections registered now.
    pub imported: u64,
    /// Connections already in the registry (an earlier import, or the
    /// dual write): left as they are.
    pub present: u64,
    /// Rows whose connection cannot still be open.
    pub expired: u64,
    /// Connection items Streamer cannot use (logged with the reason).
    pub invalid: u64,
    /// Items that are not connections.
    pub other: u64,
    /// Connections whose Management API endpoint is not one of this
    /// deployment's (`STREAMER_MANAGEMENT_ENDPOINTS`): not imported.
    pub foreign: u64,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scanned {}, imported {}, already present {}, expired {}, invalid {}, foreign endpoint {}, not connections {}",
            self.scanned,
            self.imported,
            self.present,
            self.expired,
            self.invalid,
            self.foreign,
            self.other
        )
    }
}

/// Reads every connection item of `from_table` (either shape) into
/// `registry`. Idempotent: a connection already registered is left alone,
/// so a second run (or runs on a schedule while traffic shifts) changes
/// nothing but what is new. With `dry_run`, counts without writing. A
/// connection whose endpoint `endpoints` does not allow is skipped and
/// counted: broadcasts would otherwise carry its tenant's data there.
pub async fn import(
    client: &Client,
    from_table: &str,
    registry: &dyn Registry,
    endpoints: &crate::config::ManagementEndpoints,
    ttl: Ttl,
    now_ms: i64,
    dry_run: bool,
) -> Result<ImportReport, String> {
    let mut report = ImportReport::default();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(from_table)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| format!("cannot read table {from_table}: {}", describe(&e)))?;
        for item in page.items() {
            report.scanned += 1;
            match connection_of(item, ttl, now_ms) {
                Err(Skip::NotAConnection) => report.other += 1,
                Err(Skip::Expired) => report.expired += 1,
                Err(Skip::Invalid(why)) => {
                    report.invalid += 1;
                    tracing::warn!(reason = why, "legacy connection item skipped");
                }
                Ok(connection) if !endpoints.allows(&connection.endpoint) => {
                    report.foreign += 1;
                    crate::metrics::metrics()
                        .foreign_endpoints
                        .get_or_create(&crate::metrics::OperationLabel {
                            operation: "import",
                        })
                        .inc();
                    tracing::warn!(
                        connection_id = %connection.connection_id,
                        endpoint = %connection.endpoint,
                        "legacy connection skipped: its endpoint is not in STREAMER_MANAGEMENT_ENDPOINTS"
                    );
                }
                Ok(_) if dry_run => report.imported += 1,
                Ok(connection) => match registry.insert(connection, 0).await {
                    Ok(()) => report.imported += 1,
                    Err(RegistryError::AlreadyExists) => report.present += 1,
                    Err(err) => return Err(format!("cannot register a connection: {err}")),
                },
            }
        }
        match page.last_evaluated_key() {
            Some(last) if !last.is_empty() => start = Some(last.clone()),
            _ => return Ok(report),
        }
    }
}

/// The dual write: every connection Streamer registers, refreshes or
/// removes is mirrored into the Go system's table, in its shape, so the Go
/// side still finds connections made through Streamer while traffic
/// shifts. The registry stays the truth: a mirror write that fails is
/// logged and counted, never the client's failure.
pub struct LegacyMirror {
    inner: Arc<dyn Registry>,
    client: Client,
    table: Arc<str>,
    shape: Shape,
}

impl std::fmt::Debug for LegacyMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyMirror")
            .field("table", &self.table)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl LegacyMirror {
    /// Mirrors `inner`'s connection writes into `table` in `shape`.
    pub fn new(inner: Arc<dyn Registry>, client: Client, table: &str, shape: Shape) -> Self {
        Self {
            inner,
            client,
            table: Arc::from(table),
            shape,
        }
    }

    fn failed(&self, what: &str, detail: &str) {
        tracing::warn!(table = %self.table, error = %detail, "legacy mirror: {what} failed");
        crate::metrics::metrics().legacy_mirror_failures.inc();
    }

    async fn put(&self, connection: &Connection) {
        if let Err(err) = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(item_of(connection, self.shape)))
            .send()
            .await
        {
            self.failed("put", &describe(&err));
        }
    }
}

#[async_trait]
impl Registry for LegacyMirror {
    async fn insert(
        &self,
        connection: Connection,
        max_per_tenant: u64,
    ) -> Result<(), RegistryError> {
        let mirrored = connection.clone();
        self.inner.insert(connection, max_per_tenant).await?;
        self.put(&mirrored).await;
        Ok(())
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        self.inner.get(connection_id).await
    }

    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        let removed = self.inner.remove(connection_id).await?;
        if removed.is_some()
            && let Err(err) = self
                .client
                .delete_item()
                .table_name(&*self.table)
                .set_key(Some(self.shape.key(connection_id)))
                .send()
                .await
        {
            self.failed("delete", &describe(&err));
        }
        Ok(removed)
    }

    async fn list(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        self.inner.list(scope, after, limit).await
    }

    async fn count(&self, scope: &Scope) -> Result<u64, RegistryError> {
        self.inner.count(scope).await
    }

    async fn tenants(&self, limit: usize) -> Result<Vec<(String, u64)>, RegistryError> {
        self.inner.tenants(limit).await
    }

    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError> {
        let touched = self.inner.touch(connection_id, now_ms).await?;
        if touched {
            let ping = self.shape.names()[5];
            let updated = self
                .client
                .update_item()
                .table_name(&*self.table)
                .set_key(Some(self.shape.key(connection_id)))
                .update_expression("SET #ping = :ping")
                .condition_expression("attribute_exists(#ping)")
                .expression_attribute_names("#ping", ping)
                .expression_attribute_values(":ping", rfc3339(now_ms))
                .send()
                .await;
            if let Err(err) = updated
                && !err
                    .as_service_error()
                    .is_some_and(crate::store::dynamo::condition_failed)
            {
                self.failed("touch", &describe(&err));
            }
        }
        Ok(touched)
    }

    /// The Go system's table keeps neither permissions nor a token end:
    /// only the row of record changes.
    async fn renew(
        &self,
        connection_id: &str,
        permissions: Arc<[Arc<str>]>,
        token_expires_ms: i64,
    ) -> Result<bool, RegistryError> {
        self.inner
            .renew(connection_id, permissions, token_expires_ms)
            .await
    }

    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError> {
        self.inner.join(connection_id, group, max_groups).await
    }

    async fn leave(&self, connection_id: &str, group: &str) -> Result<bool, RegistryError> {
        self.inner.leave(connection_id, group).await
    }

    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError> {
        self.inner.idle(last_seen_before_ms, limit).await
    }

    async fn repair(&self) -> Result<Repair, RegistryError> {
        self.inner.repair().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classic(ttl_from_now_s: i64, now_ms: i64) -> Item {
        HashMap::from([
            ("ConnectionID".into(), s("PwQ8XdTQjoECJhw=")),
            ("UserID".into(), s("user-1")),
            ("TenantID".into(), s("acme")),
            (
                "Endpoint".into(),
                s("abc.execute-api.us-east-1.amazonaws.com/prod"),
            ),
            ("ConnectedAt".into(), rfc3339(now_ms - 60_000)),
            ("LastPing".into(), rfc3339(now_ms - 1_000)),
            (
                "Metadata".into(),
                AttributeValue::M(HashMap::from([
                    ("user_agent".into(), s("Go-demo/1.0")),
                    ("ip_address".into(), s("203.0.113.9")),
                    ("permissions".into(), s(r#"["read","write"]"#)),
                ])),
            ),
            ("TTL".into(), n(now_ms / 1000 + ttl_from_now_s)),
        ])
    }

    #[test]
    fn both_shapes_read_into_the_same_connection_and_write_back() {
        let now = chrono::Utc::now().timestamp_millis();
        let ttl = Ttl::default();
        let from_classic = connection_of(&classic(3600, now), ttl, now).expect("classic");
        assert_eq!(
            &*from_classic.endpoint,
            "https://abc.execute-api.us-east-1.amazonaws.com/prod"
        );
        assert_eq!(
            from_classic
                .permissions
                .iter()
                .map(|p| &**p)
                .collect::<Vec<_>>(),
            ["read", "write"]
        );
        assert_eq!(
            (&*from_classic.source_ip, &*from_classic.user_agent),
            ("203.0.113.9", "Go-demo/1.0")
        );
        let dynamorm_item = item_of(&from_classic, Shape::DynamOrm);
        assert_eq!(text(&dynamorm_item, "pk"), Some("CONN#PwQ8XdTQjoECJhw="));
        assert_eq!(Shape::of(&dynamorm_item), Some(Shape::DynamOrm));
        let from_dynamorm = connection_of(&dynamorm_item, ttl, now).expect("dynamorm");
        // Times go through RFC 3339 with nanoseconds: nothing is lost.
        assert_eq!(from_dynamorm, from_classic);
        let back = item_of(&from_dynamorm, Shape::Classic);
        assert_eq!(
            text(&back, "Endpoint"),
            Some("abc.execute-api.us-east-1.amazonaws.com/prod")
        );
        assert_eq!(
            connection_of(&back, ttl, now).expect("classic again"),
            from_classic
        );
    }

    #[test]
    fn what_cannot_be_imported_says_why() {
        let now = chrono::Utc::now().timestamp_millis();
        let ttl = Ttl::default();
        assert_eq!(
            connection_of(&classic(-1, now), ttl, now),
            Err(Skip::Expired)
        );
        let request = HashMap::from([("RequestID".into(), s("r1"))]);
        assert_eq!(connection_of(&request, ttl, now), Err(Skip::NotAConnection));
        let mut bad = classic(3600, now);
        bad.insert("TenantID".into(), s("no spaces allowed"));
        assert_eq!(
            connection_of(&bad, ttl, now),
            Err(Skip::Invalid("tenant id Streamer cannot use"))
        );
        let mut old = classic(3600, now);
        old.insert("LastPing".into(), n(now / 1000 - 3 * 3600));
        old.insert("ConnectedAt".into(), n(now - 3 * 3600 * 1000));
        assert_eq!(
            connection_of(&old, ttl, now),
            Err(Skip::Expired),
            "epoch seconds and ms both read"
        );
        assert_eq!(
            endpoint_in("wss://x.example.com/prod/").as_deref(),
            Some("https://x.example.com/prod")
        );
        assert_eq!(endpoint_in(""), None);
    }
}
