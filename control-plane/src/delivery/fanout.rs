//! The policy every send goes through, whatever its size:
//!
//! - **one budget**: a process-wide token bucket (`STREAMER_DELIVERY_MAX_RPS`
//!   with its burst), so broadcasts, request relays and presence together
//!   stay under the account's Management API quota;
//! - **adaptive concurrency**: calls in flight start at
//!   `STREAMER_DELIVERY_CONCURRENCY`, halve (at most every 100 ms) when the
//!   gateway answers 429, and grow back by one per window of successes
//!   (AIMD);
//! - **retries within a deadline**: a throttled call is retried with
//!   exponential backoff and full jitter until `STREAMER_DELIVERY_DEADLINE_MS`;
//!   a 5xx, timeout or refused connection at most `STREAMER_DELIVERY_MAX_ATTEMPTS`
//!   times; the report counts only what really failed;
//! - **fair turns**: every send takes its permits and tokens one at a time
//!   from FIFO queues, so a send to one connection waits behind at most one
//!   call of a 100,000-recipient broadcast, not behind all of them.
//!
//! Per-recipient work is kept out of the loop: endpoints are parsed once
//! per send, the frame is one shared buffer with its hash computed once,
//! and each call runs on its own task, so both cores share the signing and
//! HTTP work.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};

use streamer_proto::client::{ClientError, ErrorCode, Frame, chunk};

use super::{Attempt, BatchAttempt, Delivery, Endpoint, Outcome, PreparedFrame};
use crate::{
    config::DeliveryConfig,
    metrics::{OperationLabel, metrics},
    registry::Connection,
};

/// Calls in flight, adapted to 429s (additive increase, multiplicative
/// decrease).
#[derive(Debug)]
pub struct AdaptiveLimit {
    permits: Arc<Semaphore>,
    limit: AtomicUsize,
    max: usize,
    successes: AtomicUsize,
    last_cut: Mutex<Option<Instant>>,
}

/// The shortest time between two cuts: one burst of 429s is one signal.
const CUT_EVERY: Duration = Duration::from_millis(100);

impl AdaptiveLimit {
    /// A limit starting (and capped) at `max`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            limit: AtomicUsize::new(max),
            max,
            successes: AtomicUsize::new(0),
            last_cut: Mutex::new(None),
        }
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// A call succeeded: one more in flight per window of successes.
    pub fn on_success(&self) {
        let limit = self.limit.load(Ordering::Relaxed);
        let successes = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if successes >= limit && limit < self.max {
            self.successes.store(0, Ordering::Relaxed);
            if self
                .limit
                .compare_exchange(limit, limit + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.permits.add_permits(1);
                metrics()
                    .delivery_concurrency
                    .set(i64::try_from(limit + 1).unwrap_or(i64::MAX));
            }
        }
    }

    /// The gateway throttled a call: halve the calls in flight.
    pub fn on_throttle(&self) {
        let Ok(mut last) = self.last_cut.lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < CUT_EVERY) {
            return;
        }
        *last = Some(now);
        let limit = self.limit.load(Ordering::Relaxed);
        let cut = (limit / 2).max(1);
        if cut == limit {
            return;
        }
        self.limit.store(cut, Ordering::Relaxed);
        self.successes.store(0, Ordering::Relaxed);
        metrics()
            .delivery_concurrency
            .set(i64::try_from(cut).unwrap_or(i64::MAX));
        // Take the surplus out of circulation as calls finish.
        let permits = self.permits.clone();
        let surplus = u32::try_from(limit - cut).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(taken) = permits.acquire_many_owned(surplus).await {
                taken.forget();
            }
        });
    }
}

/// A requests-per-second budget with a burst, served first come first
/// served.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `rate` tokens a second, at most `burst` saved up (full at start).
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for one token. The lock is held while waiting, so tokens go
    /// to waiters in the order they asked.
    pub async fn take(&self) {
        let mut state = self.state.lock().await;
        let refill = |state: &mut (f64, Instant)| {
            let now = Instant::now();
            state.0 =
                (state.0 + now.duration_since(state.1).as_secs_f64() * self.rate).min(self.burst);
            state.1 = now;
        };
        refill(&mut state);
        if state.0 < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - state.0) / self.rate);
            tokio::time::sleep(wait).await;
            refill(&mut state);
        }
        state.0 -= 1.0;
    }
}

