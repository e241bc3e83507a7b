//! Long-running requests: accepting them, leasing them to processors
//! ([`session`], [`dispatch`]), retrying them ([`retry`]), expiring leases
//! ([`sweeper`]) and relaying their progress to subscribed connections
//! ([`relay`]). The queue ([`queue`]) holds the state; this room holds the
//! policy. Time comes from the one [`Clock`], so tests drive leases, backoff
//! and the throttle with paused time.

mod dispatch;
pub mod queue;
pub mod relay;
pub mod retry;
pub mod session;
mod sweeper;

use std::sync::Arc;

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use self::{
    queue::{Failure, ProgressState, QueueError, Request, RequestQueue, Status},
    relay::{Outgoing, complete_frame, failure_frame, progress_frame},
    session::{Assignment, Session},
};
use crate::{
    actions::Actions,
    clock::Clock,
    config::JobsConfig,
    delivery::fanout::Fanout,
    error::JobError,
    metrics::{OutcomeLabel, metrics},
    registry::Registry,
};

fn count(outcome: &'static str) {
    metrics()
        .requests
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// A processor's report about a request it holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Progress (renews the lease).
    Progress(ProgressState),
    /// Success.
    Complete(Value),
    /// Failure; `retryable` is the processor's typed answer.
    Fail {
        /// Why.
        failure: Failure,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

/// The long-running request machinery.
pub struct Jobs {
    queue: Arc<dyn RequestQueue>,
    registry: Arc<dyn Registry>,
    fanout: Arc<Fanout>,
    actions: Arc<Actions>,
    config: JobsConfig,
    clock: Clock,
    work_available: Notify,
    relays: DashMap<(String, String), mpsc::UnboundedSender<Outgoing>>,
    sessions: DashMap<String, Arc<Session>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// What the machinery is built from.
pub struct JobsParts {
    /// Where requests live.
    pub queue: Arc<dyn RequestQueue>,
    /// Where subscribers are looked up.
    pub registry: Arc<dyn Registry>,
    /// How frames reach subscribers.
    pub fanout: Arc<Fanout>,
    /// The action table (processors register into it).
    pub actions: Arc<Actions>,
    /// Retry and relay settings.
    pub config: JobsConfig,
    /// The clock.
    pub clock: Clock,
}

impl Jobs {
    /// The machinery over `parts`.
    pub fn new(parts: JobsParts) -> Self {
        Self {
            queue: parts.queue,
            registry: parts.registry,
            fanout: parts.fanout,
            actions: parts.actions,
            config: parts.config,
            clock: parts.clock,
            work_available: Notify::new(),
            relays: DashMap::new(),
            sessions: DashMap::new(),
        }
    }

    /// Milliseconds since the epoch on the jobs clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Connected processors.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.iter().map(|s| s.value().clone()).collect()
    }

    /// One request.
    pub async fn get(
        &self,
        tenant_id: &str,
        request_id: &str,
    ) -> Result<Option<Request>, QueueError> {
        self.queue.get(tenant_id, request_id).await
    }

    /// A tenant's requests (of one status), a page at a time.
    pub async fn list(
        &self,
        tenant_id: &str,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Request>, Option<String>), QueueError> {
        self.queue.list(tenant_id, status, after, limit).await
    }

    /// Adds a connection to a request's subscribers.
    pub async fn subscribe(
        &self,
        tenant_id: &str,
        request_id: &str,
        connection_id: &str,
    ) -> Result<Request, QueueError> {
        self.queue
            .subscribe(tenant_id, request_id, connection_id)
            .await
    }

    /// Accepts a request and wakes idle processors.
    pub async fn submit(&self, request: Request) -> Result<(), QueueError> {
        self.queue.create(request).await?;
        count("accepted");
        self.work_available.notify_waiters();
        Ok(())
    }

    /// Cancels a request: the processor holding it hears of it, and the
    /// other subscribers get the final frame.
    pub async fn cancel(
        &self,
        tenant_id: &str,
        request_id: &str,
        by: Option<&str>,
    ) -> Result<Request, QueueError> {
        let before = self
            .queue
            .get(tenant_id, request_id)
            .await?
            .ok_or(QueueError::NotFound)?;
        let cancelled = self
            .queue
            .cancel(tenant_id, request_id, self.now_ms())
            .await?;
        count("cancelled");
        if let Some(owner) = before.lease_owner.as_deref()
            && let Some(session) = self.sessions.get(owner).map(|s| s.clone())
        {
            session.cancel(tenant_id, request_id).await;
        }
        let others = cancelled
            .subscribers
            .iter()
            .filter(|s| Some(s.as_str()) != by)
            .cloned()
            .collect();
        self.relay(
            &cancelled,
            Outgoing::Final {
                frame: failure_frame(&cancelled),
                subscribers: others,
            },
        );
        Ok(cancelled)
    }

    /// Opens a processor session; its assignments go out on `tx`.
    pub fn open_session(
        &self,
        name: &str,
        actions: Vec<String>,
        tenant: Option<String>,
        concurrency: usize,
        tx: mpsc::Sender<Assignment>,
    ) -> Arc<Session> {
        let session = Arc::new(Session::new(name, actions, tenant, concurrency, tx));
        self.sessions.insert(session.id.clone(), session.clone());
        metrics().processors.inc();
        tracing::info!(session = %session.id, name, actions = ?session.actions(), "processor connected");
        session
    }

    /// A processor went away: everything it held goes back to the queue
    /// (or fails, if it was the last attempt).
    pub async fn close_session(&self, session: &Arc<Session>) {
        session
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        session.changed.notify_one();
        if self.sessions.remove(&session.id).is_some() {
            metrics().processors.dec();
        }
        for (tenant_id, request_id) in session.held() {
            if let Ok(Some(request)) = self.queue.get(&tenant_id, &request_id).await {
                self.end_attempt(session, &request, None).await;
            }
        }
        tracing::info!(session = %session.id, "processor disconnected");
    }

    /// Handles a processor's report. A refused report is answered on the
    /// processor's stream (a cancelled request with `Cancelled`, anything
    /// else with `Refused` and the reason), never dropped silently.
    pub async fn report(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        report: Report,
    ) -> Result<(), JobError> {
        let result = match report {
            Report::Progress(progress) => {
                self.progress(session, tenant_id, request_id, progress)
                    .await
            }
            Report::Complete(result) => self.complete(session, tenant_id, request_id, result).await,
            Report::Fail { failure, retryable } => {
                self.fail(session, tenant_id, request_id, failure, retryable)
                    .await
            }
        };
        let Err(err) = result else {
            return Ok(());
        };
        let cancelled = matches!(err, JobError::Cancelled)
            || matches!(&err, JobError::NotHeld | JobError::Queue(QueueError::Conflict { .. })
                if self.is_cancelled(tenant_id, request_id).await);
        if cancelled {
            session.cancel(tenant_id, request_id).await;
            tracing::info!(tenant_id, request_id, "report for a cancelled request");
            return Err(JobError::Cancelled);
        }
        tracing::info!(tenant_id, request_id, error = %err, "processor report refused");
        session.refuse(tenant_id, request_id, err.to_string()).await;
        Err(err)
    }

    async fn is_cancelled(&self, tenant_id: &str, request_id: &str) -> bool {
        matches!(
            self.queue.get(tenant_id, request_id).await,
            Ok(Some(Request {
                status: Status::Cancelled,
                ..
            }))
        )
    }

    async fn progress(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        progress: ProgressState,
    ) -> Result<(), JobError> {
        if progress.percentage > 100 {
            return Err(JobError::Invalid(format!(
                "percentage must be 0 to 100, not {}",
                progress.percentage
            )));
        }
        if !session.holds(tenant_id, request_id) {
            return Err(JobError::NotHeld);
        }
        let force = progress.percentage >= 100;
        let frame = progress_frame(request_id, &progress);
        let request = self
            .queue
            .progress(tenant_id, request_id, &session.id, progress, self.now_ms())
            .await?;
        self.relay(
            &request,
            Outgoing::Progress {
                frame,
                force,
                subscribers: request.subscribers.clone(),
            },
        );
        Ok(())
    }

    async fn complete(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        result: Value,
    ) -> Result<(), JobError> {
        if !session.holds(tenant_id, request_id) {
            return Err(JobError::NotHeld);
        }
        let request = self
            .queue
            .complete(tenant_id, request_id, &session.id, result, self.now_ms())
            .await?;
        session.release(tenant_id, request_id);
        count("completed");
        tracing::info!(tenant_id, request_id, "request completed");
        let frame = complete_frame(request_id, request.result.as_ref().unwrap_or(&Value::Null));
        self.relay(
            &request,
            Outgoing::Final {
                frame,
                subscribers: request.subscribers.clone(),
            },
        );
        Ok(())
    }

    async fn fail(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        failure: Failure,
        retryable: bool,
    ) -> Result<(), JobError> {
        if !session.holds(tenant_id, request_id) {
            return Err(JobError::NotHeld);
        }
        let request = self
            .queue
            .get(tenant_id, request_id)
            .await?
            .ok_or(QueueError::NotFound)?;
        if request.status == Status::Cancelled {
            return Err(JobError::Cancelled);
        }
        let failure = if retryable { None } else { Some(failure) };
        self.end_attempt(session, &request, failure).await;
        Ok(())
    }

    fn relay(&self, request: &Request, out: Outgoing) {
        let key = (request.tenant_id.clone(), request.request_id.clone());
        let is_final = matches!(out, Outgoing::Final { .. });
        let tx = self
            .relays
            .entry(key.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(relay::run(
                    rx,
                    self.registry.clone(),
                    self.fanout.clone(),
                    self.config.progress_interval,
                ));
                tx
            })
            .clone();
        let _ = tx.send(out);
        if is_final {
            self.relays.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
