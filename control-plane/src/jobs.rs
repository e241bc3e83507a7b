//! Long-running requests: accepting them, leasing them to processors,
//! retrying them, and relaying their progress to subscribed connections.
//!
//! The queue ([`crate::queue`]) holds the state; this module holds the
//! policy: exponential backoff with jitter between attempts, lease expiry,
//! the final `PROCESSING_FAILED`, and a per-request relay that delivers
//! frames in order and throttles progress to at most one frame per interval
//! (10/s by default) while always delivering the first, the last and 100%.
//! Time is read from tokio's clock, so tests drive leases, backoff and the
//! throttle with paused time.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use rand::Rng;
use serde_json::{Value, json};
use streamer_proto::{
    client::{self, ErrorCode},
    v1,
};
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use crate::{
    actions::Actions,
    delivery::{ManagementApi, Outcome},
    metrics::{OutcomeLabel, metrics},
    queue::{Failure, ProgressState, QueueError, Request, RequestQueue, Status},
    registry::Registry,
};

/// Retry and relay settings.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// First retry delay; doubled per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// At most one progress frame per request per this interval.
    pub progress_interval: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// How often an idle processor session looks for work anyway (backoffs
    /// ending, work queued through another replica).
    pub poll_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            progress_interval: Duration::from_millis(100),
            sweep_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// Wall-clock milliseconds that follow tokio's (pausable) clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_ms: i64,
}

impl Clock {
    /// A clock reading the current wall time now.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            base_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX / 2)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

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

/// Per-request progress throttle: the first frame and 100% go at once;
/// others at most once per interval, the latest waiting replaces older ones
/// and goes when the interval ends (or before the final frame).
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: Option<String>,
}

impl Throttle {
    /// A throttle letting one frame through per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            pending: None,
        }
    }

    /// Offers a frame at `now`; returns it when it may go now.
    pub fn offer(&mut self, now: Instant, frame: String, force: bool) -> Option<String> {
        let ready = force
            || self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if ready {
            self.pending = None;
            self.last_sent = Some(now);
            Some(frame)
        } else {
            self.pending = Some(frame);
            None
        }
    }

    /// When the waiting frame may go.
    pub fn due(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .and(self.last_sent.map(|t| t + self.interval))
    }

    /// The waiting frame, if its time has come.
    pub fn take_due(&mut self, now: Instant) -> Option<String> {
        if self.due().is_some_and(|due| due <= now) {
            self.last_sent = Some(now);
            return self.pending.take();
        }
        None
    }

    /// The waiting frame, whatever the time (before a final frame).
    pub fn flush(&mut self) -> Option<String> {
        self.pending.take()
    }
}

