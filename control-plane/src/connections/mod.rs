//! Connections: who may connect ([`connect`], [`auth`], [`limits`]), what a
//! client frame does ([`route`], [`builtins`]), group membership
//! ([`groups`]), and the server side's way to close a connection. Plain
//! Rust; the gRPC adapters only decode, call and map errors.

pub mod auth;
pub mod builtins;
pub mod chunks;
pub mod connect;
pub mod expiry;
pub mod groups;
pub mod jwks;
pub mod limits;
pub mod route;
pub mod shared_limits;

use std::{sync::Arc, time::Duration};

use self::{auth::JwtVerifier, chunks::Chunks, groups::Groups, limits::RateLimiter};
use crate::{
    actions::Actions,
    clock::Clock,
    config::LimitsConfig,
    delivery::{Delivery, fanout::Fanout},
    error::{Fault, RegistryError},
    metrics::metrics,
    registry::{Connection, Registry},
    requests::Jobs,
    streams::Streams,
};

/// The longest a connect or a client frame may take, store calls
/// included: past it the client gets 503 / `SERVICE_UNAVAILABLE` (each
/// store call has its own 2 s / 5 s bounds, but a connect makes several).
/// Well under the edge's call timeout, so the answer is ours, not a
/// timeout's.
pub const OPERATION_BUDGET: Duration = Duration::from_secs(4);

/// The connect / route logic with everything it needs.
pub struct ControlPlane {
    registry: Arc<dyn Registry>,
    verifier: JwtVerifier,
    limiter: Arc<dyn RateLimiter>,
    limits: LimitsConfig,
    loopback_unlimited: bool,
    actions: Arc<Actions>,
    jobs: Arc<Jobs>,
    groups: Arc<Groups>,
    streams: Streams,
    delivery: Arc<dyn Delivery>,
    fanout: Arc<Fanout>,
    chunks: Arc<dyn Chunks>,
    clock: Clock,
    touch_interval_ms: i64,
    endpoints: crate::config::ManagementEndpoints,
    token_warning: Duration,
    /// The token end of each connection this replica accepted or renewed,
    /// forgotten when the connection goes.
    watches: expiry::Watches,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

/// What the control plane is assembled from.
#[allow(missing_debug_implementations)]
pub struct Parts {
    /// The connection registry.
    pub registry: Arc<dyn Registry>,
    /// Client token verification.
    pub verifier: JwtVerifier,
    /// The message and connect limits.
    pub limiter: Arc<dyn RateLimiter>,
    /// Message size limit and tenant quota.
    pub limits: LimitsConfig,
    /// Whether loopback clients skip the connect limit.
    pub loopback_unlimited: bool,
    /// The action table.
    pub actions: Arc<Actions>,
    /// Long-running requests.
    pub jobs: Arc<Jobs>,
    /// Group membership and presence.
    pub groups: Arc<Groups>,
    /// Stream history (for `recover` and `join` with `since`).
    pub streams: Streams,
    /// The gateway (to close connections).
    pub delivery: Arc<dyn Delivery>,
    /// The delivery policy (replies too large to go back whole are sent
    /// through it, as chunks).
    pub fanout: Arc<Fanout>,
    /// Where chunked client messages wait for their last piece.
    pub chunks: Arc<dyn Chunks>,
    /// The clock.
    pub clock: Clock,
    /// Refresh `last_seen` at most this often.
    pub touch_interval: Duration,
    /// The Management API endpoints connects may name.
    pub endpoints: crate::config::ManagementEndpoints,
    /// How long before a token's end its connection is told
    /// (`token_expiring`).
    pub token_warning: Duration,
}

impl ControlPlane {
    /// Assembles the control plane.
    pub fn new(parts: Parts) -> Self {
        Self {
            registry: parts.registry,
            verifier: parts.verifier,
            limiter: parts.limiter,
            limits: parts.limits,
            loopback_unlimited: parts.loopback_unlimited,
            actions: parts.actions,
            jobs: parts.jobs,
            groups: parts.groups,
            streams: parts.streams,
            delivery: parts.delivery,
            fanout: parts.fanout,
            chunks: parts.chunks,
            clock: parts.clock,
            touch_interval_ms: crate::clock::ms(parts.touch_interval),
            endpoints: parts.endpoints,
            token_warning: parts.token_warning,
            watches: expiry::Watches::default(),
        }
    }

    /// Frees the chunked messages past their timeout, whether or not
    /// another piece arrives (the app calls it every second).
    pub async fn expire_chunks(&self) {
        let freed = self.chunks.expire(self.clock.now_ms()).await;
        if freed > 0 {
            tracing::debug!(freed, "chunked messages freed at their timeout");
        }
    }

    /// `$disconnect`: forget the connection; `true` when it was registered.
    pub async fn disconnect(&self, connection_id: &str) -> Result<bool, RegistryError> {
        self.watches.stop(&Arc::from(connection_id));
        let removed = self.registry.remove(connection_id).await?;
        self.chunks.disconnected(connection_id).await;
        if let Some(connection) = &removed {
            let duration_ms = self.clock.now_ms() - connection.connected_at_ms;
            tracing::info!(connection_id, tenant_id = %connection.tenant_id, duration_ms, "disconnected");
            metrics().disconnects.inc();
        }
        Ok(removed.is_some())
    }

    /// A connection a caller restricted to `visible_to` (`None`: any tenant)
    /// may see; `NOT_FOUND` otherwise, so a tenant-bound caller cannot learn
    /// whether another tenant's connection exists.
    pub async fn visible(
        &self,
        connection_id: &str,
        visible_to: Option<&str>,
    ) -> Result<Connection, Fault> {
        match self.registry.get(connection_id).await? {
            Some(c) if visible_to.is_none_or(|t| *c.tenant_id == *t) => Ok(c),
            _ => Err(Fault::not_found("connection")),
        }
    }

    /// Closes a connection from the server side: the gateway drops the
    /// socket, the row goes. `true` when the gateway still had it.
    pub async fn force_disconnect(
        &self,
        connection_id: &str,
        visible_to: Option<&str>,
    ) -> Result<bool, Fault> {
        let connection = self.visible(connection_id, visible_to).await?;
        let closed = self
            .delivery
            .delete(&connection.endpoint, &connection.connection_id)
            .await?;
        self.registry.remove(&connection.connection_id).await?;
        tracing::info!(connection_id, closed, "disconnected by the server api");
        Ok(closed)
    }

    /// Refreshes `last_seen` at most once per touch interval, off the reply
    /// path.
    fn touch_if_due(&self, connection: &Connection) {
        let now = self.clock.now_ms();
        if now - connection.last_seen_ms < self.touch_interval_ms {
            return;
        }
        let registry = self.registry.clone();
        let id = connection.connection_id.clone();
        tokio::spawn(async move {
            if let Err(err) = registry.touch(&id, now).await {
                tracing::warn!(connection_id = %id, error = %err, "cannot refresh last_seen");
            }
        });
    }

    /// Periodic upkeep of the limiters.
    pub fn housekeeping(&self) {
        self.limiter.housekeeping();
    }
}

/// The answer when a frame arrives for a connection the registry forgot.
fn not_registered() -> Fault {
    Fault::unauthenticated("connection is not registered; reconnect")
}

#[cfg(test)]
mod tests;
