//! Background upkeep of the queue: attempts whose lease ran out (a
//! processor stalled or crashed without closing its stream) are ended,
//! requests that waited longer than `STREAMER_QUEUE_WAIT_TTL_SECS` for a
//! processor expire (their subscribers are told), and the queue depth and
//! age are sampled into the metrics.

use std::sync::Arc;

use super::{
    Jobs, count,
    relay::{Outgoing, failure_frame},
};
use crate::metrics::metrics;

impl Jobs {
    /// Ends attempts whose lease ran out.
    pub async fn sweep_expired_leases(&self) {
        let expired = match self.queue.expired_leases(self.now_ms(), 1000).await {
            Ok(expired) => expired,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for expired leases");
                return;
            }
        };
        for request in expired {
            tracing::info!(tenant_id = %request.tenant_id, request_id = %request.request_id, "lease expired");
            if let Some(session) = request
                .lease_owner
                .as_deref()
                .and_then(|o| self.sessions.get(o).map(|s| s.clone()))
            {
                session.release(&request.tenant_id, &request.request_id);
            }
            self.retry_or_fail(&request, request.lease_owner.as_deref(), None)
                .await;
        }
    }

    /// Ends the requests that waited longer than the wait TTL for a
    /// processor: each becomes `expired` and its subscribers get a
    /// `TIMEOUT` error frame.
    pub async fn expire_waiting(&self) {
        let now = self.now_ms();
        let ready_before = now - crate::clock::ms(self.config.wait_ttl);
        let expired = match self.queue.expire_waiting(ready_before, now, 1000).await {
            Ok(expired) => expired,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for requests that waited too long");
                return;
            }
        };
        for request in expired {
            tracing::info!(tenant_id = %request.tenant_id, request_id = %request.request_id, action = %request.action, "request expired waiting for a processor");
            count("expired");
            self.relay(
                &request,
                Outgoing::Final {
                    frame: failure_frame(&request),
                    subscribers: request.subscribers.clone(),
                },
            );
        }
    }

    /// Samples the queue depth and the oldest queued request's age into
    /// the metrics.
    pub async fn sample_queue(&self) {
        match self.queue.queued_stats(&self.actions.async_names()).await {
            Ok((depth, oldest)) => {
                metrics()
                    .requests_queued
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
                let age = oldest.map_or(0.0, |created| {
                    (self.now_ms() - created).max(0) as f64 / 1000.0
                });
                metrics().requests_queued_oldest_age.set(age);
            }
            Err(err) => tracing::warn!(error = %err, "cannot sample the request queue"),
        }
    }

    /// Runs the lease sweeper (and samples the queue every 15 ticks) until
    /// dropped.
    pub async fn run_sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        // Expiry runs every few ticks: often enough for a short wait TTL,
        // rarely enough that an hour's TTL costs little.
        let expiry_every = (self.config.wait_ttl.as_secs() / 4).clamp(1, 15);
        loop {
            tick.tick().await;
            self.sweep_expired_leases().await;
            if ticks.is_multiple_of(expiry_every) {
                self.expire_waiting().await;
            }
            if ticks.is_multiple_of(15) {
                self.sample_queue().await;
            }
            ticks += 1;
        }
    }
}
