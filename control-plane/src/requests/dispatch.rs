//! Leasing work to a processor session while it has capacity: woken when
//! work is submitted here, when the session frees a slot, and by a short
//! poll (backoffs ending, work queued through another replica).

use std::sync::{Arc, atomic::Ordering};

use super::{
    Jobs,
    session::{Assignment, Lease, Session},
};

impl Jobs {
    /// Leases work to `session` while it has capacity, until it closes.
    pub async fn dispatch(self: Arc<Self>, session: Arc<Session>) {
        loop {
            if session.tx.is_closed() || session.closed.load(Ordering::SeqCst) {
                return;
            }
            while !session.draining.load(Ordering::SeqCst)
                && session.in_flight() < session.concurrency
            {
                let leased = self
                    .queue
                    .lease(
                        &session.actions,
                        session.tenant.as_deref(),
                        &session.id,
                        self.now_ms(),
                    )
                    .await;
                let request = match leased {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot lease work");
                        break;
                    }
                };
                session.take(&request.tenant_id, &request.request_id);
                tracing::info!(session = %session.id, tenant_id = %request.tenant_id, request_id = %request.request_id, attempt = request.attempts, "leased");
                let lease = Assignment::Lease(Lease {
                    tenant_id: request.tenant_id.clone(),
                    request_id: request.request_id.clone(),
                    action: request.action.clone(),
                    payload: request.payload.clone(),
                    user_id: request.user_id.clone(),
                    attempt: request.attempts,
                });
                if session.tx.send(lease).await.is_err() {
                    // Gone before it got the lease: the attempt did not start.
                    self.end_attempt(&session, &request, None).await;
                    return;
                }
            }
            tokio::select! {
                () = self.work_available.notified() => {}
                () = session.changed.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                () = session.tx.closed() => return,
            }
        }
    }
}
