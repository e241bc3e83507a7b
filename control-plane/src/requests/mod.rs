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

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use self::{
    queue::{Failure, ProgressState, QueueError, Request, RequestQueue, Status},
    relay::{Outgoing, complete_frame, failure_frame, progress_frame},
    session::{Assignment, Session},
};
use crate::{
    actions::{Actions, Scope},
    clock::Clock,
    config::JobsConfig,
    delivery::fanout::Fanout,
    error::JobError,
    metrics::{OutcomeLabel, metrics},
    registry::Registry,
};

/// How often a replica looks for cancels of its processors' work received
/// by other replicas.
pub const CANCEL_POLL: Duration = Duration::from_millis(250);
/// How often a connected processor's actions are published again.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(60);
/// How long an unknown action name is remembered as unknown.
const MISS_TTL: Duration = Duration::from_secs(5);

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
    misses: std::sync::Mutex<std::collections::HashMap<String, i64>>,
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
            misses: std::sync::Mutex::new(std::collections::HashMap::new()),
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
        if let Some(max) = self.queue.max_value_bytes() {
            let bytes = request.payload.to_string().len();
            if bytes > max {
                return Err(QueueError::TooLarge {
                    what: "payload",
                    bytes,
                    max,
                });
            }
        }
        self.queue.create(request).await?;
        count("accepted");
        self.work_available.notify_waiters();
        Ok(())
    }

    /// Cancels a request: the processor holding it hears of it (at once on
    /// this replica; within [`CANCEL_POLL`] from the replica serving it,
    /// which polls the store), and the other subscribers get the final
    /// frame.
    pub async fn cancel(
        &self,
        tenant_id: &str,
        request_id: &str,
        by: Option<&str>,
    ) -> Result<Request, QueueError> {
        let mut attempt = 0;
        let cancelled = loop {
            attempt += 1;
            let before = self
                .queue
                .get(tenant_id, request_id)
                .await?
                .ok_or(QueueError::NotFound)?;
            if before.status.is_final() {
                return Err(QueueError::Conflict {
                    status: before.status.as_str(),
                });
            }
            // Conditioned on the holder just read: a lease taken meanwhile
            // makes it read again, so the right processor is told.
            match self
                .queue
                .cancel(
                    tenant_id,
                    request_id,
                    before.lease_owner.as_deref(),
                    self.now_ms(),
                )
                .await
            {
                Ok(cancelled) => break cancelled,
                Err(QueueError::Conflict { .. }) if attempt < 5 => continue,
                Err(err) => return Err(err),
            }
        };
        count("cancelled");
        if let Some(owner) = cancelled.cancel_owner.as_deref()
            && let Some(session) = self.sessions.get(owner).map(|s| s.clone())
        {
            session.cancel(tenant_id, request_id).await;
            if let Err(err) = self.queue.cancel_told(tenant_id, request_id, owner).await {
                tracing::warn!(error = %err, "cannot record that the processor was told of a cancel");
            }
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

    /// Publishes the actions a processor here serves, each in its scope,
    /// so a request for them is accepted by whichever replica the client's
    /// frame reaches. A name whose scope already has another definition
    /// alive (from a processor on any replica) is not taken over: the
    /// error names the action and how the definitions differ.
    pub async fn publish_actions(&self, specs: &[(Scope, String, Value)]) -> Result<(), String> {
        let now = self.now_ms();
        let until = now + crate::clock::ms(PUBLISH_EVERY * 3);
        for (scope, name, spec) in specs {
            match self
                .queue
                .claim_action(scope.key(), name, spec, until, now)
                .await
            {
                Ok(None) => {}
                Ok(Some(existing)) => {
                    let difference = match (
                        crate::actions::AsyncAction::from_spec(&existing),
                        crate::actions::AsyncAction::from_spec(spec),
                    ) {
                        (Ok(there), Ok(here)) => there
                            .difference(&here)
                            .unwrap_or_else(|| "the definition".to_owned()),
                        _ => "the definition".to_owned(),
                    };
                    return Err(format!(
                        "action {name:?} is defined by another processor of this scope (on another replica); this processor's definition differs ({difference})"
                    ));
                }
                Err(err) => {
                    tracing::warn!(action = %name, error = %err, "cannot publish an action to the fleet");
                }
            }
        }
        Ok(())
    }

    /// Publishes them again every [`PUBLISH_EVERY`] while `session` stays
    /// connected.
    pub async fn keep_published(
        self: Arc<Self>,
        session: Arc<Session>,
        specs: Vec<(Scope, String, Value)>,
    ) {
        loop {
            tokio::time::sleep(PUBLISH_EVERY).await;
            if session.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Err(why) = self.publish_actions(&specs).await {
                tracing::warn!(session = %session.id, %why, "a published action was taken over");
            }
        }
    }

    /// Looks up an action this replica does not know among those other
    /// replicas' processors serve, for a client of `tenant` (its tenant's
    /// own, then the fleet's); takes it in here when found. Misses are
    /// remembered for a few seconds, so unknown names cost at most two
    /// store reads per name and tenant per [`MISS_TTL`].
    pub async fn discover(
        &self,
        actions: &crate::actions::Actions,
        name: &str,
        tenant: &str,
    ) -> bool {
        let now = self.now_ms();
        let miss_key = format!("{tenant}\u{1f}{name}");
        if let Ok(misses) = self.misses.lock()
            && misses.get(&miss_key).is_some_and(|until| *until > now)
        {
            return false;
        }
        let mut found = false;
        for scope in [Scope::Tenant(tenant.to_owned()), Scope::Fleet] {
            match self.queue.published_action(scope.key(), name, now).await {
                Ok(Some(spec)) => {
                    found = crate::actions::AsyncAction::from_spec(&spec)
                        .ok()
                        .is_some_and(|action| actions.adopt(&scope, action, now));
                    if found {
                        break;
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "cannot look up a published action");
                    return false;
                }
            }
        }
        if !found && let Ok(mut misses) = self.misses.lock() {
            if misses.len() > 10_000 {
                misses.clear();
            }
            misses.insert(miss_key, now + crate::clock::ms(MISS_TTL));
        }
        found
    }

    /// Tells this replica's processors of cancels received by other
    /// replicas: every [`CANCEL_POLL`], one store query per session that
    /// holds work. Runs until the task is dropped.
    pub async fn run_cancel_watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CANCEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for session in self.sessions() {
                if session.held().is_empty() {
                    continue;
                }
                let cancels = match self.queue.cancels_for(&session.id).await {
                    Ok(cancels) => cancels,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot look for cancels");
                        continue;
                    }
                };
                for (tenant_id, request_id) in cancels {
                    tracing::info!(session = %session.id, tenant_id, request_id, "cancel received by another replica");
                    session.cancel(&tenant_id, &request_id).await;
                    if let Err(err) = self
                        .queue
                        .cancel_told(&tenant_id, &request_id, &session.id)
                        .await
                    {
                        tracing::warn!(error = %err, "cannot record that the processor was told of a cancel");
                    }
                }
            }
        }
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
        if let Some(max) = self.queue.max_value_bytes() {
            let bytes = result.to_string().len();
            if bytes > max {
                // The request fails for good (a retry would make the same
                // result); the client and the processor are told why.
                let too_large = QueueError::TooLarge {
                    what: "result",
                    bytes,
                    max,
                };
                let failure = Failure {
                    code: "PROCESSING_FAILED".into(),
                    message: too_large.to_string(),
                };
                self.fail(session, tenant_id, request_id, failure, false)
                    .await?;
                return Err(JobError::Queue(too_large));
            }
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
                let age = Duration::from_millis(
                    u64::try_from(self.now_ms() - request.created_ms).unwrap_or(0),
                );
                let not_before =
                    tokio::time::Instant::now() + relay::ACK_HEAD_START.saturating_sub(age);
                tokio::spawn(relay::run(
                    rx,
                    self.registry.clone(),
                    self.fanout.clone(),
                    self.config.progress_interval,
                    not_before,
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
