//! The built-in actions: `echo`, `health`, `ping`, `whoami`, `join` /
//! `leave` (groups), `cancel` / `subscribe` (the caller's long-running
//! requests).

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
    ) -> Result<Frame, Fault> {
        let id = envelope.request_id.as_str();
        let payload = &envelope.payload;
        Ok(match builtin {
            Builtin::Echo => Frame::response(id, payload.clone()),
            Builtin::Health => Frame::response(
                id,
                json!({ "status": "ok", "timestamp": client::timestamp_now() }),
            ),
            Builtin::Ping => Frame::pong(id),
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
                let joined = self
                    .groups
                    .join(connection, group)
                    .await
                    .map_err(group_fault)?;
                Frame::response(id, json!({ "group": group, "joined": joined }))
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
            Builtin::Subscribe => {
                let target = request_id_of(payload)?;
                self.own_request(connection, target).await?;
                let request = self
                    .jobs
                    .subscribe(&connection.tenant_id, target, &connection.connection_id)
                    .await?;
                Frame::response(id, view(&request))
            }
        })
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