/// One recipient: where and who.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The Management API endpoint that reaches it.
    pub endpoint: Arc<str>,
    /// Its connection id.
    pub connection_id: Arc<str>,
    /// It joins `chunk` frames (else a frame too large gets it an error).
    pub chunks: bool,
}

impl Recipient {
    /// Where `connection` is reached.
    pub fn of(connection: &Connection) -> Self {
        Self {
            endpoint: connection.endpoint.clone(),
            connection_id: connection.connection_id.clone(),
            chunks: connection.chunks,
        }
    }
}

/// What a send did, recipient by recipient, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    /// Accepted by the gateway.
    pub delivered: u32,
    /// Connections the gateway no longer has (410).
    pub gone: Vec<Arc<str>>,
    /// Still throttled at the deadline.
    pub throttled: u32,
    /// Over the gateway's size limit.
    pub too_large: u32,
    /// Failed otherwise.
    pub failed: u32,
}

impl Sent {
    fn count(&mut self, outcome: Outcome, connection_id: &Arc<str>) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Gone => self.gone.push(connection_id.clone()),
            Outcome::Throttled => self.throttled += 1,
            Outcome::TooLarge => self.too_large += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    /// The single outcome of a one-recipient send.
    pub fn outcome(&self) -> Outcome {
        if self.delivered > 0 {
            Outcome::Delivered
        } else if !self.gone.is_empty() {
            Outcome::Gone
        } else if self.throttled > 0 {
            Outcome::Throttled
        } else if self.too_large > 0 {
            Outcome::TooLarge
        } else {
            Outcome::Failed
        }
    }
}

/// The delivery policy over a transport.
pub struct Fanout {
    delivery: Arc<dyn Delivery>,
    limit: AdaptiveLimit,
    budget: Option<TokenBucket>,
    config: DeliveryConfig,
    health: Arc<EndpointHealth>,
    in_flight: tokio_util::task::TaskTracker,
}

/// Consecutive unreachable calls (timeouts, refused connections, 5xx, with
/// no success in between) after which an endpoint's calls fail fast.
const TRIP_AFTER: u32 = 10;
/// How long they fail fast before one call is let through again.
const OPEN_FOR: Duration = Duration::from_secs(5);

/// Which endpoints are unreachable now: a circuit breaker per endpoint, so a
/// send to a hung gateway ends after one call timeout instead of every
/// recipient waiting out every attempt, and other endpoints are unaffected.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    circuits: dashmap::DashMap<Arc<str>, (u32, Option<Instant>)>,
}

impl EndpointHealth {
    /// Whether calls to `endpoint` may go out now.
    pub fn allows(&self, endpoint: &Arc<str>) -> bool {
        self.circuits
            .get(endpoint)
            .is_none_or(|c| c.1.is_none_or(|until| Instant::now() >= until))
    }

    /// Records what a call to `endpoint` gave.
    pub fn record(&self, endpoint: &Arc<str>, attempt: Attempt) {
        if attempt != Attempt::Retryable {
            if self.circuits.contains_key(endpoint) {
                self.circuits.remove(endpoint);
            }
            return;
        }
        metrics()
            .endpoint_failures
            .get_or_create(&crate::metrics::EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .inc();
        let mut circuit = self.circuits.entry(endpoint.clone()).or_insert((0, None));
        circuit.0 += 1;
        let open = circuit.1.is_some_and(|until| Instant::now() < until);
        if circuit.0 >= TRIP_AFTER && !open {
            circuit.1 = Some(Instant::now() + OPEN_FOR);
            tracing::warn!(endpoint = %endpoint, failures = circuit.0, "management endpoint unreachable; its calls fail fast for {OPEN_FOR:?}");
        }
    }
}

/// Each slot's recipient and outcome.
fn outcomes(slots: Vec<Slot>) -> Vec<(Recipient, Outcome)> {
    slots
        .into_iter()
        .map(|s| (s.recipient, s.outcome.unwrap_or(Outcome::Failed)))
        .collect()
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("limit", &self.limit.current())
            .finish_non_exhaustive()
    }
}

