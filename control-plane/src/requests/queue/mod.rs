//! The durable request queue: long-running requests, their state
//! transitions and their subscribers. Transitions are conditional on the
//! current state (and on the lease owner), so a redelivered or late message
//! never acts twice; the retry policy lives in [`crate::requests`], not here.

use async_trait::async_trait;
use serde_json::Value;

pub mod conformance;
pub mod dynamo;
pub mod memory;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for a processor (or for its backoff to pass).
    Queued,
    /// Leased to a processor.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished without a result.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Waited longer than `STREAMER_QUEUE_WAIT_TTL_SECS` for a processor.
    Expired,
}

impl Status {
    /// The lowercase name used in frames and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    /// Parses [`Status::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            _ => return None,
        })
    }

    /// Whether nothing more will happen to the request.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Expired
        )
    }
}

/// The latest progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressState {
    /// 0..=100.
    pub percentage: u32,
    /// Step description.
    pub message: String,
    /// Structured detail.
    pub details: Option<Value>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Client error code.
    pub code: String,
    /// Client message.
    pub message: String,
}

/// A long-running request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Tenant; ids are unique per tenant.
    pub tenant_id: String,
    /// The client's request id.
    pub request_id: String,
    /// The async action.
    pub action: String,
    /// The validated payload.
    pub payload: Value,
    /// Who asked.
    pub user_id: String,
    /// State.
    pub status: Status,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// How long a lease lasts without progress.
    pub lease_timeout_ms: u64,
    /// The processor holding the lease.
    pub lease_owner: Option<String>,
    /// When the lease ends, ms since the epoch.
    pub lease_expires_ms: i64,
    /// Not to be leased before this (retry backoff), ms since the epoch.
    pub not_before_ms: i64,
    /// Latest progress.
    pub progress: Option<ProgressState>,
    /// Result, once completed.
    pub result: Option<Value>,
    /// Error, once failed or cancelled.
    pub error: Option<Failure>,
    /// Connections that get this request's frames.
    pub subscribers: Vec<String>,
    /// Accepted at, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
    /// The processor session that held the request when it was cancelled
    /// and has not been told yet (its replica polls for these).
    pub cancel_owner: Option<String>,
    /// Its action is its tenant's own definition: only processors bound
    /// to the tenant lease it.
    pub scoped: bool,
}

impl Request {
    /// A new queued request.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        tenant_id: &str,
        request_id: &str,
        action: &str,
        payload: Value,
        user_id: &str,
        connection_id: &str,
        max_attempts: u32,
        lease_timeout_ms: u64,
        now_ms: i64,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            request_id: request_id.to_owned(),
            action: action.to_owned(),
            payload,
            user_id: user_id.to_owned(),
            status: Status::Queued,
            attempts: 0,
            max_attempts,
            lease_timeout_ms,
            lease_owner: None,
            lease_expires_ms: 0,
            not_before_ms: 0,
            progress: None,
            result: None,
            error: None,
            subscribers: vec![connection_id.to_owned()],
            created_ms: now_ms,
            updated_ms: now_ms,
            cancel_owner: None,
            scoped: false,
        }
    }

    /// The same request, leased only by processors bound to its tenant
    /// when `scoped`.
    pub fn scoped(self, scoped: bool) -> Self {
        Self { scoped, ..self }
    }

    /// When it may be leased: its backoff's end, or its acceptance.
    pub fn ready_at_ms(&self) -> i64 {
        self.not_before_ms.max(self.created_ms)
    }
}

pub use crate::config::QueueLimits;

pub use crate::error::QueueError;

