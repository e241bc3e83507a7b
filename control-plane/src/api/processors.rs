//! `ProcessorService.Work`: a processor registers its actions, then
//! receives leases and cancellations and sends progress, completions and
//! failures on one bidirectional stream. This adapter only turns wire
//! messages into the domain's reports and assignments back into wire
//! messages; a report it cannot even read (JSON that does not parse) is
//! refused on the stream like any other refused report.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use streamer_proto::{
    ids,
    v1::{self, processor_service_server::ProcessorService},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Caller;
use crate::{
    actions::{Actions, AsyncAction},
    error::Fault,
    requests::{
        Jobs, Report,
        queue::{Failure, ProgressState},
        session::{Assignment, Session},
    },
};

/// Most actions one processor may register.
const MAX_ACTIONS: usize = 256;

/// The processor work stream.
#[derive(Debug, Clone)]
pub struct ProcessorApi {
    jobs: Arc<Jobs>,
    actions: Arc<Actions>,
}

impl ProcessorApi {
    /// Serves processors; their actions are registered into `actions`.
    pub fn new(jobs: Arc<Jobs>, actions: Arc<Actions>) -> Self {
        Self { jobs, actions }
    }
}

/// JSON text, where empty means `null`.
fn json_or_null(text: &str, field: &str) -> Result<Value, String> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    streamer_proto::client::strict_json(text).map_err(|_| format!("{field} is not valid JSON"))
}

fn assignment_proto(assignment: Assignment) -> v1::WorkResponse {
    use v1::work_response::Message;
    let message = match assignment {
        Assignment::Lease(lease) => Message::Lease(v1::Lease {
            tenant_id: lease.tenant_id,
            request_id: lease.request_id,
            action: lease.action,
            payload_json: lease.payload.to_string(),
            user_id: lease.user_id,
            attempt: lease.attempt,
        }),
        Assignment::Cancelled {
            tenant_id,
            request_id,
        } => Message::Cancelled(v1::Cancelled {
            tenant_id,
            request_id,
        }),
        Assignment::Refused {
            tenant_id,
            request_id,
            reason,
        } => Message::Refused(v1::Refused {
            tenant_id,
            request_id,
            reason,
        }),
    };
    v1::WorkResponse {
        message: Some(message),
    }
}

/// A wire report as the domain's, or why it cannot be read.
fn report_of(
    message: v1::work_request::Message,
) -> Option<(String, String, Result<Report, String>)> {
    use v1::work_request::Message;
    Some(match message {
        Message::Register(_) | Message::Drain(_) => return None,
        Message::Progress(p) => {
            let progress = p.progress.unwrap_or_default();
            let report = json_or_null(&progress.details_json, "details_json").map(|details| {
                Report::Progress(ProgressState {
                    percentage: progress.percentage,
                    message: progress.message,
                    details: Some(details).filter(|d| !d.is_null()),
                })
            });
            (p.tenant_id, p.request_id, report)
        }
        Message::Complete(c) => {
            let report = json_or_null(&c.result_json, "result_json").map(Report::Complete);
            (c.tenant_id, c.request_id, report)
        }
        Message::Fail(f) => {
            let code = if f.code.is_empty() {
                "PROCESSING_FAILED".to_owned()
            } else {
                f.code
            };
            let report = Ok(Report::Fail {
                failure: Failure {
                    code,
                    message: f.message,
                },
                retryable: f.retryable,
            });
            (f.tenant_id, f.request_id, report)
        }
    })
}

/// Handles one message of a registered processor.
async fn handle(jobs: &Jobs, session: &Session, message: v1::work_request::Message) {
    match message {
        v1::work_request::Message::Drain(_) => session.drain(),
        v1::work_request::Message::Register(_) => {
            session
                .refuse(
                    "",
                    "",
                    "already registered; Register is the first message only",
                )
                .await;
        }
        other => {
            let Some((tenant_id, request_id, report)) = report_of(other) else {
                return;
            };
            match report {
                Ok(report) => {
                    // A refusal is answered on the stream by the domain.
                    let _ = jobs.report(session, &tenant_id, &request_id, report).await;
                }
                Err(reason) => session.refuse(&tenant_id, &request_id, reason).await,
            }
        }
    }
}

/// Registers the actions of a `Register` message.
fn register(actions: &Actions, register: &v1::Register) -> Result<Vec<String>, Fault> {
    if register.actions.is_empty() || register.actions.len() > MAX_ACTIONS {
        return Err(Fault::invalid(format!(
            "register 1 to {MAX_ACTIONS} actions"
        )));
    }
    if !ids::valid_label(&register.name) {
        return Err(Fault::invalid(
            "name must be at most 128 characters without control characters",
        ));
    }
    let mut names = Vec::new();
    for spec in &register.actions {
        let schema = json_or_null(&spec.schema_json, "schema_json").map_err(Fault::invalid)?;
        let action = AsyncAction::new(
            &spec.name,
            Some(spec.permission.clone()),
            Some(&schema).filter(|s| !s.is_null()),
            Some(u64::from(spec.lease_timeout_ms)),
            Some(spec.max_attempts),
        )
        .map_err(|e| Fault::invalid(e.to_string()))?;
        actions
            .register_async(action)
            .map_err(|e| Fault::invalid(e.to_string()))?;
        names.push(spec.name.clone());
    }
    Ok(names)
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<v1::WorkResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProcessorService for ProcessorApi {
    type WorkStream = WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<v1::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(v1::WorkRequest {
            message: Some(v1::work_request::Message::Register(registration)),
        }) = first
        else {
            return Err(Fault::invalid("the first message must be Register").into());
        };
        let names = register(&self.actions, &registration)?;
        let (tx, rx) = mpsc::channel(64);
        let concurrency = usize::try_from(registration.concurrency)
            .unwrap_or(1)
            .clamp(1, 1024);
        let session = self.jobs.open_session(
            &registration.name,
            names,
            caller.visible_to(),
            concurrency,
            tx,
        );
        tokio::spawn(self.jobs.clone().dispatch(session.clone()));
        let specs: Vec<(String, serde_json::Value)> = session
            .actions()
            .iter()
            .filter_map(|name| match self.actions.resolve(name) {
                Ok(crate::actions::Resolved::Async(action)) => Some((name.clone(), action.spec())),
                _ => None,
            })
            .collect();
        self.jobs.publish_actions(&specs).await;
        tokio::spawn(self.jobs.clone().keep_published(session.clone(), specs));
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(v1::WorkRequest {
                        message: Some(message),
                    })) => handle(&jobs, &session, message).await,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            jobs.close_session(&session).await;
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|a| Ok(assignment_proto(a))),
        )))
    }
}
