//! Broadcast: resolve the targets from the registry in one paginated pass,
//! fan the frame out through the Management API with bounded concurrency,
//! remove connections the gateway reports gone, and report what happened.

use std::{collections::HashSet, sync::Arc};

use futures_util::{StreamExt, stream};

use crate::{
    delivery::{ManagementApi, Outcome},
    error::ApiError,
    metrics::{OutcomeLabel, metrics},
    registry::{Connection, Registry, Scope, collect_all},
};

/// Who receives a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One connection.
    Connection(String),
    /// A user's connections, or a whole tenant's.
    Scope(Scope),
}

/// Counts of what happened to each recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Recipients after exclusions.
    pub targeted: u32,
    /// Accepted by the gateway.
    pub delivered: u32,
    /// Gone (410); removed from the registry.
    pub gone: u32,
    /// Throttled after every retry.
    pub throttled: u32,
    /// Over the gateway's size limit.
    pub too_large: u32,
    /// Failed otherwise.
    pub failed: u32,
}

/// Resolves targets and fans out.
pub struct Broadcaster {
    registry: Arc<dyn Registry>,
    api: Arc<ManagementApi>,
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster").finish_non_exhaustive()
    }
}

impl Broadcaster {
    /// A broadcaster over `registry` delivering through `api`.
    pub fn new(registry: Arc<dyn Registry>, api: Arc<ManagementApi>) -> Self {
        Self { registry, api }
    }

    /// The Management API client.
    pub fn api(&self) -> &Arc<ManagementApi> {
        &self.api
    }

    /// The connections `target` covers, minus `exclude`. A connection target
    /// outside `tenant_filter` resolves to nothing (it is treated as absent).
    pub async fn resolve(
        &self,
        target: &Target,
        exclude: &HashSet<String>,
        tenant_filter: Option<&str>,
    ) -> Result<Vec<Connection>, ApiError> {
        let mut targets = match target {
            Target::Connection(id) => match self.registry.get(id).await? {
                Some(connection) if tenant_filter.is_none_or(|t| *connection.tenant_id == *t) => {
                    vec![connection]
                }
                _ => Vec::new(),
            },
            Target::Scope(scope) => collect_all(self.registry.as_ref(), scope).await?,
        };
        if !exclude.is_empty() {
            targets.retain(|c| !exclude.contains(&*c.connection_id));
        }
        Ok(targets)
    }

    /// Sends `frame` to every target and reports the outcome: one span per
    /// broadcast carrying the counts, never one per recipient.
    #[tracing::instrument(
        name = "control.broadcast.fan_out",
        skip_all,
        fields(targeted = targets.len(), delivered, gone, throttled, too_large, failed)
    )]
    pub async fn deliver(&self, targets: Vec<Connection>, frame: &str) -> DeliveryReport {
        let mut report = DeliveryReport {
            targeted: u32::try_from(targets.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let data = frame.as_bytes();
        let concurrency = self.api.config().concurrency;
        let mut outcomes = stream::iter(targets)
            .map(|connection| async move {
                let outcome = self
                    .api
                    .post(&connection.endpoint, &connection.connection_id, data)
                    .await;
                (connection, outcome)
            })
            .buffer_unordered(concurrency);
        let mut gone = Vec::new();
        while let Some((connection, outcome)) = outcomes.next().await {
            match outcome {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Gone => {
                    report.gone += 1;
                    gone.push(connection.connection_id);
                }
                Outcome::Throttled => report.throttled += 1,
                Outcome::TooLarge => report.too_large += 1,
                Outcome::Failed => report.failed += 1,
            }
        }
        drop(outcomes);
        let span = tracing::Span::current();
        let m = metrics();
        m.broadcasts.inc();
        for (outcome, count) in [
            ("delivered", report.delivered),
            ("gone", report.gone),
            ("throttled", report.throttled),
            ("too_large", report.too_large),
            ("failed", report.failed),
        ] {
            span.record(outcome, count);
            if count > 0 {
                m.broadcast_recipients
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(u64::from(count));
            }
        }
        for connection_id in gone {
            match self.registry.remove(&connection_id).await {
                Ok(_) => {
                    tracing::info!(connection_id = %connection_id, "removed connection the gateway reports gone")
                }
                Err(err) => {
                    tracing::warn!(connection_id = %connection_id, error = %err, "cannot remove gone connection")
                }
            }
        }
        report
    }
}
