//! The built-in actions: `echo`, `health`, `ping`, `whoami`, `join` /
//! `leave` (groups), `cancel` / `subscribe` (the caller's long-running
//! requests), `recover` (a stream's history).

use serde_json::{Value, json};
use streamer_proto::{
    client::{self, Envelope, Frame},
    ids,
};

use super::{ControlPlane, not_registered, route::permit};
use crate::{
    actions::Builtin,
    error::{Fault, QueueError, RegistryError},
    registry::Connection,
    requests::{queue::Request, relay::view},
    streams::{MAX_EPOCH_LEN, Stream},
};

/// The `request_id` of a `cancel` / `subscribe` payload.
fn request_id_of(payload: &Value) -> Result<&str, Fault> {
    match payload.get("request_id").and_then(Value::as_str) {
        Some(id) if ids::valid_request_id(id) => Ok(id),
        Some(_) => Err(Fault::invalid(
            "payload.request_id must be 1 to 128 characters",
        )),
        None => Err(Fault::invalid("payload.request_id is required")),
    }
}

/// The `group` of a `join` / `leave` payload.
fn group_of(payload: &Value) -> Result<&str, Fault> {
    match payload.get("group").and_then(Value::as_str) {
        Some(group) if ids::valid_group(group) => Ok(group),
        Some(_) => Err(Fault::invalid(
            "payload.group must be 1 to 128 characters of letters, digits, '.', ':', '_' or '-'",
        )),
        None => Err(Fault::invalid("payload.group is required")),
    }
}

/// The `stream` of a `recover` payload.
fn stream_of(payload: &Value) -> Result<Stream, Fault> {
    let Some(name) = payload.get("stream") else {
        return Err(Fault::invalid("payload.stream is required"));
    };
    name.as_str().and_then(Stream::parse).ok_or_else(|| {
        Fault::invalid("payload.stream must be tenant, user:<user_id> or group:<name>")
    })
}

/// The `since` and `epoch` of a `recover` / `join` payload: the offset and
/// epoch of the last message the client received (`None`: none given).
fn since_of(payload: &Value) -> Result<Option<(u64, String)>, Fault> {
    let Some(since) = payload.get("since") else {
        return Ok(None);
    };
    let since = since.as_u64().ok_or_else(|| {
        Fault::invalid("payload.since must be a whole number, 0 or more (the last offset received)")
    })?;
    let epoch = match payload.get("epoch") {
        None | Some(Value::Null) if since == 0 => String::new(),
        Some(Value::String(epoch)) if epoch.len() <= MAX_EPOCH_LEN => epoch.clone(),
        None | Some(Value::Null) => {
            return Err(Fault::invalid(
                "payload.epoch is required with payload.since (the epoch of the last message received)",
            ));
        }
        Some(_) => {
            return Err(Fault::invalid(format!(
                "payload.epoch must be a string of at most {MAX_EPOCH_LEN} characters"
            )));
        }
    };
    Ok(Some((since, epoch)))
}

/// Who may read a stream: any connection of the tenant its `tenant`
/// stream, a user's own connections `user:<id>`, a group's members
/// `group:<name>`.
fn may_read(connection: &Connection, stream: &Stream) -> Result<(), Fault> {
    let allowed = match stream {
        Stream::Tenant => true,
        Stream::User(user) => **user == *connection.user_id,
        Stream::Group(group) => connection.groups.iter().any(|g| **g == **group),
    };
    if allowed {
        Ok(())
    } else {
        Err(Fault::forbidden(match stream {
            Stream::Group(_) => "only members of the group may read its stream (join it first)",
            _ => "only the user's own connections may read their stream",
        }))
    }
}

/// A registry failure during `join` / `leave`, as the client sees it.
fn group_fault(err: RegistryError) -> Fault {
    match err {
        RegistryError::NotFound => not_registered(),
        other => other.into(),
    }
}

