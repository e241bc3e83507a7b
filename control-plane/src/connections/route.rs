//! One client frame: load the connection's row (tenant, user and
//! permissions come from it, never from the client), apply the message
//! limit, parse and validate the envelope, check the action's permission and
//! schema, then answer (a built-in) or queue (an async action). Every
//! failure is an `error` frame carrying the request id when the client gave
//! a usable one.

use base64::Engine;
use streamer_proto::client::{
    self, Envelope, Frame,
    chunk::{CHUNK_ACTION, Chunk},
};

use super::{ControlPlane, OPERATION_BUDGET, not_registered};
use crate::{
    actions::{AsyncAction, Resolved},
    config::grants,
    delivery::PreparedFrame,
    error::Fault,
    metrics::{LimitLabel, MessageLabels, metrics},
    registry::Connection,
    requests::queue::Request,
};

/// Message metric label for frames refused before their action was known.
const INVALID_ACTION_LABEL: &str = "_invalid";
/// Message metric label for actions that are not declared.
const UNKNOWN_ACTION_LABEL: &str = "_unknown";
/// The metric label of an action a tenant defined for itself.
const TENANT_ACTION_LABEL: &str = "_tenant";
/// Message metric label for frames that outlasted [`OPERATION_BUDGET`].
const TIMED_OUT_LABEL: &str = "_timed_out";

/// A routed frame: the reply (none while a chunked message is incomplete,
/// or when it went out as chunks) and how to count it.
struct Routed {
    reply: Option<String>,
    action: String,
    outcome: &'static str,
}

fn failed(request_id: Option<String>, fault: Fault, action: &str) -> Routed {
    Routed {
        reply: Some(Frame::error(request_id.as_deref(), &fault.client()).to_json()),
        action: action.to_owned(),
        outcome: fault.code().label(),
    }
}

/// Checks a permission an action or group needs.
pub(super) fn permit(connection: &Connection, permission: &str, what: &str) -> Result<(), Fault> {
    if grants(&connection.permissions, permission) {
        Ok(())
    } else {
        Err(Fault::forbidden(format!(
            "{what} needs permission {permission:?}"
        )))
    }
}

/// The message metric label of chunk frames.
const CHUNK_LABEL: &str = "_chunk";

impl ControlPlane {
    /// One client frame. Returns the reply frame, if any.
    pub async fn route(&self, connection_id: &str, body: &str, is_base64: bool) -> Option<String> {
        let routed = match tokio::time::timeout(
            OPERATION_BUDGET,
            self.route_inner(connection_id, body, is_base64),
        )
        .await
        {
            Ok(routed) => routed,
            Err(_) => {
                tracing::warn!(connection_id, budget = ?OPERATION_BUDGET, "a client frame outlasted its budget (store too slow)");
                failed(
                    client::peek_request_id(body),
                    Fault::unavailable("service temporarily unavailable, retry later"),
                    TIMED_OUT_LABEL,
                )
            }
        };
        metrics().messages_routed.inc();
        metrics()
            .messages
            .get_or_create(&MessageLabels {
                action: routed.action,
                outcome: routed.outcome,
            })
            .inc();
        routed.reply
    }

    /// Spends one cell of the connection's message limit; the refusal when
    /// it is spent.
    async fn charge(&self, connection_id: &str, request_id: Option<String>) -> Option<Routed> {
        let wait = self.limiter.check_message(connection_id).await.err()?;
        tracing::debug!(connection_id, "message rate limited");
        metrics()
            .rate_limited
            .get_or_create(&LimitLabel { limit: "message" })
            .inc();
        Some(failed(
            request_id,
            Fault::rate_limited("rate limit exceeded; slow down", wait),
            INVALID_ACTION_LABEL,
        ))
    }