/// The request queue contract (embedded and DynamoDB backends).
#[async_trait]
pub trait RequestQueue: Send + Sync + 'static {
    /// The largest payload, and the largest result, the store keeps (JSON
    /// bytes); `None`: no limit of its own.
    fn max_value_bytes(&self) -> Option<usize>;

    /// Accepts a new request; `Duplicate` (with the existing one) when the
    /// tenant already used the id; `Full` when its user or its tenant has
    /// as many open (waiting or running) requests as the queue's
    /// [`QueueLimits`] allow.
    async fn create(&self, request: Request) -> Result<(), QueueError>;

    /// One request.
    async fn get(&self, tenant_id: &str, request_id: &str) -> Result<Option<Request>, QueueError>;

    /// A tenant's requests (of one status, if given), ordered by id, after
    /// `after`; the last id when more may follow.
    async fn list(
        &self,
        tenant_id: &str,
        status: Option<Status>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Request>, Option<String>), QueueError>;

    /// Leases the oldest queued request of `actions` whose backoff has
    /// passed, whatever other tenants have waiting: of `tenant`, for a
    /// processor bound to it; of any tenant, but never a tenant's own
    /// ([`Request::scoped`]) action, for an unbound one. Running, owned by
    /// `owner`, one more attempt, lease until `now + lease_timeout`.
    async fn lease(
        &self,
        actions: &[String],
        tenant: Option<&str>,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<Request>, QueueError>;

    /// Records progress from the lease owner and renews the lease.
    async fn progress(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        progress: ProgressState,
        now_ms: i64,
    ) -> Result<Request, QueueError>;

    /// Completes a running request (lease owner only).
    async fn complete(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
        result: Value,
        now_ms: i64,
    ) -> Result<Request, QueueError>;

    /// Ends an attempt of a running request (lease owner, or any owner when
    /// `owner` is `None`: an expired lease): queued again from `retry_at`,
    /// or failed for good with `failure` when `retry_at` is `None`.
    async fn fail(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: Option<&str>,
        failure: Failure,
        retry_at: Option<i64>,
        now_ms: i64,
    ) -> Result<Request, QueueError>;

    /// Cancels a queued or running request whose lease is held by
    /// `holder` (`None`: not leased); `Conflict` when it is final or held by
    /// someone else now. The holder is recorded as `cancel_owner` until
    /// [`RequestQueue::cancel_told`], so the replica serving it can tell the
    /// processor ([`RequestQueue::cancels_for`]).
    async fn cancel(
        &self,
        tenant_id: &str,
        request_id: &str,
        holder: Option<&str>,
        now_ms: i64,
    ) -> Result<Request, QueueError>;

    /// Publishes an async action a processor on this replica serves, in
    /// `scope` (a tenant id, or empty for every tenant), with its
    /// definition (its [`crate::actions::AsyncAction::spec`]) until
    /// `until_ms`, so every replica accepts requests for it: one
    /// conditional write, made only when no other definition of the name
    /// in the scope is published and alive at `now_ms`. `Some(definition)`
    /// is the other definition, which keeps the name (no last writer
    /// wins, across replicas too).
    async fn claim_action(
        &self,
        scope: &str,
        name: &str,
        spec: &Value,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError>;

    /// An action of `scope` some replica published and still serves at
    /// `now_ms`.
    async fn published_action(
        &self,
        scope: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<Value>, QueueError>;

    /// Ends the queued requests that became ready at or before
    /// `ready_before_ms` and were not leased since (they waited longer
    /// than `STREAMER_QUEUE_WAIT_TTL_SECS` for a processor): each becomes
    /// `Expired` (one conditional transition, so a lease meanwhile wins)
    /// and is returned, at most `limit`.
    async fn expire_waiting(
        &self,
        ready_before_ms: i64,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Request>, QueueError>;

    /// Cancelled requests whose holder `owner` has not been told yet:
    /// `(tenant_id, request_id)`.
    async fn cancels_for(&self, owner: &str) -> Result<Vec<(String, String)>, QueueError>;

    /// `owner` was told of the cancel.
    async fn cancel_told(
        &self,
        tenant_id: &str,
        request_id: &str,
        owner: &str,
    ) -> Result<(), QueueError>;

    /// Adds a connection to the request's subscribers.
    async fn subscribe(
        &self,
        tenant_id: &str,
        request_id: &str,
        connection_id: &str,
    ) -> Result<Request, QueueError>;

    /// Running requests whose lease ended before `now_ms`.
    async fn expired_leases(&self, now_ms: i64, limit: usize) -> Result<Vec<Request>, QueueError>;

    /// How many requests of `actions` are queued, and when the oldest of
    /// them was accepted (for the queue depth and age metrics).
    async fn queued_stats(&self, actions: &[String]) -> Result<(u64, Option<i64>), QueueError>;
}
