//! Stale-connection cleanup. `$disconnect` is best-effort in AWS, so rows
//! whose connection is gone linger. Every `interval`, rows idle longer than
//! the threshold are checked with the gateway (`GetConnection`): a 410 or an
//! expired row removes the row (and frees its tenant quota); a live one is
//! refreshed so it is not checked again until it idles once more. Then the
//! registry repairs its derived state (tenant counters, membership index
//! items), so an outage's drift is gone after one pass.
//!
//! A row whose endpoint cannot be reached at all (refused, hung, 5xx) is
//! kept while the endpoint may come back, and removed once the endpoint has
//! failed every check for `unreachable_after`: its departure is announced
//! and its tenant slot freed. With several replicas, one reconcile runs at a
//! time (a lease in the store), so removals are counted once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use tokio::sync::Mutex;

use super::Delivery;
use crate::{
    clock::Clock,
    metrics::{EndpointLabel, metrics},
    registry::{Registry, RegistryError, Repair},
    store::lease::Lease,
};

/// How long one reconcile run may hold the fleet-wide lease.
const LEASE_TTL: Duration = Duration::from_secs(300);

/// Most rows checked in one run (the rest wait for the next run).
const MAX_PER_RUN: usize = 10_000;
/// How long after a token's end its watcher may still be closing it;
/// past it, reconcile (and a frame from the client) closes it instead.
pub const TOKEN_END_GRACE: Duration = Duration::from_secs(5);

/// `GetConnection` calls in flight during a run.
const CONCURRENCY: usize = 16;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Idle rows examined.
    pub checked: u32,
    /// Rows removed because the gateway no longer had the connection or the
    /// row had expired.
    pub removed: u32,
    /// Rows whose connection is alive (refreshed).
    pub alive: u32,
    /// Rows that could not be checked (gateway or store errors).
    pub errors: u32,
    /// What the registry's repair found and fixed.
    pub repair: Repair,
    /// Another replica holds the reconcile lease: this run did nothing.
    pub skipped: bool,
    /// When the run started, ms since the epoch.
    pub started_at_ms: i64,
    /// How long it took.
    pub duration_ms: u64,
}

/// Runs reconcile passes and remembers the last one.
pub struct Reconciler {
    registry: Arc<dyn Registry>,
    delivery: Arc<dyn Delivery>,
    clock: Clock,
    idle_threshold: Duration,
    connecting_grace: Duration,
    unreachable_after: Duration,
    /// Endpoints failing every check, since when (ms).
    failing: std::sync::Mutex<HashMap<Arc<str>, i64>>,
    lease: Option<Arc<dyn Lease>>,
    last: Mutex<Option<ReconcileReport>>,
    running: Mutex<()>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("idle_threshold", &self.idle_threshold)
            .finish_non_exhaustive()
    }
}

enum Verdict {
    Removed,
    Alive,
    Error,
}

impl Reconciler {
    /// A reconciler checking rows idle longer than `idle_threshold` with the
    /// gateway through `delivery`.
    pub fn new(
        registry: Arc<dyn Registry>,
        delivery: Arc<dyn Delivery>,
        clock: Clock,
        idle_threshold: Duration,
        connecting_grace: Duration,
    ) -> Self {
        Self {
            registry,
            delivery,
            clock,
            idle_threshold,
            connecting_grace,
            unreachable_after: Duration::from_secs(900),
            failing: std::sync::Mutex::new(HashMap::new()),
            lease: None,
            last: Mutex::new(None),
            running: Mutex::new(()),
        }
    }

    /// Rows on an endpoint that failed every check for this long are
    /// removed (default 15 minutes).
    pub fn with_unreachable_after(mut self, after: Duration) -> Self {
        self.unreachable_after = after;
        self
    }

