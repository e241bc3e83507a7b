//! `AdminService`: operator-only maintenance (the reconcile job) and the
//! process's delivery counters.

use std::{sync::Arc, time::Duration};

use streamer_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use crate::{
    delivery::reconcile::{ReconcileReport, Reconciler},
    error::Fault,
    metrics::{HistogramSnapshot, OperationLabel, OutcomeLabel, metrics},
};

/// Operator-only maintenance.
#[derive(Debug, Clone)]
pub struct AdminApi {
    reconciler: Arc<Reconciler>,
    interval: Duration,
    idle_threshold: Duration,
}

impl AdminApi {
    /// Serves the admin API.
    pub fn new(reconciler: Arc<Reconciler>, interval: Duration, idle_threshold: Duration) -> Self {
        Self {
            reconciler,
            interval,
            idle_threshold,
        }
    }
}

fn report_proto(r: ReconcileReport) -> v1::ReconcileReport {
    v1::ReconcileReport {
        checked: r.checked,
        removed: r.removed,
        alive: r.alive,
        errors: r.errors,
        started_at: Some(timestamp(r.started_at_ms)),
        duration_ms: r.duration_ms,
        counters_fixed: r.repair.counters_fixed,
        orphans_removed: r.repair.orphans_removed,
        memberships_restored: r.repair.memberships_restored,
        skipped: r.skipped,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn run_reconcile(
        &self,
        _request: Request<v1::RunReconcileRequest>,
    ) -> Result<Response<v1::RunReconcileResponse>, Status> {
        let report = self.reconciler.run_once().await.map_err(Fault::from)?;
        Ok(Response::new(v1::RunReconcileResponse {
            report: Some(report_proto(report)),
        }))
    }

    async fn get_reconcile_status(
        &self,
        _request: Request<v1::GetReconcileStatusRequest>,
    ) -> Result<Response<v1::GetReconcileStatusResponse>, Status> {
        Ok(Response::new(v1::GetReconcileStatusResponse {
            last_run: self.reconciler.last().await.map(report_proto),
            interval_secs: self.interval.as_secs(),
            idle_threshold_secs: self.idle_threshold.as_secs(),
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::GetStatsResponse>, Status> {
        Ok(Response::new(stats()))
    }
}

/// The process's delivery counters, read without locks on the hot path.
fn stats() -> v1::GetStatsResponse {
    let m = metrics();
    let recipients = |outcome: &'static str| {
        m.broadcast_recipients
            .get(&OutcomeLabel { outcome })
            .map_or(0, |counter| counter.get())
    };
    let mut latency = HistogramSnapshot::default();
    for operation in ["post_to_connection", "get_connection", "delete_connection"] {
        if let Some(histogram) = m.management_api_duration.get(&OperationLabel { operation }) {
            histogram.add_to(&mut latency);
        }
    }
    v1::GetStatsResponse {
        broadcasts: m.broadcasts.get(),
        recipients: Some(v1::RecipientCounts {
            delivered: recipients("delivered"),
            gone: recipients("gone"),
            throttled: recipients("throttled"),
            too_large: recipients("too_large"),
            failed: recipients("failed"),
        }),
        management_api_calls: latency.count,
        management_api_ms_sum: latency.sum_ns as f64 / 1e6,
        management_api_bucket_ms: latency
            .buckets
            .iter()
            .map(|(upper, _)| if upper.is_finite() { upper * 1e3 } else { 0.0 })
            .collect(),
        management_api_bucket_counts: latency.buckets.iter().map(|(_, n)| *n).collect(),
        messages: m.messages_routed.get(),
        processors: u32::try_from(m.processors.get()).unwrap_or(0),
        uptime_secs: m.started.elapsed().as_secs(),
    }
}
