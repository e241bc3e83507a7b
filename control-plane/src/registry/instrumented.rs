//! A registry decorator that gives every store call a span, a latency
//! observation and an error count, and keeps the active-connections gauge
//! (every insert and every removal, whichever path removed it, passes here).

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;
use tracing::Instrument;

use super::{Connection, Page, Registry, RegistryError, Scope};
use crate::metrics::{OperationLabel, metrics};

/// Wraps a backend with spans and metrics.
pub struct Instrumented {
    inner: Arc<dyn Registry>,
    departures: Option<tokio::sync::mpsc::UnboundedSender<Connection>>,
}

impl std::fmt::Debug for Instrumented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl Instrumented {
    /// `inner`, instrumented.
    pub fn new(inner: Arc<dyn Registry>) -> Self {
        Self {
            inner,
            departures: None,
        }
    }

    /// Also reports every removed connection that was in a group to
    /// `departures` (for presence).
    pub fn with_departures(
        self,
        departures: tokio::sync::mpsc::UnboundedSender<Connection>,
    ) -> Self {
        Self {
            departures: Some(departures),
            ..self
        }
    }
}

async fn observe<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, RegistryError>>,
) -> Result<T, RegistryError> {
    let started = Instant::now();
    let result = call
        .instrument(tracing::info_span!("store", operation))
        .await;
    let label = OperationLabel { operation };
    metrics()
        .store_duration
        .get_or_create(&label)
        .observe(started.elapsed().as_secs_f64());
    if matches!(result, Err(RegistryError::Unavailable(_))) {
        metrics().store_errors.get_or_create(&label).inc();
    }
    result
}

#[async_trait]
impl Registry for Instrumented {
    async fn insert(
        &self,
        connection: Connection,
        max_per_tenant: u64,
    ) -> Result<(), RegistryError> {
        let tenant = connection.tenant_id.clone();
        observe("insert", self.inner.insert(connection, max_per_tenant)).await?;
        metrics()
            .connections_active
            .get_or_create(&metrics().tenant_label(&tenant))
            .inc();
        Ok(())
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        observe("get", self.inner.get(connection_id)).await
    }

    async fn remove(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        let removed = observe("remove", self.inner.remove(connection_id)).await?;
        if let Some(connection) = &removed {
            if !connection.groups.is_empty()
                && let Some(departures) = &self.departures
            {
                let _ = departures.send(connection.clone());
            }
            metrics()
                .connections_active
                .get_or_create(&metrics().tenant_label(&connection.tenant_id))
                .dec();
        }
        Ok(removed)
    }

    async fn list(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, RegistryError> {
        observe("list", self.inner.list(scope, after, limit)).await
    }

    async fn count(&self, scope: &Scope) -> Result<u64, RegistryError> {
        observe("count", self.inner.count(scope)).await
    }

    async fn tenants(&self, limit: usize) -> Result<Vec<(String, u64)>, RegistryError> {
        observe("tenants", self.inner.tenants(limit)).await
    }

    async fn touch(&self, connection_id: &str, now_ms: i64) -> Result<bool, RegistryError> {
        observe("touch", self.inner.touch(connection_id, now_ms)).await
    }

    async fn renew(
        &self,
        connection_id: &str,
        permissions: Arc<[Arc<str>]>,
        token_expires_ms: i64,
    ) -> Result<bool, RegistryError> {
        observe(
            "renew",
            self.inner
                .renew(connection_id, permissions, token_expires_ms),
        )
        .await
    }

    async fn join(
        &self,
        connection_id: &str,
        group: &str,
        max_groups: usize,
    ) -> Result<bool, RegistryError> {
        observe("join", self.inner.join(connection_id, group, max_groups)).await
    }

    async fn leave(&self, connection_id: &str, group: &str) -> Result<bool, RegistryError> {
        observe("leave", self.inner.leave(connection_id, group)).await
    }

    async fn idle(
        &self,
        last_seen_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Connection>, RegistryError> {
        observe("idle", self.inner.idle(last_seen_before_ms, limit)).await
    }

    async fn repair(&self) -> Result<super::Repair, RegistryError> {
        observe("repair", self.inner.repair()).await
    }
}