fn count(outcome: &'static str) {
    metrics()
        .requests
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// A `progress` frame.
pub fn progress_frame(request_id: &str, progress: &ProgressState) -> String {
    let mut frame = json!({
        "type": "progress",
        "request_id": request_id,
        "percentage": progress.percentage,
        "message": progress.message,
        "timestamp": client::timestamp_now(),
    });
    if let Some(details) = &progress.details {
        frame["details"] = details.clone();
    }
    frame.to_string()
}

/// A `complete` frame.
pub fn complete_frame(request_id: &str, result: &Value) -> String {
    json!({ "type": "complete", "request_id": request_id, "result": result, "timestamp": client::timestamp_now() })
        .to_string()
}

/// The final `error` frame of a failed or cancelled request; codes outside
/// the protocol's set become `PROCESSING_FAILED`.
pub fn failure_frame(request: &Request) -> String {
    let failure = request.error.clone().unwrap_or(Failure {
        code: "PROCESSING_FAILED".into(),
        message: "request failed".into(),
    });
    let code: ErrorCode =
        serde_json::from_value(json!(failure.code)).unwrap_or(ErrorCode::ProcessingFailed);
    let mut error = client::ClientError::new(code, failure.message);
    if request.status == Status::Cancelled {
        error = client::ClientError {
            details: Some(json!({"status": "cancelled"})),
            ..error
        };
    }
    client::error_frame(Some(&request.request_id), &error)
}

/// A request's state as clients and `subscribe` see it.
pub fn view(request: &Request) -> Value {
    let mut view = json!({
        "request_id": request.request_id,
        "action": request.action,
        "status": request.status.as_str(),
        "attempts": request.attempts,
    });
    if let Some(p) = &request.progress {
        view["progress"] =
            json!({ "percentage": p.percentage, "message": p.message, "details": p.details });
    }
    if let Some(result) = &request.result {
        view["result"] = result.clone();
    }
    if let Some(error) = &request.error {
        view["error"] = json!({ "code": error.code, "message": error.message });
    }
    view
}

enum Outgoing {
    Progress {
        frame: String,
        force: bool,
        subscribers: Vec<String>,
    },
    Final {
        frame: String,
        subscribers: Vec<String>,
    },
}

/// A connected processor.
pub struct Session {
    /// The lease owner id of this session.
    pub id: String,
    name: String,
    actions: Vec<String>,
    tenant: Option<String>,
    concurrency: usize,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    closed: AtomicBool,
    leases: Mutex<HashSet<(String, String)>>,
    changed: Notify,
    tx: mpsc::Sender<v1::WorkResponse>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn release(&self, tenant_id: &str, request_id: &str) {
        if let Ok(mut leases) = self.leases.lock()
            && leases.remove(&(tenant_id.to_owned(), request_id.to_owned()))
        {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        self.changed.notify_one();
    }

    fn holds(&self, tenant_id: &str, request_id: &str) -> bool {
        self.leases
            .lock()
            .is_ok_and(|l| l.contains(&(tenant_id.to_owned(), request_id.to_owned())))
    }

    /// Stops taking new leases; the ones held finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }
}

/// The long-running request machinery.
pub struct Jobs {
    queue: Arc<dyn RequestQueue>,
    registry: Arc<dyn Registry>,
    api: Arc<ManagementApi>,
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

/// Why a processor message was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("this processor does not hold that request")]
    NotHeld,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl Jobs {
    /// The machinery over `queue`.
    pub fn new(
        queue: Arc<dyn RequestQueue>,
        registry: Arc<dyn Registry>,
        api: Arc<ManagementApi>,
        actions: Arc<Actions>,
        config: JobsConfig,
    ) -> Self {
        Self {
            queue,
            registry,
            api,
            actions,
            config,
            clock: Clock::new(),
            work_available: Notify::new(),
            relays: DashMap::new(),
            sessions: DashMap::new(),
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Arc<dyn RequestQueue> {
        &self.queue
    }

    /// The action table (processors register into it).
    pub fn actions(&self) -> &Arc<Actions> {
        &self.actions
    }

    /// Milliseconds since the epoch on the jobs clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Connected processors.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
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
        self: &Arc<Self>,
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
            let message = v1::WorkResponse {
                message: Some(v1::work_response::Message::Cancelled(v1::Cancelled {
                    tenant_id: tenant_id.to_owned(),
                    request_id: request_id.to_owned(),
                })),
            };
            let _ = session.tx.send(message).await;
            session.release(tenant_id, request_id);
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

    /// Opens a processor session (after its Register message was accepted).
    pub fn open_session(
        &self,
        name: &str,
        actions: Vec<String>,
        tenant: Option<String>,
        concurrency: usize,
        tx: mpsc::Sender<v1::WorkResponse>,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            id: format!("proc-{}", uuid::Uuid::new_v4()),
            name: name.to_owned(),
            actions,
            tenant,
            concurrency: concurrency.max(1),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            leases: Mutex::new(HashSet::new()),
            changed: Notify::new(),
            tx,
        });
        self.sessions.insert(session.id.clone(), session.clone());
        metrics().processors.inc();
        tracing::info!(session = %session.id, name, actions = ?session.actions, "processor connected");
        session
    }

    /// Leases work to `session` while it has capacity, until it closes.
    pub async fn dispatch(self: Arc<Self>, session: Arc<Session>) {
        loop {
            if session.tx.is_closed() || session.closed.load(Ordering::SeqCst) {
                return;
            }
            while !session.draining.load(Ordering::SeqCst)
                && session.in_flight.load(Ordering::SeqCst) < session.concurrency
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
                if let Ok(mut leases) = session.leases.lock() {
                    leases.insert((request.tenant_id.clone(), request.request_id.clone()));
                }
                session.in_flight.fetch_add(1, Ordering::SeqCst);
                tracing::info!(session = %session.id, tenant_id = %request.tenant_id, request_id = %request.request_id, attempt = request.attempts, "leased");
                let lease = v1::WorkResponse {
                    message: Some(v1::work_response::Message::Lease(v1::Lease {
                        tenant_id: request.tenant_id.clone(),
                        request_id: request.request_id.clone(),
                        action: request.action.clone(),
                        payload_json: request.payload.to_string(),
                        user_id: request.user_id.clone(),
                        attempt: request.attempts,
                    })),
                };
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

    /// Progress from the processor holding the request.
    pub async fn progress(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        progress: ProgressState,
    ) -> Result<(), JobError> {
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

    /// Success from the processor holding the request.
    pub async fn complete(
        &self,
        session: &Session,
        tenant_id: &str,
        request_id: &str,
        result: Value,
    ) -> Result<(), JobError> {
        if !session.holds(tenant_id, request_id) {
            return Err(JobError::NotHeld);
        }
        let done = self
            .queue
            .complete(tenant_id, request_id, &session.id, result, self.now_ms())
            .await;
        session.release(tenant_id, request_id);
        let request = done?;
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

    /// Failure from the processor holding the request; `retryable` is its
    /// typed answer.
    pub async fn fail(
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
        let failure = if retryable { None } else { Some(failure) };
        self.end_attempt(session, &request, failure).await;
        Ok(())
    }

    /// Ends an attempt that did not succeed: queued again after a backoff
    /// while attempts remain and the failure is retryable (`None`), else
    /// failed for good, with one final frame to the subscribers.
    async fn end_attempt(&self, session: &Session, request: &Request, fatal: Option<Failure>) {
        session.release(&request.tenant_id, &request.request_id);
        self.retry_or_fail(request, Some(&session.id), fatal).await;
    }

    async fn retry_or_fail(&self, request: &Request, owner: Option<&str>, fatal: Option<Failure>) {
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
                    Some(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)),
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
            Err(QueueError::Conflict(_) | QueueError::NotFound) => {}
            Err(err) => tracing::warn!(error = %err, "cannot end an attempt"),
        }
    }

    /// A processor went away: everything it held goes back to the queue
    /// (or fails, if it was the last attempt).
    pub async fn close_session(&self, session: &Arc<Session>) {
        session.closed.store(true, Ordering::SeqCst);
        session.changed.notify_one();
        if self.sessions.remove(&session.id).is_some() {
            metrics().processors.dec();
        }
        let held: Vec<(String, String)> = session
            .leases
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        for (tenant_id, request_id) in held {
            if let Ok(Some(request)) = self.queue.get(&tenant_id, &request_id).await {
                self.end_attempt(session, &request, None).await;
            }
        }
        tracing::info!(session = %session.id, "processor disconnected");
    }

    /// Ends attempts whose lease ran out (a processor stalled or crashed
    /// without closing its stream).
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
        loop {
            tick.tick().await;
            self.sweep_expired_leases().await;
            if ticks.is_multiple_of(15) {
                self.sample_queue().await;
            }
            ticks += 1;
        }
    }

    fn relay(&self, request: &Request, out: Outgoing) {
        let key = (request.tenant_id.clone(), request.request_id.clone());
        let is_final = matches!(out, Outgoing::Final { .. });
        let tx = self
            .relays
            .entry(key.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_relay(
                    rx,
                    self.registry.clone(),
                    self.api.clone(),
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

/// Delivers one request's frames in order, throttling progress.
async fn run_relay(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    registry: Arc<dyn Registry>,
    api: Arc<ManagementApi>,
    interval: Duration,
) {
    let mut throttle = Throttle::new(interval);
    let mut subscribers: Vec<String> = Vec::new();
    loop {
        let due = throttle.due();
        let out = tokio::select! {
            out = rx.recv() => out,
            () = async { if let Some(due) = due { tokio::time::sleep_until(due).await } else { std::future::pending().await } } => {
                if let Some(frame) = throttle.take_due(Instant::now()) {
                    send(&registry, &api, &subscribers, &frame).await;
                }
                continue;
            }
        };
        match out {
            None => return,
            Some(Outgoing::Progress {
                frame,
                force,
                subscribers: subs,
            }) => {
                subscribers = subs;
                if let Some(frame) = throttle.offer(Instant::now(), frame, force) {
                    send(&registry, &api, &subscribers, &frame).await;
                }
            }
            Some(Outgoing::Final {
                frame,
                subscribers: subs,
            }) => {
                if let Some(last) = throttle.flush() {
                    send(&registry, &api, &subs, &last).await;
                }
                send(&registry, &api, &subs, &frame).await;
                return;
            }
        }
    }
}

async fn send(
    registry: &Arc<dyn Registry>,
    api: &ManagementApi,
    subscribers: &[String],
    frame: &str,
) {
    for subscriber in subscribers {
        let Ok(Some(connection)) = registry.get(subscriber).await else {
            continue;
        };
        if api
            .post(&connection.endpoint, subscriber, frame.as_bytes())
            .await
            == Outcome::Gone
        {
            let _ = registry.remove(subscriber).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttle_keeps_first_last_and_hundred() {
        let mut t = Throttle::new(Duration::from_millis(100));
        let start = Instant::now();
        assert_eq!(
            t.offer(start, "p1".into(), false).as_deref(),
            Some("p1"),
            "the first goes at once"
        );
        assert_eq!(
            t.offer(start + Duration::from_millis(10), "p2".into(), false),
            None
        );
        assert_eq!(
            t.offer(start + Duration::from_millis(20), "p3".into(), false),
            None,
            "p3 replaces p2"
        );
        assert_eq!(t.due(), Some(start + Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(t.take_due(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            t.take_due(Instant::now()).as_deref(),
            Some("p3"),
            "the latest waiting frame goes when due"
        );
        let now = Instant::now();
        assert_eq!(t.offer(now, "p4".into(), false), None);
        assert_eq!(
            t.offer(now, "100%".into(), true).as_deref(),
            Some("100%"),
            "100% is never held back"
        );
        assert_eq!(
            t.offer(now + Duration::from_millis(1), "p5".into(), false),
            None
        );
        assert_eq!(
            t.flush().as_deref(),
            Some("p5"),
            "the last is flushed before the final frame"
        );
        // At most one frame per interval otherwise: 1,000 offers in 1 s.
        let mut t = Throttle::new(Duration::from_millis(100));
        let mut sent = 0;
        for i in 0..1000u64 {
            let now = start + Duration::from_millis(i);
            sent += usize::from(t.take_due(now).is_some());
            sent += usize::from(t.offer(now, format!("p{i}"), false).is_some());
        }
        assert!((10..=11).contains(&sent), "{sent} frames in one second");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_jitter_and_a_ceiling() {
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

    async fn next_lease(rx: &mut mpsc::Receiver<v1::WorkResponse>) -> v1::Lease {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(v1::WorkResponse {
                message: Some(v1::work_response::Message::Lease(lease)),
            })) => lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_are_retried_after_a_backoff_then_fail() {
        use crate::{
            actions::AsyncAction, config::DeliveryConfig, queue::memory::MemoryQueue,
            registry::memory::MemoryRegistry,
        };
        let queue: Arc<dyn RequestQueue> = Arc::new(MemoryQueue::new());
        let api = Arc::new(ManagementApi::new(
            crate::delivery::local_sdk_config().await,
            DeliveryConfig {
                concurrency: 1,
                max_attempts: 1,
                base_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                call_timeout: Duration::from_millis(100),
            },
        ));
        let actions = Arc::new(Actions::new(&[]).expect("actions"));
        actions
            .register_async(
                AsyncAction::new("work", None, None, Some(1_000), Some(2)).expect("action"),
            )
            .expect("register");
        let config = JobsConfig {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(2),
            ..JobsConfig::default()
        };
        let jobs = Arc::new(Jobs::new(
            queue.clone(),
            Arc::new(MemoryRegistry::new()),
            api,
            actions,
            config,
        ));
        let request = Request::queued(
            "t",
            "r1",
            "work",
            json!({}),
            "u",
            "c1",
            2,
            1_000,
            jobs.now_ms(),
        );
        jobs.submit(request).await.expect("submit");
        tokio::time::advance(Duration::from_secs(4)).await;
        jobs.sample_queue().await;
        assert_eq!(metrics().requests_queued.get(), 1);
        let age = metrics().requests_queued_oldest_age.get();
        assert!((age - 4.0).abs() < 0.01, "age follows the clock: {age}");
        let (tx, mut rx) = mpsc::channel(8);
        let session = jobs.open_session("test", vec!["work".into()], None, 1, tx);
        tokio::spawn(jobs.clone().dispatch(session.clone()));

        assert_eq!(next_lease(&mut rx).await.attempt, 1);
        // The processor goes silent: no progress renews the lease.
        tokio::time::advance(Duration::from_millis(999)).await;
        jobs.sweep_expired_leases().await;
        assert_eq!(
            queue.get("t", "r1").await.expect("get").expect("r").status,
            Status::Running,
            "not expired yet"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        jobs.sweep_expired_leases().await;
        let requeued = queue.get("t", "r1").await.expect("get").expect("r");
        assert_eq!((requeued.status, requeued.attempts), (Status::Queued, 1));
        let wait = requeued.not_before_ms - jobs.now_ms();
        assert!(
            (1_000..=2_000).contains(&wait),
            "backoff with jitter: {wait} ms"
        );
        // Leased again only after the backoff.
        assert_eq!(next_lease(&mut rx).await.attempt, 2);
        assert!(jobs.now_ms() >= requeued.not_before_ms);
        tokio::time::advance(Duration::from_millis(1_001)).await;
        jobs.sweep_expired_leases().await;
        let failed = queue.get("t", "r1").await.expect("get").expect("r");
        assert_eq!(failed.status, Status::Failed);
        assert_eq!(
            failed.error.map(|e| e.code).as_deref(),
            Some("PROCESSING_FAILED")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let clock = Clock::new();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(clock.now_ms() - before, 31_000);
    }
}
