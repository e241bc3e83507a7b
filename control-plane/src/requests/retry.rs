//! The retry policy: an attempt that did not succeed goes back to the
//! queue after an exponential backoff with jitter while attempts remain and
//! the failure is retryable, else the request fails for good with one final
//! frame to its subscribers.

use std::time::Duration;

use rand::Rng;

use super::{
    Jobs, count,
    queue::{Failure, QueueError, Request, Status},
    relay::{Outgoing, failure_frame},
    session::Session,
};
use crate::config::JobsConfig;

/// Exponential backoff with jitter before attempt `attempts + 1`: half the
/// ceiling fixed, half random, so retries spread without ever being instant.
pub fn backoff(config: &JobsConfig, attempts: u32) -> Duration {
    let ceiling = config
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(config.retry_max);
    let half = ceiling / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

impl Jobs {
    /// Ends an attempt that did not succeed (`fatal`: a final failure).
    pub(super) async fn end_attempt(
        &self,
        session: &Session,
        request: &Request,
        fatal: Option<Failure>,
    ) {
        session.release(&request.tenant_id, &request.request_id);
        self.retry_or_fail(request, Some(&session.id), fatal).await;
    }

    pub(super) async fn retry_or_fail(
        &self,
        request: &Request,
        owner: Option<&str>,
        fatal: Option<Failure>,
    ) {
        let now = self.now_ms();
        let exhausted = request.attempts >= request.max_attempts;
        let (retry_at, failure) = match fatal {
            Some(failure) => (None, failure),
            None if exhausted => (
                None,
                Failure {
                    code: "PROCESSING_FAILED".into(),
                    message: format!("processing failed after {} attempts", request.attempts),
                },
            ),
            None => {
                let wait = backoff(&self.config, request.attempts);
                (
                    Some(now.saturating_add(crate::clock::ms(wait))),
                    Failure {
                        code: "PROCESSING_FAILED".into(),
                        message: "attempt failed".into(),
                    },
                )
            }
        };
        match self
            .queue
            .fail(
                &request.tenant_id,
                &request.request_id,
                owner,
                failure,
                retry_at,
                now,
            )
            .await
        {
            Ok(updated) if updated.status == Status::Failed => {
                count("failed");
                tracing::info!(tenant_id = %updated.tenant_id, request_id = %updated.request_id, attempts = updated.attempts, "request failed");
                self.relay(
                    &updated,
                    Outgoing::Final {
                        frame: failure_frame(&updated),
                        subscribers: updated.subscribers.clone(),
                    },
                );
            }
            Ok(updated) => {
                count("retried");
                tracing::info!(tenant_id = %updated.tenant_id, request_id = %updated.request_id, attempts = updated.attempts, retry_at = updated.not_before_ms, "request queued for another attempt");
            }
            // Cancelled or finished meanwhile: nothing to do.
            Err(QueueError::Conflict { .. } | QueueError::NotFound) => {}
            Err(err) => tracing::warn!(error = %err, "cannot end an attempt"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_ceiling() {
        let config = JobsConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(8),
            ..Default::default()
        };
        for attempts in 1..=6u32 {
            let ceiling = Duration::from_secs(1 << (attempts - 1)).min(Duration::from_secs(8));
            for _ in 0..50 {
                let wait = backoff(&config, attempts);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "attempt {attempts}: {wait:?}"
                );
            }
        }
    }
}
