//! `$connect`: the per-IP connect limit, token verification, the tenant
//! quota and the conditional registration, answered as the HTTP status API
//! Gateway returns to the client (with a JSON body and no internal detail).

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use serde_json::json;
use streamer_proto::{
    client::{ClientError, ErrorCode},
    ids,
};

use super::{
    ControlPlane, OPERATION_BUDGET,
    auth::{self, AuthError},
};
use crate::{
    error::{Fault, RegistryError},
    metrics::{LimitLabel, OutcomeLabel, ReasonLabel, metrics},
    registry::Connection,
};

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
    /// When the caller stops waiting (ms since the epoch; 0: never).
    pub deadline_ms: i64,
    /// Where the edge's call came from (for the log of a refusal).
    pub edge_peer: String,
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
        if let Some(secs) = error.retry_after_secs() {
            headers.insert("retry-after".to_owned(), secs.to_string());
        }
        Self {
            outcome,
            status,
            body: json!({ "error": error.to_json() }).to_string(),
            headers,
        }
    }

    fn unauthorized() -> Self {
        Self::reject(
            "unauthorized",
            401,
            &ClientError::new(ErrorCode::Unauthorized, "missing or invalid token"),
        )
    }

    fn unavailable() -> Self {
        Self::reject(
            "unavailable",
            503,
            &Fault::unavailable("service temporarily unavailable, retry later").client(),
        )
    }
}

/// Whether the client joins `chunk` frames: yes unless it connected with
/// `chunks=false` (or `0` / `no`).
fn accepts_chunks(query: &HashMap<String, String>) -> bool {
    !query
        .get("chunks")
        .is_some_and(|v| matches!(v.as_str(), "false" | "0" | "no"))
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
        AuthError::TooLong => "lifetime",
        AuthError::UnknownKey => "unknown_key",
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

impl ControlPlane {
    /// `$connect`: connect rate limit per IP, token verification, tenant
    /// quota, conditional registration.
    pub async fn connect(&self, input: ConnectInput) -> ConnectDecision {
        let connection_id = input.connection_id.clone();
        let decision = match tokio::time::timeout(OPERATION_BUDGET, self.decide_connect(input))
            .await
        {
            Ok(decision) => decision,
            Err(_) => {
                tracing::warn!(connection_id, budget = ?OPERATION_BUDGET, "a connect outlasted its budget (store too slow)");
                // The row may land after all: forget it, in the
                // background; the reconcile job catches what this misses.
                let registry = self.registry.clone();
                tokio::spawn(async move {
                    for _ in 0..5 {
                        if registry.remove(&connection_id).await.is_ok() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                });
                ConnectDecision::unavailable()
            }
        };
        metrics()
            .connects
            .get_or_create(&OutcomeLabel {
                outcome: decision.outcome,
            })
            .inc();
        decision
    }

    /// Whether a caller's deadline has passed (0: none).
    fn past(&self, deadline_ms: i64) -> bool {
        deadline_ms > 0 && self.clock.now_ms() > deadline_ms
    }

    fn loopback(&self, source_ip: &str) -> bool {
        self.loopback_unlimited && source_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
        if !self.endpoints.allows(&input.endpoint) {
            tracing::warn!(
                connection_id = %input.connection_id,
                endpoint = %input.endpoint,
                edge_peer = %input.edge_peer,
                source_ip = %input.source_ip,
                "connect names a Management API endpoint outside STREAMER_MANAGEMENT_ENDPOINTS; refused"
            );
            metrics()
                .foreign_endpoints
                .get_or_create(&crate::metrics::OperationLabel {
                    operation: "connect",
                })
                .inc();
            return ConnectDecision::reject(
                "foreign_endpoint",
                403,
                &ClientError::new(ErrorCode::Forbidden, "connection refused"),
            );
        }
        if !self.loopback(&input.source_ip)
            && let Err(wait) = self.limiter.check_connect(&input.source_ip).await
        {
            tracing::info!(source_ip = %input.source_ip, "connect rate limited");
            metrics()
                .rate_limited
                .get_or_create(&LimitLabel { limit: "connect" })
                .inc();
            return ConnectDecision::reject(
                "rate_limited",
                429,
                &ClientError {
                    message: "too many connection attempts from this address; retry later".into(),
                    ..ClientError::rate_limited(wait)
                },
            );
        }
        let Some(token) = auth::token_from_request(&input.query, &input.headers) else {
            tracing::info!(connection_id = %input.connection_id, reason = "no token", "connect refused");
            metrics()
                .auth_failures
                .get_or_create(&ReasonLabel { reason: "missing" })
                .inc();
            return ConnectDecision::unauthorized();
        };
        let identity = match self.verifier.verify(token).await {
            Ok(identity) => identity,
            Err(reason) => {
                tracing::info!(connection_id = %input.connection_id, %reason, "connect refused");
                metrics()
                    .auth_failures
                    .get_or_create(&ReasonLabel {
                        reason: auth_reason(reason),
                    })
                    .inc();
                return ConnectDecision::unauthorized();
            }
        };
        let now = self.clock.now_ms();
        if self.past(input.deadline_ms) {
            tracing::warn!(connection_id = %input.connection_id, "connect arrived after its caller's deadline; not registered");
            return ConnectDecision::unavailable();
        }
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
            user_agent: truncate(&input.user_agent, MAX_USER_AGENT).into(),
            connected_at_ms: now,
            last_seen_ms: now,
            expires_at_ms: 0,
            groups: Vec::new().into(),
            chunks: accepts_chunks(&input.query),
            token_expires_ms: identity.expires_at_ms,
        };
        let watched = connection.clone();
        match self
            .registry
            .insert(connection, self.limits.max_connections_per_tenant)
            .await
        {
            Ok(()) if self.past(input.deadline_ms) => {
                // The caller has given up and told its client 503: undo.
                tracing::warn!(connection_id = %input.connection_id, "connect finished after its caller's deadline; undone");
                if let Err(err) = self.registry.remove(&input.connection_id).await {
                    tracing::warn!(error = %err, "cannot undo a late connect (reconcile will remove it)");
                }
                ConnectDecision::unavailable()
            }
            Ok(()) => {
                tracing::info!(
                    connection_id = %input.connection_id,
                    tenant_id = %identity.tenant_id,
                    user_id = %identity.user_id,
                    "connected"
                );
                self.watch_token(&watched);
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
                        ConnectDecision::unavailable()
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
                ConnectDecision::unavailable()
            }
            Err(RegistryError::Unavailable(detail)) => {
                tracing::warn!(error = %detail, "registry unavailable during connect");
                ConnectDecision::unavailable()
            }
        }
    }
}
