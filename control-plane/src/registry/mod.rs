//! The connection registry: who is connected, for which tenant and user, and
//! where the gateway can reach them.
//!
//! The trait is the contract every backend keeps; the embedded backend
//! ([`memory::MemoryRegistry`]) is the default.

use std::sync::Arc;

use async_trait::async_trait;

pub mod conformance;
pub mod dynamo;
pub mod instrumented;
pub mod legacy;
pub mod memory;

/// A registered connection. Strings are shared (`Arc<str>`) so that copies
/// handed to callers, and the registry's own indexes, cost a pointer each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The API Gateway connection id.
    pub connection_id: Arc<str>,
    /// The tenant from the verified token.
    pub tenant_id: Arc<str>,
    /// The user (`sub`) from the verified token.
    pub user_id: Arc<str>,
    /// The Management API endpoint that reaches this connection.
    pub endpoint: Arc<str>,
    /// Permissions granted by the token.
    pub permissions: Arc<[Arc<str>]>,
    /// Source IP as the gateway saw it (empty when unknown).
    pub source_ip: Arc<str>,
    /// User-Agent as the gateway saw it (truncated).
    pub user_agent: Arc<str>,
    /// Accept time, milliseconds since the epoch.
    pub connected_at_ms: i64,
    /// Last activity, milliseconds since the epoch.
    pub last_seen_ms: i64,
    /// When the row stops counting as connected, milliseconds since the
    /// epoch; set by the registry from its [`Ttl`] policy.
    pub expires_at_ms: i64,
    /// The groups (rooms) the connection is in, within its tenant.
    pub groups: Arc<[Arc<str>]>,
    /// When the client's token ends (its `exp`), milliseconds since the
    /// epoch; 0: unknown (a row imported from the Go system). The
    /// connection is closed then unless a `refresh` extends it.
    pub token_expires_ms: i64,
    /// The client joins `chunk` frames (it did not connect with
    /// `chunks=false`): a frame over the delivery limit reaches it as
    /// chunks, not as a `PAYLOAD_TOO_LARGE` error.
    pub chunks: bool,
}

impl Connection {
    /// Whether the row has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// Whether its client token ended more than `grace` before `now_ms`
    /// (the replica watching it closes it at the end; past the grace no
    /// one did — that replica stopped — and whoever sees the row must).
    pub fn token_ended(&self, now_ms: i64, grace: std::time::Duration) -> bool {
        self.token_expires_ms > 0
            && self.token_expires_ms < now_ms.saturating_sub(crate::clock::ms(grace))
    }
}

/// How long a row lives without being refreshed. API Gateway closes idle
/// connections after 10 minutes and every connection after 2 hours, so a row
/// older than that belongs to a connection whose `$disconnect` was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// A row expires this long after its last refresh...
    pub idle: std::time::Duration,
    /// ...and never later than this long after the connection was accepted.
    pub max_age: std::time::Duration,
}

impl Default for Ttl {
    fn default() -> Self {
        // API Gateway's 2 h maximum plus a margin for clock skew.
        let two_hours = std::time::Duration::from_secs(2 * 3600 + 300);
        Self {
            idle: two_hours,
            max_age: two_hours,
        }
    }
}

impl Ttl {
    /// The expiry of a row with these timestamps.
    pub fn expires_at_ms(&self, connected_at_ms: i64, last_seen_ms: i64) -> i64 {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        last_seen_ms
            .saturating_add(ms(self.idle))
            .min(connected_at_ms.saturating_add(ms(self.max_age)))
    }
}

/// Which connections a query covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every connection of a tenant.
    Tenant(String),
    /// Every connection of one user within a tenant.
    User {
        /// The tenant.
        tenant_id: String,
        /// The user.
        user_id: String,
    },
    /// Every member of a group within a tenant.
    Group {
        /// The tenant.
        tenant_id: String,
        /// The group name.
        group: String,
    },
}

