//! `AdminService`: operator-only maintenance (the reconcile job).

use std::{sync::Arc, time::Duration};

use streamer_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::convert::timestamp;
use crate::{
    delivery::reconcile::{ReconcileReport, Reconciler},
    error::Fault,
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
}