    /// One run at a time across the fleet, through `lease`.
    pub fn with_lease(mut self, lease: Arc<dyn Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The last run's report, if any run happened.
    pub async fn last(&self) -> Option<ReconcileReport> {
        *self.last.lock().await
    }

    /// Runs one pass now (one at a time: a second caller waits for the first).
    pub async fn run_once(&self) -> Result<ReconcileReport, RegistryError> {
        let _one_at_a_time = self.running.lock().await;
        let started = tokio::time::Instant::now();
        let now = self.clock.now_ms();
        if let Some(lease) = &self.lease {
            match lease.acquire(LEASE_TTL, now).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!("another replica is reconciling; this run is skipped");
                    return Ok(ReconcileReport {
                        skipped: true,
                        started_at_ms: now,
                        ..Default::default()
                    });
                }
                Err(err) => return Err(RegistryError::Unavailable(err)),
            }
        }
        let result = self.pass(started, now).await;
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
        result
    }

    /// Rows whose endpoint `endpoint` answered: it is reachable again.
    fn reached(&self, endpoint: &Arc<str>) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.remove(endpoint);
        }
    }

    /// A check of a row on `endpoint` failed; whether the endpoint has now
    /// been unreachable for longer than `unreachable_after`.
    fn unreachable(&self, endpoint: &Arc<str>, now: i64) -> bool {
        metrics()
            .endpoint_failures
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .inc();
        let Ok(mut failing) = self.failing.lock() else {
            return false;
        };
        let since = *failing.entry(endpoint.clone()).or_insert(now);
        now.saturating_sub(since) >= crate::clock::ms(self.unreachable_after)
    }

    fn unreachable_since_long(&self, endpoint: &Arc<str>, now: i64) -> bool {
        self.failing
            .lock()
            .ok()
            .and_then(|f| f.get(endpoint).copied())
            .is_some_and(|since| {
                now.saturating_sub(since) >= crate::clock::ms(self.unreachable_after)
            })
    }

    async fn pass(
        &self,
        started: tokio::time::Instant,
        now: i64,
    ) -> Result<ReconcileReport, RegistryError> {
        let threshold = i64::try_from(self.idle_threshold.as_millis()).unwrap_or(i64::MAX);
        let candidates = self
            .registry
            .idle(now.saturating_sub(threshold), MAX_PER_RUN)
            .await?;
        let mut report = ReconcileReport {
            started_at_ms: now,
            ..Default::default()
        };
        let mut verdicts = stream::iter(candidates)
            .map(|row| async move {
                let gone = if row.expired(now) {
                    Ok(true)
                } else if row.token_ended(now, TOKEN_END_GRACE) {
                    // Its token ended and the replica that watched it is
                    // gone: close the socket now (then the row goes).
                    match self.delivery.delete(&row.endpoint, &row.connection_id).await {
                        Ok(_) => {
                            tracing::info!(connection_id = %row.connection_id, tenant_id = %row.tenant_id, "reconcile closed a connection past its token's end");
                            Ok(true)
                        }
                        Err(err) => Err(err),
                    }
                } else {
                    match self.delivery.is_connected(&row.endpoint, &row.connection_id).await {
                        Ok(alive) => {
                            self.reached(&row.endpoint);
                            Ok(!alive)
                        }
                        Err(err) if self.unreachable(&row.endpoint, now) => {
                            tracing::warn!(connection_id = %row.connection_id, endpoint = %row.endpoint, error = %err, "management endpoint unreachable for longer than the limit; removing its rows");
                            Ok(true)
                        }
                        Err(err) => Err(err),
                    }
                };
                match gone {
                    // Still inside its `$connect`: the gateway does not know it yet.
                    Ok(true) if !row.expired(now) && !row.token_ended(now, TOKEN_END_GRACE) && !super::gone_for_good(row.connected_at_ms, now, self.connecting_grace) && !self.unreachable_since_long(&row.endpoint, now) => {
                        Verdict::Alive
                    }
                    Ok(true) => match self.registry.remove(&row.connection_id).await {
                        Ok(_) => {
                            tracing::info!(connection_id = %row.connection_id, tenant_id = %row.tenant_id, "reconcile removed a stale connection");
                            Verdict::Removed
                        }
                        Err(err) => {
                            tracing::warn!(connection_id = %row.connection_id, error = %err, "reconcile could not remove a row");
                            Verdict::Error
                        }
                    },
                    Ok(false) => match self.registry.touch(&row.connection_id, self.clock.now_ms()).await {
                        Ok(_) => Verdict::Alive,
                        Err(err) => {
                            tracing::warn!(connection_id = %row.connection_id, error = %err, "reconcile could not refresh a row");
                            Verdict::Error
                        }
                    },
                    Err(err) => {
                        tracing::warn!(connection_id = %row.connection_id, error = %err, "reconcile could not ask the gateway");
                        Verdict::Error
                    }
                }
            })
            .buffer_unordered(CONCURRENCY);
        while let Some(verdict) = verdicts.next().await {
            report.checked += 1;
            match verdict {
                Verdict::Removed => report.removed += 1,
                Verdict::Alive => report.alive += 1,
                Verdict::Error => report.errors += 1,
            }
        }
        report.repair = self.registry.repair().await?;
        crate::metrics::metrics()
            .reconcile_removed
            .inc_by(u64::from(report.removed));
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            checked = report.checked,
            removed = report.removed,
            alive = report.alive,
            errors = report.errors,
            counters_fixed = report.repair.counters_fixed,
            orphans_removed = report.repair.orphans_removed,
            memberships_restored = report.repair.memberships_restored,
            duration_ms = report.duration_ms,
            "reconcile run finished"
        );
        *self.last.lock().await = Some(report);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        delivery::fake::FakeGateway,
        registry::{Scope, Ttl, conformance::sample, memory::MemoryRegistry},
    };

    #[tokio::test(start_paused = true)]
    async fn forgotten_rows_go_live_ones_stay_and_are_refreshed() {
        let clock = Clock::new();
        let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), clock));
        let gateway = Arc::new(FakeGateway::new());
        for id in ["live", "ghost"] {
            let mut row = sample(id, "acme", "alice");
            row.connected_at_ms = clock.now_ms();
            row.last_seen_ms = clock.now_ms();
            registry.insert(row, 0).await.expect("insert");
        }
        gateway.open("live");
        let reconciler = Reconciler::new(
            registry.clone(),
            gateway.clone(),
            clock,
            Duration::from_secs(60),
            Duration::from_secs(10),
        );
        let report = reconciler.run_once().await.expect("run");
        assert_eq!(report.checked, 0, "nothing is idle yet");

        tokio::time::advance(Duration::from_secs(61)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!(
            (report.checked, report.removed, report.alive, report.errors),
            (2, 1, 1, 0)
        );
        assert!(registry.get("ghost").await.expect("get").is_none());
        let live = registry.get("live").await.expect("get").expect("live");
        assert_eq!(live.last_seen_ms, clock.now_ms(), "refreshed");
        assert_eq!(
            registry
                .count(&Scope::Tenant("acme".into()))
                .await
                .expect("count"),
            1
        );
        assert_eq!(reconciler.last().await, Some(report));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_tokens_end_whose_watcher_is_gone_is_closed() {
        let clock = Clock::new();
        let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), clock));
        let gateway = Arc::new(FakeGateway::new());
        for (id, ends_in_secs) in [("ended", 10), ("valid", 3600), ("no-token", 0)] {
            let mut row = sample(id, "acme", "u");
            row.connected_at_ms = clock.now_ms();
            row.last_seen_ms = clock.now_ms();
            row.token_expires_ms = if ends_in_secs == 0 {
                0
            } else {
                clock.now_ms() + ends_in_secs * 1000
            };
            registry.insert(row, 0).await.expect("insert");
            gateway.open(id);
        }
        // No replica watches them (the one that accepted them stopped).
        let reconciler = Reconciler::new(
            registry.clone(),
            gateway.clone(),
            clock,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        tokio::time::advance(Duration::from_secs(12)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!(
            report.removed, 0,
            "inside the grace its watcher may still close it"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!((report.removed, report.alive), (1, 2), "{report:?}");
        assert_eq!(
            gateway.deleted(),
            vec!["ended".to_owned()],
            "its socket closed"
        );
        assert!(registry.get("ended").await.expect("get").is_none());
        assert!(registry.get("valid").await.expect("get").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn rows_on_an_endpoint_unreachable_past_the_limit_are_removed() {
        let clock = Clock::new();
        let registry = Arc::new(MemoryRegistry::with_ttl(Ttl::default(), clock));
        let gateway = Arc::new(FakeGateway::new());
        for id in ["a", "b"] {
            let mut row = sample(id, "acme", "u");
            row.connected_at_ms = clock.now_ms();
            row.last_seen_ms = clock.now_ms();
            registry.insert(row, 0).await.expect("insert");
            gateway.open(id);
        }
        gateway.set_unreachable(true);
        let reconciler = Reconciler::new(
            registry.clone(),
            gateway.clone(),
            clock,
            Duration::ZERO,
            Duration::from_secs(10),
        )
        .with_unreachable_after(Duration::from_secs(120));
        tokio::time::advance(Duration::from_secs(30)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!(
            (report.errors, report.removed),
            (2, 0),
            "kept while it may come back"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!((report.errors, report.removed), (2, 0));
        tokio::time::advance(Duration::from_secs(61)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!(
            (report.errors, report.removed),
            (0, 2),
            "unreachable past the limit"
        );
        assert_eq!(
            registry
                .count(&Scope::Tenant("acme".into()))
                .await
                .expect("count"),
            0,
            "the tenant's slots are free"
        );

        // An endpoint that answers again starts its clock over.
        let mut row = sample("c", "acme", "u");
        row.connected_at_ms = clock.now_ms();
        registry.insert(row, 0).await.expect("insert");
        gateway.open("c");
        gateway.set_unreachable(false);
        tokio::time::advance(Duration::from_secs(30)).await;
        let report = reconciler.run_once().await.expect("run");
        assert_eq!((report.alive, report.removed), (1, 0));
    }
}