impl ControlPlane {
    /// Answers a built-in action.
    pub(super) async fn builtin(
        &self,
        builtin: Builtin,
        connection: &Connection,
        envelope: &Envelope,
    ) -> Result<Option<Frame>, Fault> {
        let id = envelope.request_id.as_str();
        let payload = &envelope.payload;
        Ok(Some(match builtin {
            Builtin::Echo => Frame::response(id, payload.clone()),
            Builtin::Health => Frame::response(
                id,
                json!({ "status": "ok", "timestamp": client::timestamp_now() }),
            ),
            Builtin::Ping => Frame::pong(id),
            Builtin::Refresh => {
                let token = payload
                    .get("token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Fault::invalid("payload.token is required"))?;
                let identity = self.verifier.verify(token).await.map_err(|reason| {
                    tracing::info!(connection_id = %connection.connection_id, %reason, "refresh refused");
                    Fault::unauthenticated("the token is not valid")
                })?;
                if identity.user_id != *connection.user_id
                    || identity.tenant_id != *connection.tenant_id
                {
                    return Err(Fault::forbidden(
                        "the token is for another user or tenant; nothing changed",
                    ));
                }
                let permissions: std::sync::Arc<[std::sync::Arc<str>]> = identity
                    .permissions
                    .iter()
                    .map(|p| std::sync::Arc::<str>::from(p.as_str()))
                    .collect();
                let renewed = self
                    .registry
                    .renew(
                        &connection.connection_id,
                        permissions.clone(),
                        identity.expires_at_ms,
                    )
                    .await?;
                if !renewed {
                    return Err(not_registered());
                }
                self.watch_token(&Connection {
                    permissions,
                    token_expires_ms: identity.expires_at_ms,
                    ..connection.clone()
                });
                Frame::response(
                    id,
                    json!({ "expires_at": client::timestamp_ms(identity.expires_at_ms) }),
                )
            }
            Builtin::Whoami => Frame::response(
                id,
                json!({
                    "connection_id": &*connection.connection_id,
                    "user_id": &*connection.user_id,
                    "tenant_id": &*connection.tenant_id,
                    "permissions": connection.permissions.iter().map(|p| Value::from(&**p)).collect::<Vec<_>>(),
                    "connected_at": client::timestamp_ms(connection.connected_at_ms),
                }),
            ),
            Builtin::Join => {
                let group = group_of(payload)?;
                permit(
                    connection,
                    &self.groups.join_permission(group),
                    &format!("joining {group:?}"),
                )?;
                let since = since_of(payload)?;
                let stream = Stream::Group(group.to_owned()).name();
                if since.is_some() {
                    // Refused before joining, so a bad `since` changes nothing.
                    self.streams.check(&stream)?;
                }
                let joined = self
                    .groups
                    .join(connection, group)
                    .await
                    .map_err(group_fault)?;
                let data = json!({ "group": group, "joined": joined });
                // Read after the membership is stored: whatever is sent from
                // now on reaches this connection live, and whatever was sent
                // before is in the answer (a duplicate is told apart by its
                // offset).
                if self.streams.keeps(&stream) {
                    let missed = since.is_some();
                    match self
                        .recover_to(connection, id, &stream, since, data, missed)
                        .await?
                    {
                        Some(frame) => frame,
                        None => return Ok(None),
                    }
                } else {
                    Frame::response(id, data)
                }
            }
            Builtin::Leave => {
                let group = group_of(payload)?;
                let left = self
                    .groups
                    .leave(connection, group)
                    .await
                    .map_err(group_fault)?;
                Frame::response(id, json!({ "group": group, "left": left }))
            }
            Builtin::Cancel => {
                let target = request_id_of(payload)?;
                self.own_request(connection, target).await?;
                let cancelled = self
                    .jobs
                    .cancel(
                        &connection.tenant_id,
                        target,
                        Some(&connection.connection_id),
                    )
                    .await
                    .map_err(|err| match err {
                        QueueError::Conflict { status } => Fault::precondition(format!(
                            "the request has already finished ({status})"
                        ))
                        .with_details(json!({ "status": status })),
                        other => other.into(),
                    })?;
                Frame::response(id, view(&cancelled))
            }
            Builtin::Recover => {
                let stream = stream_of(payload)?;
                let since = since_of(payload)?;
                may_read(connection, &stream)?;
                match self
                    .recover_to(connection, id, &stream.name(), since, json!({}), true)
                    .await?
                {
                    Some(frame) => frame,
                    None => return Ok(None),
                }
            }
            Builtin::Subscribe => {
                let target = request_id_of(payload)?;
                self.own_request(connection, target).await?;
                let request = self
                    .jobs
                    .subscribe(&connection.tenant_id, target, &connection.connection_id)
                    .await?;
                Frame::response(id, view(&request))
            }
        }))
    }

    /// The answer to a `recover` (or a `join` with `since`, whose `data`
    /// it extends) of `stream` for `connection`: the response frame when
    /// what was missed fits in it; otherwise `None` now, and in the
    /// background the missed messages go to the connection a page at a
    /// time as `message` frames (under the process's recovery budget),
    /// then the response, which counts them in `streamed`. The route
    /// answers at once either way.
    async fn recover_to(
        &self,
        connection: &Connection,
        id: &str,
        stream: &str,
        since: Option<(u64, String)>,
        data: Value,
        missed: bool,
    ) -> Result<Option<Frame>, Fault> {
        let tenant = connection.tenant_id.to_string();
        let since_ref = since.as_ref().map(|(s, e)| (*s, e.as_str()));
        let now = self.clock.now_ms();
        if let Some(recovery) = self
            .streams
            .recover_inline(&tenant, stream, since_ref, now)
            .await?
        {
            return Ok(Some(Frame::response(
                id,
                extended(data, recovery.to_json(missed)),
            )));
        }
        let (streams, fanout, connection) = (
            self.streams.clone(),
            self.fanout.clone(),
            connection.clone(),
        );
        let (id, stream) = (id.to_owned(), stream.to_owned());
        tokio::spawn(async move {
            let since_ref = since.as_ref().map(|(s, e)| (*s, e.as_str()));
            let recovered = streams
                .recover(&tenant, &stream, since_ref, now, |messages, position| {
                    let (fanout, connection, stream) = (&fanout, &connection, &stream);
                    async move {
                        for message in messages {
                            let frame = message.frame(stream, &position.epoch).to_json();
                            drop(message);
                            let _ = fanout
                                .send_one(connection, &crate::delivery::PreparedFrame::new(frame))
                                .await;
                        }
                    }
                })
                .await;
            let answer = match recovered {
                Ok(recovery) => Frame::response(&id, extended(data, recovery.to_json(missed))),
                Err(fault) => Frame::error(Some(&id), &fault.client()),
            };
            let _ = fanout
                .send_one(
                    &connection,
                    &crate::delivery::PreparedFrame::new(answer.to_json()),
                )
                .await;
        });
        Ok(None)
    }

    /// A request of the caller's tenant and user (else NOT_FOUND: another
    /// user's request ids are not revealed).
    async fn own_request(
        &self,
        connection: &Connection,
        request_id: &str,
    ) -> Result<Request, Fault> {
        match self.jobs.get(&connection.tenant_id, request_id).await? {
            Some(request) if request.user_id == *connection.user_id => Ok(request),
            _ => Err(Fault::not_found("request")),
        }
    }
}

/// `data` with `more`'s fields added.
fn extended(mut data: Value, more: Value) -> Value {
    if let (Value::Object(data), Value::Object(more)) = (&mut data, more) {
        data.extend(more);
    }
    data
}
