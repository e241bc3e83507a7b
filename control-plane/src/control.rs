//! The control plane's domain logic: connect, disconnect and route a client
//! frame. Plain Rust; the gRPC layer only decodes, calls and maps errors.

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::Engine;
use serde_json::{Value, json};
use streamer_proto::{
    client::{self, ClientError, Envelope, ErrorCode},
    ids,
};

use crate::{
    actions::{Actions, AsyncAction, Builtin, Resolved},
    config::LimitsConfig,
    jobs::Jobs,
    jwt::{self, AuthError, JwtVerifier, grants},
    metrics::{LimitLabel, MessageLabels, OutcomeLabel, ReasonLabel, metrics},
    presence::{Event, Presence},
    queue::QueueError,
    ratelimit::RateLimits,
    registry::{Connection, Registry, RegistryError, now_ms},
    shared_limit::{SharedCheck, SharedMessageLimiter},
};

/// Message metric label for frames refused before their action was known.
const INVALID_ACTION_LABEL: &str = "_invalid";
/// Message metric label for actions that are not declared.
const UNKNOWN_ACTION_LABEL: &str = "_unknown";

/// A routed frame: the reply and how to count it.
struct Routed {
    reply: String,
    action: String,
    outcome: &'static str,
}

/// The `request_id` of a `cancel` / `subscribe` payload.
fn request_id_of(payload: &Value) -> Result<&str, ClientError> {
    match payload.get("request_id").and_then(Value::as_str) {
        Some(id) if ids::valid_request_id(id) => Ok(id),
        Some(_) => Err(ClientError::validation(
            "payload.request_id must be 1 to 128 characters",
        )),
        None => Err(ClientError::validation("payload.request_id is required")),
    }
}

/// A queue failure as the client sees it.
fn queue_error(err: QueueError) -> ClientError {
    match err {
        QueueError::NotFound => ClientError::new(ErrorCode::NotFound, "no such request"),
        QueueError::Duplicate(existing) => ClientError {
            details: Some(json!({ "status": existing.status.as_str() })),
            ..ClientError::new(ErrorCode::DuplicateRequest, "a request with this id exists")
        },
        QueueError::Conflict(current) => ClientError {
            details: Some(json!({ "status": current.status.as_str() })),
            ..ClientError::validation("the request is not in a state that allows this")
        },
        QueueError::Unavailable(detail) => {
            tracing::warn!(error = %detail, "request queue unavailable");
            unavailable()
        }
    }
}

/// The `group` of a `join` / `leave` payload.
fn group_of(payload: &Value) -> Result<&str, ClientError> {
    match payload.get("group").and_then(Value::as_str) {
        Some(group) if ids::valid_group(group) => Ok(group),
        Some(_) => Err(ClientError::validation(
            "payload.group must be 1 to 128 characters of letters, digits, '.', ':', '_' or '-'",
        )),
        None => Err(ClientError::validation("payload.group is required")),
    }
}

/// A registry failure during `join` / `leave`, as the client sees it.
fn group_error(err: RegistryError) -> ClientError {
    match err {
        RegistryError::GroupLimit { limit } => {
            ClientError::validation(format!("a connection may be in at most {limit} groups"))
        }
        RegistryError::NotFound => ClientError::new(
            ErrorCode::Unauthorized,
            "connection is not registered; reconnect",
        ),
        other => {
            tracing::warn!(error = %other, "registry unavailable during a group change");
            unavailable()
        }
    }
}

/// The metric label of a token refusal.
fn auth_reason(reason: AuthError) -> &'static str {
    match reason {
        AuthError::Missing => "missing",
        AuthError::TooLarge => "too_large",
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::BadSignature => "bad_signature",
        AuthError::Algorithm => "algorithm",
        AuthError::IssuerOrAudience => "issuer_or_audience",
        AuthError::Claims => "claims",
        AuthError::Malformed => "malformed",
    }
}

/// The metric label of an error code.
fn outcome_of(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::ValidationError => "validation_error",
        ErrorCode::InvalidAction => "invalid_action",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::DuplicateRequest => "duplicate_request",
        ErrorCode::PayloadTooLarge => "payload_too_large",
        ErrorCode::InternalError => "internal_error",
        ErrorCode::Timeout => "timeout",
        ErrorCode::ServiceUnavailable => "service_unavailable",
        ErrorCode::ProcessingFailed => "processing_failed",
    }
}