impl Scope {
    /// The tenant the scope lies in.
    pub fn tenant_id(&self) -> &str {
        match self {
            Scope::Tenant(tenant_id)
            | Scope::User { tenant_id, .. }
            | Scope::Group { tenant_id, .. } => tenant_id,
        }
    }
}

/// One page of a listing, ordered by connection id.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The connections on this page.
    pub items: Vec<Connection>,
    /// The last connection id of this page when more may follow.
    pub next_after: Option<String>,
}

pub use crate::error::RegistryError;

/// What one consistency pass over the registry found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repair {
    /// Tenant counters set to the number of live rows.
    pub counters_fixed: u32,
    /// Group-membership items whose connection is gone (or left), removed.
    pub orphans_removed: u32,
    /// Memberships a row records but whose index item was missing, restored.
    pub memberships_restored: u32,
}

/// The connection registry contract.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers a new connection. Fails with `AlreadyExists` when the id is
    /// taken (a redelivered `$connect` never registers twice) and with
    /// `QuotaExceeded` when the tenant already holds `max_per_tenant`
    /// connections (0 = no quota); the check and the insert are atomic.
    async fn insert(
        &self,
        connection: Connection,
        max_per_tenant: u64,
    ) -> Result<(), RegistryError>;

    /// Looks a connection up by id.
    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError>;

    /// Removes a connection and returns what was removed; `None` when it was
    /// already gone (removal is idempotent).
    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError>;

    /// Lists up to `limit` connections of `scope` with ids after `after`.
    /// Expired rows are never listed, looked up or counted.
    async fn list(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError>;

    /// Counts the connections of `scope`.
    async fn count(&self, scope: &Scope) -> Result<u64, RegistryError>;

    /// The tenants with registered connections, by id, with their counts:
    /// at most `limit` of them. The embedded store counts its rows; the
    /// DynamoDB one reads the tenants' counter items (one Scan of the
    /// table, so callers keep the answer for a while).
    async fn tenants(&self, limit: usize) -> Result<Vec<(String, u64)>, RegistryError>;

    /// Records activity: sets `last_seen` and extends the expiry. Never
    /// recreates a removed row; `Ok(false)` when the row is gone.
    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError>;

    /// A `refresh` with a new token: replaces the connection's permissions
    /// and its token's end. Never recreates a removed row; `Ok(false)` when
    /// the row is gone.
    async fn renew(
        &self,
        connection_id: &str,
        permissions: Arc<[Arc<str>]>,
        token_expires_ms: i64,
    ) -> Result<bool, RegistryError>;

    /// Adds a connection to a group of its tenant. `Ok(true)` when it joined,
    /// `Ok(false)` when it was a member already; `NotFound` when the
    /// connection is not registered; `GroupLimit` when it is in
    /// `max_groups` groups already. Membership dies with the connection.
    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError>;

    /// Removes a connection from a group; `Ok(false)` when it was not a member.
    async fn leave(&self, connection_id: &str, group: &str) -> Result<bool, RegistryError>;

    /// Up to `limit` rows (of any tenant, expired ones included) last seen
    /// before `last_seen_before_ms`: the candidates the reconcile job checks
    /// with the gateway.
    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError>;

    /// Brings derived state back in line with the rows: each tenant's
    /// connection counter is set to its live rows (conditionally, so a
    /// concurrent connect or disconnect makes the pass skip that tenant
    /// rather than write a stale count), and membership index items whose
    /// row is gone are removed. A store whose derived state cannot drift
    /// (the embedded one) has nothing to do, and says so in its own impl:
    /// no method of a store trait has a default body, so a decorator that
    /// forgets to forward one does not compile.
    async fn repair(&self) -> Result<Repair, RegistryError>;
}

/// Every connection of `scope`, paging through the registry (for broadcast
/// target resolution: one pass over the index, no read per recipient).
pub async fn collect_all(
    registry: &dyn Registry,
    scope: &Scope,
) -> Result<Vec<Connection>, RegistryError> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = registry.list(scope, after.as_deref(), PAGE).await?;
        all.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(all),
        }
    }
}
