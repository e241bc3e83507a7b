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
    actions::{Actions, ActionsError, AsyncAction, Scope},
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

/// One action a session serves: its name, the scope its definition is in,
/// and the definition.
type Served = (String, Scope, Arc<AsyncAction>);

/// The fault a refused definition is answered with.
fn refusal(err: ActionsError) -> Fault {
    match err {
        ActionsError::Differs { .. } => Fault::precondition(err.to_string()),
        ActionsError::TooMany { .. } => Fault::too_large(err.to_string()),
        other => Fault::invalid(other.to_string()),
    }
}

/// Gives back what a session registered.
fn release(actions: &Actions, served: &[Served], now_ms: i64) {
    for (name, scope, _) in served {
        actions.release(scope, name, now_ms);
    }
}

/// Registers the actions of a `Register` message in `scope` (the
/// processor's tenant, or the fleet): all of them, or none and why.
fn register(
    actions: &Actions,
    scope: &Scope,
    register: &v1::Register,
    now_ms: i64,
) -> Result<Vec<Served>, Fault> {
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
    let mut served: Vec<Served> = Vec::new();
    for spec in &register.actions {
        let registered = json_or_null(&spec.schema_json, "schema_json")
            .map_err(Fault::invalid)
            .and_then(|schema| {
                AsyncAction::new(
                    &spec.name,
                    Some(spec.permission.clone()),
                    Some(&schema).filter(|s| !s.is_null()),
                    Some(u64::from(spec.lease_timeout_ms)),
                    Some(spec.max_attempts),
                )
                .map_err(refusal)
            })
            .and_then(|action| actions.register(scope, action, now_ms).map_err(refusal));
        match registered {
            Ok((action, defined_in)) => {
                if served.iter().any(|(name, _, _)| *name == spec.name) {
                    actions.release(&defined_in, &spec.name, now_ms);
                    continue;
                }
                served.push((spec.name.clone(), defined_in, action));
            }
            Err(fault) => {
                release(actions, &served, now_ms);
                return Err(fault);
            }
        }
    }
    Ok(served)
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
        let scope = Scope::of(caller.visible_to().as_deref());
        let served = register(&self.actions, &scope, &registration, self.jobs.now_ms())?;
        // Agreed across replicas too: one definition per name and scope.
        let specs: Vec<(Scope, String, serde_json::Value)> = served
            .iter()
            .filter(|(_, defined_in, _)| *defined_in == scope)
            .map(|(name, defined_in, action)| (defined_in.clone(), name.clone(), action.spec()))
            .collect();
        if let Err(why) = self.jobs.publish_actions(&specs).await {
            release(&self.actions, &served, self.jobs.now_ms());
            return Err(Fault::precondition(why).into());
        }
        let names = served.iter().map(|(name, _, _)| name.clone()).collect();
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
        tokio::spawn(self.jobs.clone().keep_published(session.clone(), specs));
        let jobs = self.jobs.clone();
        let actions = self.actions.clone();
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
            release(&actions, &served, jobs.now_ms());
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|a| Ok(assignment_proto(a))),
        )))
    }
}