/// Longest User-Agent kept in the registry.
const MAX_USER_AGENT: usize = 256;
/// What a client is told to wait when its tenant is at its connection quota.
const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A `$connect` as the edge reports it.
#[derive(Debug, Clone, Default)]
pub struct ConnectInput {
    /// The gateway's connection id.
    pub connection_id: String,
    /// The Management API endpoint for the connection.
    pub endpoint: String,
    /// Query string parameters.
    pub query: HashMap<String, String>,
    /// Headers, names lowercased.
    pub headers: HashMap<String, String>,
    /// Client source IP.
    pub source_ip: String,
    /// Client User-Agent.
    pub user_agent: String,
}

/// The answer to a `$connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectDecision {
    /// HTTP status: 200 accepted, otherwise the rejection status.
    pub status: u16,
    /// JSON body of a rejection.
    pub body: String,
    /// Extra headers of a rejection.
    pub headers: HashMap<String, String>,
    /// What happened, for the connects metric.
    pub outcome: &'static str,
}

impl ConnectDecision {
    /// Whether the connection was accepted.
    pub fn accepted(&self) -> bool {
        self.status == 200
    }

    fn accept(outcome: &'static str) -> Self {
        Self {
            outcome,
            status: 200,
            body: String::new(),
            headers: HashMap::new(),
        }
    }

    fn reject(outcome: &'static str, status: u16, error: &ClientError) -> Self {
        let mut headers = HashMap::new();
        if let Some(wait) = error.retry_after {
            headers.insert("retry-after".to_owned(), wait.as_secs().max(1).to_string());
        }
        Self {
            outcome,
            status,
            body: json!({ "error": error.to_json() }).to_string(),
            headers,
        }
    }
}

/// The connect / route logic with everything it needs.
pub struct ControlPlane {
    registry: Arc<dyn Registry>,
    verifier: JwtVerifier,
    limits: RateLimits,
    limits_config: LimitsConfig,
    actions: Arc<Actions>,
    jobs: Arc<Jobs>,
    shared_limiter: Option<Arc<SharedMessageLimiter>>,
    touch_interval_ms: i64,
    presence: Arc<Presence>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

fn unavailable() -> ClientError {
    ClientError::new(
        ErrorCode::ServiceUnavailable,
        "service temporarily unavailable, retry later",
    )
}

/// What the control plane is assembled from.
#[allow(missing_debug_implementations)]
pub struct Parts {
    /// The connection registry.
    pub registry: Arc<dyn Registry>,
    /// Client token verification.
    pub verifier: JwtVerifier,
    /// Message size and rate limits.
    pub limits: LimitsConfig,
    /// The action table.
    pub actions: Arc<Actions>,
    /// Long-running requests.
    pub jobs: Arc<Jobs>,
    /// The message limit shared through DynamoDB, if configured.
    pub shared_limiter: Option<Arc<SharedMessageLimiter>>,
    /// Refresh `last_seen` at most this often.
    pub touch_interval: Duration,
    /// Group presence.
    pub presence: Arc<Presence>,
}

impl ControlPlane {
    /// Assembles the control plane.
    pub fn new(parts: Parts) -> Self {
        Self {
            registry: parts.registry,
            verifier: parts.verifier,
            limits: RateLimits::new(&parts.limits),
            limits_config: parts.limits,
            actions: parts.actions,
            jobs: parts.jobs,
            shared_limiter: parts.shared_limiter,
            touch_interval_ms: i64::try_from(parts.touch_interval.as_millis()).unwrap_or(i64::MAX),
            presence: parts.presence,
        }
    }

    /// The per-connection message limit: shared through DynamoDB when
    /// configured (falling back to this replica's limiter if the store
    /// cannot answer), else this replica's.
    async fn check_message(&self, connection_id: &Arc<str>) -> Result<(), Duration> {
        if let Some(shared) = &self.shared_limiter {
            match shared.check(connection_id).await {
                Ok(SharedCheck::Allowed) => return Ok(()),
                Ok(SharedCheck::Limited(wait)) => return Err(wait),
                Err(err) => {
                    tracing::warn!(error = %err, "shared rate limit unavailable; using the local limit")
                }
            }
        }
        self.limits.check_message(connection_id)
    }