    async fn route_inner(&self, connection_id: &str, body: &str, is_base64: bool) -> Routed {
        let connection = match self.registry.get(connection_id).await {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                return failed(
                    client::peek_request_id(body),
                    not_registered(),
                    INVALID_ACTION_LABEL,
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, connection_id, "registry unavailable during route");
                return failed(
                    client::peek_request_id(body),
                    err.into(),
                    INVALID_ACTION_LABEL,
                );
            }
        };
        tracing::Span::current().record("tenant_id", &*connection.tenant_id);
        if connection.token_ended(
            self.clock.now_ms(),
            crate::delivery::reconcile::TOKEN_END_GRACE,
        ) {
            // The replica that watched its token stopped before the end:
            // nothing past it may be served; close it as the watcher would.
            self.close_ended(&connection);
            return failed(
                client::peek_request_id(body),
                Fault::unauthenticated(
                    "the connection's token has ended; connect again with a fresh one",
                ),
                INVALID_ACTION_LABEL,
            );
        }
        self.touch_if_due(&connection);
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
                    if let Some(limited) = self.charge(connection_id, None).await {
                        return limited;
                    }
                    return failed(
                        None,
                        Fault::invalid("message must be UTF-8 JSON text"),
                        INVALID_ACTION_LABEL,
                    );
                }
            }
        } else {
            body
        };
        if text.len() > self.limits.max_message_bytes {
            if let Some(limited) = self
                .charge(connection_id, client::peek_request_id(text))
                .await
            {
                return limited;
            }
            let fault = Fault::too_large(format!(
                "message exceeds {} bytes; send it as chunks",
                self.limits.max_message_bytes
            ));
            return failed(client::peek_request_id(text), fault, INVALID_ACTION_LABEL);
        }
        let parsed = client::parse_envelope(text);
        if let Ok(envelope) = &parsed
            && envelope.action == CHUNK_ACTION
        {
            return self.chunk(&connection, envelope).await;
        }
        if let Some(limited) = self
            .charge(connection_id, client::peek_request_id(text))
            .await
        {
            return limited;
        }
        self.handle(&connection, parsed).await
    }

    /// A parsed message (whole, or joined from chunks): its action's reply.
    async fn handle(
        &self,
        connection: &Connection,
        parsed: Result<Envelope, (Option<String>, client::ClientError)>,
    ) -> Routed {
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err((request_id, error)) => {
                return Routed {
                    reply: Some(Frame::error(request_id.as_deref(), &error).to_json()),
                    action: INVALID_ACTION_LABEL.to_owned(),
                    outcome: error.code.label(),
                };
            }
        };
        tracing::Span::current().record("request_id", envelope.request_id.as_str());
        // An action only another replica's processors serve yet.
        if self
            .actions
            .resolve(&envelope.action, &connection.tenant_id)
            .is_err()
        {
            self.jobs
                .discover(&self.actions, &envelope.action, &connection.tenant_id)
                .await;
        }
        // Only fleet-wide actions become label values, never client text
        // nor a tenant's own action names.
        let action = match self
            .actions
            .resolve(&envelope.action, &connection.tenant_id)
        {
            Ok(_) if self.actions.is_fleet_wide(&envelope.action) => envelope.action.as_str(),
            Ok(_) => TENANT_ACTION_LABEL,
            Err(_) => UNKNOWN_ACTION_LABEL,
        };
        match self.run_action(connection, &envelope).await {
            Ok(reply) => Routed {
                reply: match reply {
                    Some(reply) => self.reply(connection, reply.to_json()).await,
                    // Answered in the background (a large recovery).
                    None => None,
                },
                action: action.to_owned(),
                outcome: "ok",
            },
            Err(fault) => failed(Some(envelope.request_id.clone()), fault, action),
        }
    }

    /// A reply that fits goes back as the route response; a larger one
    /// (a big `recover`, say) goes out through the Management API, as
    /// chunks.
    async fn reply(&self, connection: &Connection, reply: String) -> Option<String> {
        if reply.len() <= self.fanout.max_frame_bytes() {
            return Some(reply);
        }
        let outcome = self
            .fanout
            .send_one(connection, &PreparedFrame::new(reply))
            .await
            .outcome();
        tracing::debug!(connection_id = %connection.connection_id, ?outcome, "a large reply went out as chunks");
        None
    }

    /// A `chunk` frame: one piece of a larger message. The piece that
    /// starts a message (and any refused piece) spends a cell of the message
    /// limit; the rest of the message's pieces do not, so a 1 MiB message
    /// costs what any message costs. The joined message is then handled as
    /// if it had come whole.
    async fn chunk(&self, connection: &Connection, envelope: &Envelope) -> Routed {
        let request_id = Some(envelope.request_id.clone());
        let piece: Chunk = match serde_json::from_value(envelope.payload.clone()) {
            Ok(piece) => piece,
            Err(_) => {
                if let Some(limited) = self
                    .charge(&connection.connection_id, request_id.clone())
                    .await
                {
                    return limited;
                }
                return failed(
                    request_id,
                    Fault::invalid(
                        "chunk payload must be {chunk_id, index, count, data} (data a string)",
                    ),
                    CHUNK_LABEL,
                );
            }
        };
        let limits = *self.chunks.limits();
        match self
            .chunks
            .add(
                &connection.connection_id,
                &connection.tenant_id,
                piece,
                self.clock.now_ms(),
            )
            .await
        {
            Ok(added) => {
                if added.started
                    && let Some(limited) = self.charge(&connection.connection_id, request_id).await
                {
                    self.chunks.forget(&connection.connection_id).await;
                    return limited;
                }
                match added.joined {
                    None => Routed {
                        reply: None,
                        action: CHUNK_LABEL.to_owned(),
                        outcome: "ok",
                    },
                    Some(text) => {
                        let parsed = client::parse_envelope(&text);
                        if let Ok(inner) = &parsed
                            && inner.action == CHUNK_ACTION
                        {
                            return failed(
                                Some(inner.request_id.clone()),
                                Fault::invalid("a chunked message cannot itself be a chunk"),
                                CHUNK_LABEL,
                            );
                        }
                        self.handle(connection, parsed).await
                    }
                }
            }
            Err(err) => {
                if let Some(limited) = self
                    .charge(&connection.connection_id, request_id.clone())
                    .await
                {
                    return limited;
                }
                if err.dropped() {
                    tracing::info!(connection_id = %connection.connection_id, ?err, "chunked message dropped");
                }
                failed(request_id, err.fault(&limits), CHUNK_LABEL)
            }
        }
    }

    async fn run_action(
        &self,
        connection: &Connection,
        envelope: &Envelope,
    ) -> Result<Option<Frame>, Fault> {
        let action = match self
            .actions
            .resolve(&envelope.action, &connection.tenant_id)?
        {
            Resolved::Sync(action) => action,
            Resolved::Async { action, scoped } => {
                return self
                    .queue_request(connection, envelope, &action, scoped)
                    .await
                    .map(Some);
            }
        };
        if let Some(permission) = &action.permission {
            permit(connection, permission, &format!("action {:?}", action.name))?;
        }
        action.validate(&envelope.payload)?;
        self.builtin(action.handler, connection, envelope).await
    }

    /// Queues a request for an async action and acknowledges it.
    async fn queue_request(
        &self,
        connection: &Connection,
        envelope: &Envelope,
        action: &AsyncAction,
        scoped: bool,
    ) -> Result<Frame, Fault> {
        if let Some(permission) = &action.permission {
            permit(connection, permission, &format!("action {:?}", action.name))?;
        }
        action.validate(&envelope.payload)?;
        let request = Request::queued(
            &connection.tenant_id,
            &envelope.request_id,
            &action.name,
            envelope.payload.clone(),
            &connection.user_id,
            &connection.connection_id,
            action.max_attempts,
            action.lease_timeout_ms,
            self.jobs.now_ms(),
        )
        .scoped(scoped);
        self.jobs
            .submit(request)
            .await
            .map_err(|err| err.seen_by(&connection.user_id))?;
        tracing::info!(request_id = %envelope.request_id, action = %action.name, "request queued");
        Ok(Frame::acknowledgment(&envelope.request_id))
    }
}
