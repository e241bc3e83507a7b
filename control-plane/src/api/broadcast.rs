//! `BroadcastService`: application messages to a connection, a user, a
//! group or a tenant. Every target and id is validated: an empty user id is
//! an error, never "the whole tenant".

use std::{collections::HashSet, sync::Arc};

use streamer_proto::{
    ids,
    v1::{self, broadcast_service_server::BroadcastService},
};
use tonic::{Request, Response, Status};

use super::{auth::Caller, convert};
use crate::{
    delivery::broadcast::{Broadcaster, Message, Target},
    error::Fault,
};

/// Most connection ids one send may exclude.
const MAX_EXCLUDED: usize = 1000;

/// Broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastApi {
    broadcaster: Arc<Broadcaster>,
}

impl BroadcastApi {
    /// Serves broadcast.
    pub fn new(broadcaster: Arc<Broadcaster>) -> Self {
        Self { broadcaster }
    }
}

/// The target of a send, validated.
fn target(target: Option<v1::send_request::Target>) -> Result<Target, Fault> {
    use v1::send_request::Target as T;
    Ok(match target {
        Some(T::ConnectionId(id)) => Target::Connection(convert::connection(&id)?.to_owned()),
        Some(T::User(user)) => Target::Scope(convert::user_scope(&user.tenant_id, &user.user_id)?),
        Some(T::TenantId(tenant)) => Target::Scope(convert::tenant_or_user(&tenant, "")?),
        Some(T::Group(group)) => {
            Target::Scope(convert::group_scope(&group.tenant_id, &group.group)?)
        }
        None => return Err(Fault::invalid("a target is required")),
    })
}

/// The message of a send, validated.
fn message(caller: &Caller, r: v1::SendRequest) -> Result<Message, Fault> {
    let target = target(r.target)?;
    if let Target::Scope(scope) = &target {
        caller.check_tenant(scope.tenant_id())?;
    }
    let data = match r.payload {
        Some(v1::send_request::Payload::Data(value)) => convert::value_to_json(value),
        Some(v1::send_request::Payload::DataJson(text)) => {
            streamer_proto::client::strict_json(&text)
                .map_err(|_| Fault::invalid("data_json is not valid JSON"))?
        }
        None => return Err(Fault::invalid("data or data_json is required")),
    };
    if !ids::valid_topic(&r.topic) {
        return Err(Fault::invalid(
            "topic must be at most 128 characters without control characters",
        ));
    }
    if r.exclude_connection_ids.len() > MAX_EXCLUDED {
        return Err(Fault::invalid(format!(
            "exclude at most {MAX_EXCLUDED} connection ids"
        )));
    }
    let mut exclude = HashSet::with_capacity(r.exclude_connection_ids.len());
    for id in r.exclude_connection_ids {
        convert::connection(&id)
            .map_err(|_| Fault::invalid("exclude_connection_ids holds an invalid connection id"))?;
        exclude.insert(id);
    }
    Ok(Message {
        target,
        data,
        topic: (!r.topic.is_empty()).then_some(r.topic),
        exclude,
        visible_to: caller.visible_to(),
    })
}

#[tonic::async_trait]
impl BroadcastService for BroadcastApi {
    async fn send(
        &self,
        request: Request<v1::SendRequest>,
    ) -> Result<Response<v1::SendResponse>, Status> {
        let caller = Caller::of(&request)?.clone();
        let message = message(&caller, request.into_inner())?;
        // Once accepted, a send runs to its end in its own task: a caller
        // that gives up (deadline, cancel, disconnect) no longer stops the
        // fan-out half-way, with the message stored and most clients never
        // sent it. The report is logged when nobody is left to read it.
        let broadcaster = self.broadcaster.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let sent = broadcaster.send(message).await;
            if let Err(Ok(sent)) = done.send(sent) {
                tracing::info!(
                    targeted = sent.report.targeted,
                    delivered = sent.report.delivered,
                    gone = sent.report.gone,
                    failed = sent.report.failed,
                    "a send finished after its caller went away"
                );
            }
        });
        let sent = outcome
            .await
            .map_err(|_| Fault::internal("the send task ended without an answer"))??;
        Ok(Response::new(v1::SendResponse {
            report: Some(convert::report_proto(sent.report)),
            position: sent.position.map(|(stream, p)| v1::StreamPosition {
                stream,
                offset: p.offset,
                epoch: p.epoch,
            }),
        }))
    }
}