    /// Refreshes `last_seen` at most once per touch interval, off the reply
    /// path.
    fn touch_if_due(&self, connection: &Connection) {
        let now = now_ms();
        if now - connection.last_seen_ms < self.touch_interval_ms {
            return;
        }
        let registry = self.registry.clone();
        let id = connection.connection_id.clone();
        tokio::spawn(async move {
            if let Err(err) = registry.touch(&id, now).await {
                tracing::warn!(connection_id = %id, error = %err, "cannot refresh last_seen");
            }
        });
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Queues a request for an async action and acknowledges it.
    async fn queue_request(
        &self,
        connection: &Connection,
        envelope: &Envelope,
        action: &AsyncAction,
    ) -> Result<String, ClientError> {
        if let Some(permission) = &action.permission
            && !grants(&connection.permissions, permission)
        {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("action {:?} needs permission {permission:?}", action.name),
            ));
        }
        action.validate(&envelope.payload)?;
        let request = crate::queue::Request::queued(
            &connection.tenant_id,
            &envelope.request_id,
            &action.name,
            envelope.payload.clone(),
            &connection.user_id,
            &connection.connection_id,
            action.max_attempts,
            action.lease_timeout_ms,
            self.jobs.now_ms(),
        );
        self.jobs.submit(request).await.map_err(queue_error)?;
        tracing::info!(request_id = %envelope.request_id, action = %action.name, "request queued");
        Ok(json!({
            "type": "acknowledgment",
            "request_id": envelope.request_id,
            "status": "queued",
            "message": "request accepted; progress and the result follow",
        })
        .to_string())
    }

    /// A request of the caller's tenant and user (else NOT_FOUND: another
    /// user's request ids are not revealed).
    async fn own_request(
        &self,
        connection: &Connection,
        request_id: &str,
    ) -> Result<crate::queue::Request, ClientError> {
        match self
            .jobs
            .queue()
            .get(&connection.tenant_id, request_id)
            .await
            .map_err(queue_error)?
        {
            Some(request) if request.user_id == *connection.user_id => Ok(request),
            _ => Err(ClientError::new(ErrorCode::NotFound, "no such request")),
        }
    }