/// Per-recipient state of one send.
struct Slot {
    endpoint: u32,
    recipient: Recipient,
    attempts: u32,
    throttled_last: bool,
    outcome: Option<Outcome>,
}

impl Fanout {
    /// The policy of `config` over `delivery`.
    pub fn new(delivery: Arc<dyn Delivery>, config: DeliveryConfig) -> Self {
        let budget =
            (config.max_rps > 0).then(|| TokenBucket::new(config.max_rps, config.burst.max(1)));
        metrics()
            .delivery_concurrency
            .set(i64::try_from(config.concurrency).unwrap_or(i64::MAX));
        Self {
            delivery,
            limit: AdaptiveLimit::new(config.concurrency),
            budget,
            config,
            health: Arc::new(EndpointHealth::default()),
            in_flight: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Waits, at most `timeout`, until every send in flight (and any that
    /// starts meanwhile) has finished: a stopping process calls it before
    /// it closes what those sends deliver through. Whether they all did.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.in_flight.close();
        let drained = tokio::time::timeout(timeout, self.in_flight.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                sends = self.in_flight.len(),
                ?timeout,
                "sends still in flight after the drain timeout"
            );
        }
        drained
    }

    /// How long after `$connect` a 410 is not trusted.
    pub fn connecting_grace(&self) -> Duration {
        self.config.connecting_grace
    }

    /// The transport (for calls outside the fan-out: close, check).
    pub fn delivery(&self) -> &Arc<dyn Delivery> {
        &self.delivery
    }

    /// Calls in flight allowed now.
    pub fn concurrency(&self) -> usize {
        self.limit.current()
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// The largest frame posted whole.
    pub fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes
    }

    /// Sends one frame to one connection under the same policy.
    pub async fn send_one(
        self: &Arc<Self>,
        connection: &Connection,
        frame: &PreparedFrame,
    ) -> Sent {
        self.send(vec![Recipient::of(connection)], frame).await
    }

    /// Sends `frame` to every recipient and counts what happened. A frame
    /// over the gateway's message limit goes out as `chunk` frames, one
    /// piece to every recipient before the next (a recipient drops out at
    /// its first failed piece); a recipient that does not join chunks gets
    /// a `PAYLOAD_TOO_LARGE` error instead, and counts as too large.
    pub async fn send(self: &Arc<Self>, recipients: Vec<Recipient>, frame: &PreparedFrame) -> Sent {
        self.in_flight
            .track_future(self.send_tracked(recipients, frame))
            .await
    }

    async fn send_tracked(
        self: &Arc<Self>,
        recipients: Vec<Recipient>,
        frame: &PreparedFrame,
    ) -> Sent {
        let limit = self.config.max_frame_bytes;
        if frame.bytes.len() <= limit {
            return self.send_whole(recipients, frame).await.0;
        }
        let (joiners, refusers): (Vec<_>, Vec<_>) = recipients.into_iter().partition(|r| r.chunks);
        let text = String::from_utf8_lossy(&frame.bytes);
        let request_id = streamer_proto::client::peek_request_id(&text);
        let mut sent = Sent::default();
        if !refusers.is_empty() {
            let error = ClientError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a {}-byte frame is over the {limit}-byte message limit; connect without chunks=false to receive it as chunks",
                    frame.bytes.len()
                ),
            );
            let notice = PreparedFrame::new(Frame::error(request_id.as_deref(), &error).to_json());
            let count = u32::try_from(refusers.len()).unwrap_or(u32::MAX);
            let notified = self.send_whole(refusers, &notice).await.0;
            sent.too_large += count - u32::try_from(notified.gone.len()).unwrap_or(0);
            sent.gone.extend(notified.gone);
        }
        let chunk_id = uuid::Uuid::new_v4().simple().to_string();
        let Some(pieces) = chunk::split(&text, limit, &chunk_id, |c| Frame::chunk(c).to_json())
        else {
            sent.too_large += u32::try_from(joiners.len()).unwrap_or(u32::MAX);
            return sent;
        };
        metrics().chunked_frames.inc();
        let mut alive = joiners;
        for piece in pieces {
            if alive.is_empty() {
                break;
            }
            let (_, outcomes) = self.send_whole(alive, &PreparedFrame::new(piece)).await;
            alive = Vec::with_capacity(outcomes.len());
            for (recipient, outcome) in outcomes {
                if outcome == Outcome::Delivered {
                    alive.push(recipient);
                } else {
                    sent.count(outcome, &recipient.connection_id);
                }
            }
        }
        sent.delivered += u32::try_from(alive.len()).unwrap_or(u32::MAX);
        sent
    }

    /// Posts `frame` as it is; the counts, and each recipient's outcome.
    async fn send_whole(
        self: &Arc<Self>,
        recipients: Vec<Recipient>,
        frame: &PreparedFrame,
    ) -> (Sent, Vec<(Recipient, Outcome)>) {
        let deadline = Instant::now() + self.config.deadline;
        let mut sent = Sent::default();
        // Endpoints parsed once per send; recipients mapped to (endpoint, id).
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        let mut index: HashMap<Arc<str>, u32> = HashMap::new();
        let mut slots: Vec<Slot> = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let endpoint = match index.get(&recipient.endpoint) {
                Some(i) => *i,
                None => match Endpoint::parse(&recipient.endpoint) {
                    Some(parsed) => {
                        let i = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
                        endpoints.push(Arc::new(parsed));
                        index.insert(recipient.endpoint.clone(), i);
                        i
                    }
                    None => {
                        tracing::warn!(endpoint = %recipient.endpoint, "unusable management endpoint");
                        sent.failed += 1;
                        continue;
                    }
                },
            };
            slots.push(Slot {
                endpoint,
                recipient,
                attempts: 0,
                throttled_last: false,
                outcome: None,
            });
        }
        // Where the endpoint is Streamer's own gateway, one call carries
        // many recipients: slots sorted by endpoint so a call's recipients
        // are neighbours.
        let mut batch_limits = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            batch_limits.push(self.delivery.batch_limit(endpoint).await);
        }
        if batch_limits.iter().any(|&limit| limit > 1) && endpoints.len() > 1 {
            slots.sort_by_key(|slot| slot.endpoint);
        }
        // One statement each: the family's read guard must be gone before
        // the next lookup may need its write lock.
        let per_post = metrics()
            .management_api_duration
            .get_or_create(&OperationLabel {
                operation: "post_to_connection",
            })
            .clone();
        let per_batch = metrics()
            .management_api_duration
            .get_or_create(&OperationLabel {
                operation: "post_batch",
            })
            .clone();
        let histograms = [per_post, per_batch];
        let histogram = &histograms;
        let frame = Arc::new(frame.clone());
        let mut in_flight: JoinSet<(Vec<(usize, Attempt)>, Duration)> = JoinSet::new();
        let mut retries: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let mut next_fresh = 0usize;
        loop {
            while let Some(done) = in_flight.try_join_next() {
                self.settle(
                    done,
                    &mut slots,
                    &mut retries,
                    &mut sent,
                    deadline,
                    histogram,
                );
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let due = retries.peek().is_some_and(|Reverse((at, _))| *at <= now);
            if !due && next_fresh >= slots.len() {
                if in_flight.is_empty() && retries.is_empty() {
                    return (sent, outcomes(slots));
                }
                let wake = retries
                    .peek()
                    .map_or(deadline, |Reverse((at, _))| *at)
                    .min(deadline);
                tokio::select! {
                    Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                        self.settle(done, &mut slots, &mut retries, &mut sent, deadline, histogram);
                    }
                    () = tokio::time::sleep_until(wake) => {}
                }
                continue;
            }
            let Ok(Some(permit)) = tokio::time::timeout_at(deadline, self.limit.acquire()).await
            else {
                continue;
            };
            if let Some(budget) = &self.budget
                && tokio::time::timeout_at(deadline, budget.take())
                    .await
                    .is_err()
            {
                continue;
            }
            let from_retries = retries
                .peek()
                .is_some_and(|Reverse((at, _))| *at <= Instant::now())
                || next_fresh >= slots.len();
            let slot = if from_retries {
                retries.pop().map(|Reverse((_, i))| i)
            } else {
                next_fresh += 1;
                Some(next_fresh - 1)
            };
            let Some(first) = slot else { continue };
            let endpoint_index = slots[first].endpoint;
            let limit = batch_limits[endpoint_index as usize];
            // The call's recipients: this one, and while the endpoint takes
            // batches, its neighbours of the same endpoint (fresh ones, or
            // retries already due).
            let mut call = vec![first];
            if limit > 1 {
                if from_retries {
                    let now = Instant::now();
                    let mut other = Vec::new();
                    while call.len() < limit
                        && let Some(Reverse((at, i))) = retries.peek().copied()
                        && at <= now
                    {
                        retries.pop();
                        if slots[i].endpoint == endpoint_index {
                            call.push(i);
                        } else {
                            other.push(Reverse((at, i)));
                        }
                    }
                    retries.extend(other);
                } else {
                    while call.len() < limit
                        && next_fresh < slots.len()
                        && slots[next_fresh].endpoint == endpoint_index
                    {
                        call.push(next_fresh);
                        next_fresh += 1;
                    }
                }
            }
            for &i in &call {
                slots[i].attempts += 1;
            }
            let delivery = self.delivery.clone();
            let endpoint = endpoints[endpoint_index as usize].clone();
            let ids: Vec<Arc<str>> = call
                .iter()
                .map(|&i| slots[i].recipient.connection_id.clone())
                .collect();
            let frame = frame.clone();
            let call_timeout = self.config.call_timeout;
            let health = self.health.clone();
            in_flight.spawn(async move {
                let started = Instant::now();
                let whole = |attempt: Attempt| call.iter().map(|&i| (i, attempt)).collect();
                if !health.allows(&endpoint.raw) {
                    drop(permit);
                    return (whole(Attempt::Done(Outcome::Failed)), started.elapsed());
                }
                let attempts = if let [id] = ids.as_slice() {
                    let attempt =
                        tokio::time::timeout(call_timeout, delivery.post(&endpoint, id, &frame))
                            .await
                            .unwrap_or(Attempt::Retryable);
                    health.record(&endpoint.raw, attempt);
                    vec![(call[0], attempt)]
                } else {
                    let answer = tokio::time::timeout(
                        call_timeout,
                        delivery.post_batch(&endpoint, &ids, &frame),
                    )
                    .await
                    .unwrap_or(BatchAttempt::Whole(Attempt::Retryable));
                    match answer {
                        BatchAttempt::Answered { gone } => {
                            health.record(&endpoint.raw, Attempt::Done(Outcome::Delivered));
                            let gone: std::collections::HashSet<&str> =
                                gone.iter().map(String::as_str).collect();
                            call.iter()
                                .zip(&ids)
                                .map(|(&i, id)| {
                                    let outcome = if gone.contains(&**id) {
                                        Outcome::Gone
                                    } else {
                                        Outcome::Delivered
                                    };
                                    (i, Attempt::Done(outcome))
                                })
                                .collect()
                        }
                        BatchAttempt::Whole(attempt) => {
                            health.record(&endpoint.raw, attempt);
                            whole(attempt)
                        }
                    }
                };
                drop(permit);
                (attempts, started.elapsed())
            });
        }
        // The deadline: what is still in flight or waiting counts as what it
        // last was.
        in_flight.abort_all();
        while let Some(done) = in_flight.join_next().await {
            if let Ok(done) = done {
                self.settle(
                    Ok(done),
                    &mut slots,
                    &mut retries,
                    &mut sent,
                    deadline,
                    histogram,
                );
            }
        }
        for slot in slots.iter_mut().filter(|s| s.outcome.is_none()) {
            let outcome = if slot.throttled_last {
                Outcome::Throttled
            } else {
                Outcome::Failed
            };
            slot.outcome = Some(outcome);
            sent.count(outcome, &slot.recipient.connection_id);
        }
        tracing::warn!(
            recipients = slots.len(),
            failed = sent.failed,
            throttled = sent.throttled,
            "delivery deadline reached"
        );
        (sent, outcomes(slots))
    }

    /// Settles one call: each of its recipients' attempts. The adaptive
    /// limit hears once per call (it counts calls in flight, whatever
    /// their size).
    fn settle(
        &self,
        done: Result<(Vec<(usize, Attempt)>, Duration), tokio::task::JoinError>,
        slots: &mut [Slot],
        retries: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        sent: &mut Sent,
        deadline: Instant,
        histograms: &[crate::metrics::AtomicHistogram; 2],
    ) {
        let Ok((attempts, took)) = done else {
            return;
        };
        histograms[usize::from(attempts.len() > 1)].observe(took);
        if attempts
            .iter()
            .any(|(_, a)| matches!(a, Attempt::Done(Outcome::Delivered | Outcome::Gone)))
        {
            self.limit.on_success();
        }
        if attempts.iter().any(|(_, a)| *a == Attempt::Throttled) {
            self.limit.on_throttle();
        }
        // One backoff per call: the recipients of a refused batch come due
        // together, so their retry goes out as one batch again (a backoff
        // each would spread them into single calls under exactly the load
        // batching is for).
        let tries = attempts
            .iter()
            .map(|&(i, _)| slots[i].attempts)
            .max()
            .unwrap_or(1);
        let retry_at = Instant::now() + self.backoff(tries);
        for (i, attempt) in attempts {
            self.settle_one(i, attempt, retry_at, slots, retries, sent, deadline);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn settle_one(
        &self,
        i: usize,
        attempt: Attempt,
        at: Instant,
        slots: &mut [Slot],
        retries: &mut BinaryHeap<Reverse<(Instant, usize)>>,
        sent: &mut Sent,
        deadline: Instant,
    ) {
        let slot = &mut slots[i];
        match attempt {
            Attempt::Done(outcome) => {
                slot.outcome = Some(outcome);
                sent.count(outcome, &slot.recipient.connection_id);
            }
            Attempt::Throttled => {
                slot.throttled_last = true;
                if at < deadline {
                    retries.push(Reverse((at, i)));
                } else {
                    slot.outcome = Some(Outcome::Throttled);
                    sent.throttled += 1;
                }
            }
            Attempt::Retryable => {
                slot.throttled_last = false;
                if slot.attempts < self.config.max_attempts && at < deadline {
                    retries.push(Reverse((at, i)));
                } else {
                    slot.outcome = Some(Outcome::Failed);
                    sent.failed += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::fake::FakeGateway;

    const ENDPOINT: &str = "http://127.0.0.1:9/local";

    fn recipients(ids: impl IntoIterator<Item = String>) -> Vec<Recipient> {
        ids.into_iter()
            .map(|id| Recipient {
                endpoint: Arc::from(ENDPOINT),
                connection_id: Arc::from(id.as_str()),
                chunks: true,
            })
            .collect()
    }

    /// 250 open connections and 5 the gateway does not have.
    fn gateway(batch: usize) -> (Arc<FakeGateway>, Vec<Recipient>) {
        let gateway = Arc::new(FakeGateway::new());
        gateway.offer_batches(batch);
        let mut ids = Vec::new();
        for i in 0..250 {
            gateway.open(&format!("c{i}"));
            ids.push(format!("c{i}"));
        }
        ids.extend((0..5).map(|i| format!("gone{i}")));
        (gateway, recipients(ids))
    }

    #[tokio::test]
    async fn a_gateway_taking_batches_gets_one_call_per_batch_and_the_report_stays_exact() {
        let (gateway, to) = gateway(100);
        let fanout = Arc::new(Fanout::new(gateway.clone(), DeliveryConfig::default()));
        let sent = fanout.send(to, &PreparedFrame::new("hello")).await;
        assert_eq!((sent.delivered, sent.gone.len()), (250, 5));
        let mut batches = gateway.batches();
        batches.sort_unstable();
        assert_eq!(
            batches,
            vec![55, 100, 100],
            "three calls for 255 recipients"
        );
        assert_eq!(gateway.calls(), 3);
        for i in 0..250 {
            assert_eq!(
                gateway.received(&format!("c{i}")),
                vec!["hello"],
                "c{i} once"
            );
        }
    }

    #[tokio::test]
    async fn without_a_batch_call_each_recipient_is_one_post() {
        let (gateway, to) = gateway(0);
        let fanout = Arc::new(Fanout::new(gateway.clone(), DeliveryConfig::default()));
        let sent = fanout.send(to, &PreparedFrame::new("hello")).await;
        assert_eq!((sent.delivered, sent.gone.len()), (250, 5));
        assert!(gateway.batches().is_empty());
        assert_eq!(gateway.calls(), 255);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_batch_is_retried_until_taken_and_the_limit_backs_off() {
        let (gateway, to) = gateway(100);
        let config = DeliveryConfig {
            concurrency: 8,
            ..DeliveryConfig::default()
        };
        let fanout = Arc::new(Fanout::new(gateway.clone(), config));
        gateway.answer_all_with(Some(Attempt::Throttled));
        let sending = tokio::spawn({
            let fanout = fanout.clone();
            async move { fanout.send(to, &PreparedFrame::new("hello")).await }
        });
        while gateway.calls() < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            fanout.concurrency() < 8,
            "a throttled batch halves the calls in flight"
        );
        gateway.answer_all_with(None);
        let sent = sending.await.expect("send");
        assert_eq!(
            (sent.delivered, sent.gone.len(), sent.throttled),
            (250, 5, 0)
        );
        for i in 0..250 {
            assert_eq!(gateway.received(&format!("c{i}")).len(), 1, "c{i} once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_batchs_recipients_are_retried_as_a_batch_not_one_by_one() {
        let (gateway, to) = gateway(100);
        let fanout = Arc::new(Fanout::new(gateway.clone(), DeliveryConfig::default()));
        gateway.answer_all_with(Some(Attempt::Throttled));
        let sending = tokio::spawn({
            let fanout = fanout.clone();
            async move { fanout.send(to, &PreparedFrame::new("hello")).await }
        });
        // The three batches are refused once each, then taken.
        while gateway.calls() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gateway.answer_all_with(None);
        let sent = sending.await.expect("send");
        assert_eq!((sent.delivered, sent.gone.len()), (250, 5));
        let batches = gateway.batches();
        assert_eq!(
            gateway.calls(),
            batches.len(),
            "no recipient retried alone: {batches:?}"
        );
        assert!(
            batches.len() <= 9,
            "255 recipients in at most three retries of three batches: {batches:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_past_the_deadline_counts_throttled() {
        let (gateway, to) = gateway(100);
        let config = DeliveryConfig {
            deadline: Duration::from_secs(2),
            ..DeliveryConfig::default()
        };
        let fanout = Arc::new(Fanout::new(gateway.clone(), config));
        gateway.answer_all_with(Some(Attempt::Throttled));
        let sent = fanout.send(to, &PreparedFrame::new("hello")).await;
        assert_eq!((sent.delivered, sent.throttled), (0, 255));
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_goes_as_chunks_each_piece_batched() {
        let (gateway, to) = gateway(100);
        let config = DeliveryConfig {
            max_frame_bytes: 1000,
            ..DeliveryConfig::default()
        };
        let fanout = Arc::new(Fanout::new(gateway.clone(), config));
        let big = serde_json::json!({"type": "message", "data": "x".repeat(3000)}).to_string();
        let sent = fanout.send(to, &PreparedFrame::new(big)).await;
        assert_eq!((sent.delivered, sent.gone.len()), (250, 5));
        let pieces = gateway.received("c0").len();
        assert!(pieces >= 3, "cut into pieces: {pieces}");
        // Each piece: 255 recipients in 3 calls; the gone ones drop out
        // after the first piece (250 in 3 calls).
        assert_eq!(gateway.calls(), 3 + 3 * (pieces - 1));
        for i in 0..250 {
            assert_eq!(gateway.received(&format!("c{i}")).len(), pieces);
        }
    }
}