    /// The long-running request machinery.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Presence announcements (and the group settings).
    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    /// The rate limiters (for periodic housekeeping).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.limits
    }

    /// `$connect`: connect rate limit per IP, token verification, tenant
    /// quota, conditional registration.
    pub async fn connect(&self, input: ConnectInput) -> ConnectDecision {
        let decision = self.decide_connect(input).await;
        metrics()
            .connects
            .get_or_create(&OutcomeLabel {
                outcome: decision.outcome,
            })
            .inc();
        decision
    }

    async fn decide_connect(&self, input: ConnectInput) -> ConnectDecision {
        if !ids::valid_connection_id(&input.connection_id) || input.endpoint.is_empty() {
            tracing::warn!(connection_id = %input.connection_id, "connect event without a usable connection id or endpoint");
            return ConnectDecision::reject(
                "invalid",
                400,
                &ClientError::validation("bad connect request"),
            );
        }
        if let Err(wait) = self.limits.check_connect(&input.source_ip) {
            tracing::info!(source_ip = %input.source_ip, "connect rate limited");
            metrics()
                .rate_limited
                .get_or_create(&LimitLabel { limit: "connect" })
                .inc();
            return ConnectDecision::reject("rate_limited", 429, &ClientError::rate_limited(wait));
        }
        let Some(token) = jwt::token_from_request(&input.query, &input.headers) else {
            tracing::info!(connection_id = %input.connection_id, reason = "no token", "connect refused");
            metrics()
                .auth_failures
                .get_or_create(&ReasonLabel { reason: "missing" })
                .inc();
            return ConnectDecision::reject(
                "unauthorized",
                401,
                &ClientError::new(ErrorCode::Unauthorized, "missing or invalid token"),
            );
        };
        let identity = match self.verifier.verify(token) {
            Ok(identity) => identity,
            Err(reason) => {
                tracing::info!(connection_id = %input.connection_id, %reason, "connect refused");
                metrics()
                    .auth_failures
                    .get_or_create(&ReasonLabel {
                        reason: auth_reason(reason),
                    })
                    .inc();
                return ConnectDecision::reject(
                    "unauthorized",
                    401,
                    &ClientError::new(ErrorCode::Unauthorized, "missing or invalid token"),
                );
            }
        };
        let now = now_ms();
        let user_agent: String = truncate(&input.user_agent, MAX_USER_AGENT).to_owned();
        let connection = Connection {
            connection_id: input.connection_id.as_str().into(),
            tenant_id: identity.tenant_id.as_str().into(),
            user_id: identity.user_id.as_str().into(),
            endpoint: input.endpoint.as_str().into(),
            permissions: identity
                .permissions
                .iter()
                .map(|p| Arc::<str>::from(p.as_str()))
                .collect(),
            source_ip: input.source_ip.as_str().into(),
            user_agent: user_agent.into(),
            connected_at_ms: now,
            last_seen_ms: now,
            expires_at_ms: 0,
            groups: Vec::new().into(),
        };
        match self
            .registry
            .insert(connection, self.limits_config.max_connections_per_tenant)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    connection_id = %input.connection_id,
                    tenant_id = %identity.tenant_id,
                    user_id = %identity.user_id,
                    "connected"
                );
                ConnectDecision::accept("accepted")
            }
            Err(RegistryError::AlreadyExists) => {
                // A redelivered $connect: accept it again only for the same identity.
                match self.registry.get(&input.connection_id).await {
                    Ok(Some(existing))
                        if *existing.tenant_id == *identity.tenant_id
                            && *existing.user_id == *identity.user_id =>
                    {
                        ConnectDecision::accept("redelivered")
                    }
                    Ok(_) => ConnectDecision::reject(
                        "forbidden",
                        403,
                        &ClientError::new(ErrorCode::Forbidden, "connection refused"),
                    ),
                    Err(err) => {
                        tracing::warn!(error = %err, "registry read failed during connect");
                        ConnectDecision::reject("unavailable", 503, &unavailable())
                    }
                }
            }
            Err(RegistryError::QuotaExceeded { limit }) => {
                tracing::info!(tenant_id = %identity.tenant_id, limit, "tenant connection quota reached");
                metrics()
                    .rate_limited
                    .get_or_create(&LimitLabel {
                        limit: "tenant_quota",
                    })
                    .inc();
                ConnectDecision::reject(
                    "quota_exceeded",
                    429,
                    &ClientError {
                        message: "tenant connection limit reached".into(),
                        ..ClientError::rate_limited(QUOTA_RETRY_AFTER)
                    },
                )
            }
            Err(RegistryError::NotFound | RegistryError::GroupLimit { .. }) => {
                tracing::error!("registry answered a connect with a group error");
                ConnectDecision::reject("unavailable", 503, &unavailable())
            }
            Err(RegistryError::Unavailable(detail)) => {
                tracing::warn!(error = %detail, "registry unavailable during connect");
                ConnectDecision::reject("unavailable", 503, &unavailable())
            }
        }
    }

    /// `$disconnect`: forget the connection; `true` when it was registered.
    pub async fn disconnect(&self, connection_id: &str) -> Result<bool, RegistryError> {
        let removed = self.registry.remove(connection_id).await?;
        if let Some(connection) = &removed {
            let duration_ms = now_ms() - connection.connected_at_ms;
            tracing::info!(connection_id, tenant_id = %connection.tenant_id, duration_ms, "disconnected");
            metrics().disconnects.inc();
        }
        Ok(removed.is_some())
    }

    /// One client frame. Returns the reply frame, if any. Every failure is an
    /// `error` frame carrying the request id when the client gave one.
    pub async fn route(&self, connection_id: &str, body: &str, is_base64: bool) -> Option<String> {
        let routed = self.route_inner(connection_id, body, is_base64).await;
        metrics()
            .messages
            .get_or_create(&MessageLabels {
                action: routed.action,
                outcome: routed.outcome,
            })
            .inc();
        Some(routed.reply)
    }

    async fn route_inner(&self, connection_id: &str, body: &str, is_base64: bool) -> Routed {
        let fail = |id: Option<String>, error: ClientError, action: &str| Routed {
            reply: client::error_frame(id.as_deref(), &error),
            action: action.to_owned(),
            outcome: outcome_of(error.code),
        };
        let connection = match self.registry.get(connection_id).await {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                let error = ClientError::new(
                    ErrorCode::Unauthorized,
                    "connection is not registered; reconnect",
                );
                return fail(client::peek_request_id(body), error, INVALID_ACTION_LABEL);
            }
            Err(err) => {
                tracing::warn!(error = %err, connection_id, "registry unavailable during route");
                return fail(
                    client::peek_request_id(body),
                    unavailable(),
                    INVALID_ACTION_LABEL,
                );
            }
        };
        tracing::Span::current().record("tenant_id", &*connection.tenant_id);
        self.touch_if_due(&connection);
        if let Err(wait) = self.check_message(&connection.connection_id).await {
            tracing::debug!(connection_id, "message rate limited");
            metrics()
                .rate_limited
                .get_or_create(&LimitLabel { limit: "message" })
                .inc();
            return fail(
                client::peek_request_id(body),
                ClientError::rate_limited(wait),
                INVALID_ACTION_LABEL,
            );
        }
        let decoded;
        let text = if is_base64 {
            match base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(text) => {
                    decoded = text;
                    decoded.as_str()
                }
                None => {
                    return fail(
                        None,
                        ClientError::validation("message must be UTF-8 JSON text"),
                        INVALID_ACTION_LABEL,
                    );
                }
            }
        } else {
            body
        };
        if text.len() > self.limits_config.max_message_bytes {
            let error = ClientError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "message exceeds {} bytes",
                    self.limits_config.max_message_bytes
                ),
            );
            return fail(client::peek_request_id(text), error, INVALID_ACTION_LABEL);
        }
        let envelope = match client::parse_envelope(text) {
            Ok(envelope) => envelope,
            Err((request_id, error)) => return fail(request_id, error, INVALID_ACTION_LABEL),
        };
        tracing::Span::current().record("request_id", envelope.request_id.as_str());
        // Only declared actions become label values, never client text.
        let action = if self.actions.resolve(&envelope.action).is_ok() {
            envelope.action.as_str()
        } else {
            UNKNOWN_ACTION_LABEL
        };
        match self.run_action(&connection, &envelope).await {
            Ok(reply) => Routed {
                reply,
                action: action.to_owned(),
                outcome: "ok",
            },
            Err(error) => fail(Some(envelope.request_id.clone()), error, action),
        }
    }

    async fn run_action(
        &self,
        connection: &Connection,
        envelope: &Envelope,
    ) -> Result<String, ClientError> {
        let action = match self.actions.resolve(&envelope.action)? {
            Resolved::Sync(action) => action,
            Resolved::Async(action) => {
                return self.queue_request(connection, envelope, &action).await;
            }
        };
        if let Some(permission) = &action.permission
            && !grants(&connection.permissions, permission)
        {
            return Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("action {:?} needs permission {permission:?}", action.name),
            ));
        }
        action.validate(&envelope.payload)?;
        let id = envelope.request_id.as_str();
        Ok(match action.handler {
            Builtin::Cancel => {
                let target = request_id_of(&envelope.payload)?;
                self.own_request(connection, target).await?;
                let cancelled = match self
                    .jobs
                    .cancel(
                        &connection.tenant_id,
                        target,
                        Some(&connection.connection_id),
                    )
                    .await
                {
                    Ok(cancelled) => cancelled,
                    Err(QueueError::Conflict(current)) => {
                        return Err(ClientError {
                            details: Some(json!({ "status": current.status.as_str() })),
                            ..ClientError::validation("the request has already finished")
                        });
                    }
                    Err(err) => return Err(queue_error(err)),
                };
                client::response_frame(id, &crate::jobs::view(&cancelled))
            }
            Builtin::Subscribe => {
                let target = request_id_of(&envelope.payload)?;
                self.own_request(connection, target).await?;
                let request = self
                    .jobs
                    .queue()
                    .subscribe(&connection.tenant_id, target, &connection.connection_id)
                    .await
                    .map_err(queue_error)?;
                client::response_frame(id, &crate::jobs::view(&request))
            }
            Builtin::Join => {
                let group = group_of(&envelope.payload)?;
                let needed = self.presence.config().join_permission_for(group);
                if !grants(&connection.permissions, &needed) {
                    return Err(ClientError::new(
                        ErrorCode::Forbidden,
                        format!("joining {group:?} needs permission {needed:?}"),
                    ));
                }
                let max = self.presence.config().max_per_connection;
                let joined = self
                    .registry
                    .join(&connection.connection_id, group, max)
                    .await
                    .map_err(group_error)?;
                if joined {
                    self.presence.announce(group, Event::Join, connection).await;
                }
                client::response_frame(id, &json!({ "group": group, "joined": joined }))
            }
            Builtin::Leave => {
                let group = group_of(&envelope.payload)?;
                let left = self
                    .registry
                    .leave(&connection.connection_id, group)
                    .await
                    .map_err(group_error)?;
                if left {
                    self.presence
                        .announce(group, Event::Leave, connection)
                        .await;
                }
                client::response_frame(id, &json!({ "group": group, "left": left }))
            }
            Builtin::Echo => client::response_frame(id, &envelope.payload),
            Builtin::Health => client::response_frame(
                id,
                &json!({ "status": "ok", "timestamp": client::timestamp_now() }),
            ),
            Builtin::Ping => client::pong_frame(id),
            Builtin::Whoami => client::response_frame(
                id,
                &json!({
                    "connection_id": &*connection.connection_id,
                    "user_id": &*connection.user_id,
                    "tenant_id": &*connection.tenant_id,
                    "permissions": connection.permissions.iter().map(|p| Value::from(&**p)).collect::<Vec<_>>(),
                    "connected_at": client::timestamp_ms(connection.connected_at_ms),
                }),
            ),
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
