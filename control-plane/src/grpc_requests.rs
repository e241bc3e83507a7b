//! The tonic services of long-running requests: `ProcessorService.Work`
//! (processors) and `RequestService` (services and operators).

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use serde_json::Value;
use streamer_proto::{
    ids,
    v1::{
        self, processor_service_server::ProcessorService, request_service_server::RequestService,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    actions::AsyncAction,
    error::ApiError,
    grpc::{page_size, timestamp},
    grpc_auth::Caller,
    jobs::{JobError, Jobs, Session},
    pagetoken::PageTokens,
    queue::{self, Failure, ProgressState, QueueError},
};

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        match err {
            QueueError::NotFound => ApiError::NotFound("request"),
            QueueError::Duplicate(_) => {
                ApiError::AlreadyExists("a request with this id exists".into())
            }
            QueueError::Conflict(current) => {
                ApiError::FailedPrecondition(format!("the request is {}", current.status.as_str()))
            }
            QueueError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "request queue unavailable");
                ApiError::Unavailable("request queue unavailable, retry later".into())
            }
        }
    }
}

fn status_of(status: queue::Status) -> v1::RequestStatus {
    match status {
        queue::Status::Queued => v1::RequestStatus::Queued,
        queue::Status::Running => v1::RequestStatus::Running,
        queue::Status::Completed => v1::RequestStatus::Completed,
        queue::Status::Failed => v1::RequestStatus::Failed,
        queue::Status::Cancelled => v1::RequestStatus::Cancelled,
    }
}

fn to_proto(r: &queue::Request) -> v1::Request {
    v1::Request {
        tenant_id: r.tenant_id.clone(),
        request_id: r.request_id.clone(),
        action: r.action.clone(),
        user_id: r.user_id.clone(),
        status: status_of(r.status) as i32,
        attempts: r.attempts,
        max_attempts: r.max_attempts,
        progress: r.progress.as_ref().map(|p| v1::Progress {
            percentage: p.percentage,
            message: p.message.clone(),
            details_json: p.details.as_ref().map(Value::to_string).unwrap_or_default(),
        }),
        result_json: r.result.as_ref().map(Value::to_string).unwrap_or_default(),
        error: r.error.as_ref().map(|e| v1::RequestError {
            code: e.code.clone(),
            message: e.message.clone(),
        }),
        created_at: Some(timestamp(r.created_ms)),
        updated_at: Some(timestamp(r.updated_ms)),
        payload_json: r.payload.to_string(),
    }
}

fn request_key(tenant_id: &str, request_id: &str) -> Result<(), ApiError> {
    if !ids::valid_tenant_id(tenant_id) {
        return Err(ApiError::InvalidArgument("tenant_id is required".into()));
    }
    if !ids::valid_request_id(request_id) {
        return Err(ApiError::InvalidArgument(
            "request_id is required (1 to 128 characters)".into(),
        ));
    }
    Ok(())
}

/// Requests for services and operators.
#[derive(Debug, Clone)]
pub struct RequestApi {
    jobs: Arc<Jobs>,
    page_tokens: PageTokens,
}

impl RequestApi {
    /// Serves the request API.
    pub fn new(jobs: Arc<Jobs>, page_tokens: PageTokens) -> Self {
        Self { jobs, page_tokens }
    }
}

#[tonic::async_trait]
impl RequestService for RequestApi {
    async fn get_request(
        &self,
        request: Request<v1::GetRequestRequest>,
    ) -> Result<Response<v1::GetRequestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        request_key(&r.tenant_id, &r.request_id)?;
        caller.check_tenant(&r.tenant_id)?;
        let found = self
            .jobs
            .queue()
            .get(&r.tenant_id, &r.request_id)
            .await
            .map_err(ApiError::from)?;
        let found = found.ok_or(ApiError::NotFound("request"))?;
        Ok(Response::new(v1::GetRequestResponse {
            request: Some(to_proto(&found)),
        }))
    }

    async fn list_requests(
        &self,
        request: Request<v1::ListRequestsRequest>,
    ) -> Result<Response<v1::ListRequestsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        if !ids::valid_tenant_id(&r.tenant_id) {
            return Err(ApiError::InvalidArgument("tenant_id is required".into()).into());
        }
        caller.check_tenant(&r.tenant_id)?;
        let status =
            match v1::RequestStatus::try_from(r.status).unwrap_or(v1::RequestStatus::Unspecified) {
                v1::RequestStatus::Unspecified => None,
                v1::RequestStatus::Queued => Some(queue::Status::Queued),
                v1::RequestStatus::Running => Some(queue::Status::Running),
                v1::RequestStatus::Completed => Some(queue::Status::Completed),
                v1::RequestStatus::Failed => Some(queue::Status::Failed),
                v1::RequestStatus::Cancelled => Some(queue::Status::Cancelled),
            };
        let size = page_size(r.page_size)?;
        let key = format!("requests\0{}\0{}", r.tenant_id, r.status);
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(
                self.page_tokens
                    .decode(&key, token)
                    .map_err(ApiError::from)?,
            ),
        };
        let (page, next) = self
            .jobs
            .queue()
            .list(&r.tenant_id, status, after.as_deref(), size)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::ListRequestsResponse {
            requests: page.iter().map(to_proto).collect(),
            next_page_token: next
                .map(|n| self.page_tokens.encode(&key, &n))
                .unwrap_or_default(),
        }))
    }

    async fn cancel_request(
        &self,
        request: Request<v1::CancelRequestRequest>,
    ) -> Result<Response<v1::CancelRequestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        request_key(&r.tenant_id, &r.request_id)?;
        caller.check_tenant(&r.tenant_id)?;
        let cancelled = self
            .jobs
            .cancel(&r.tenant_id, &r.request_id, None)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::CancelRequestResponse {
            request: Some(to_proto(&cancelled)),
        }))
    }
}

/// The processor work stream.
#[derive(Debug, Clone)]
pub struct ProcessorApi {
    jobs: Arc<Jobs>,
}

impl ProcessorApi {
    /// Serves processors.
    pub fn new(jobs: Arc<Jobs>) -> Self {
        Self { jobs }
    }
}

fn json_or_null(text: &str) -> Result<Value, Status> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|_| Status::invalid_argument("not valid JSON text"))
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<v1::WorkResponse, Status>> + Send>>;

/// Handles one message of a registered processor.
async fn handle(
    jobs: &Jobs,
    session: &Session,
    message: v1::work_request::Message,
) -> Result<(), Status> {
    use v1::work_request::Message;
    let result = match message {
        Message::Register(_) => return Err(Status::failed_precondition("already registered")),
        Message::Drain(_) => {
            session.drain();
            Ok(())
        }
        Message::Progress(p) => {
            let progress = p.progress.unwrap_or_default();
            let state = ProgressState {
                percentage: progress.percentage.min(100),
                message: progress.message,
                details: Some(json_or_null(&progress.details_json)?).filter(|d| !d.is_null()),
            };
            jobs.progress(session, &p.tenant_id, &p.request_id, state)
                .await
        }
        Message::Complete(c) => {
            jobs.complete(
                session,
                &c.tenant_id,
                &c.request_id,
                json_or_null(&c.result_json)?,
            )
            .await
        }
        Message::Fail(f) => {
            let code = if f.code.is_empty() {
                "PROCESSING_FAILED".to_owned()
            } else {
                f.code
            };
            let failure = Failure {
                code,
                message: f.message,
            };
            jobs.fail(session, &f.tenant_id, &f.request_id, failure, f.retryable)
                .await
        }
    };
    match result {
        Ok(()) => Ok(()),
        // Late messages for requests that moved on (cancelled, lease lost)
        // are dropped, not fatal to the stream.
        Err(
            JobError::NotHeld | JobError::Queue(QueueError::Conflict(_) | QueueError::NotFound),
        ) => {
            tracing::debug!("processor message for a request it no longer holds");
            Ok(())
        }
        Err(JobError::Queue(err)) => {
            tracing::warn!(error = %err, "cannot record processor message");
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl ProcessorService for ProcessorApi {
    type WorkStream = WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<v1::WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let mut inbound = request.into_inner();
        let Some(v1::WorkRequest {
            message: Some(v1::work_request::Message::Register(register)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        if register.actions.is_empty() {
            return Err(Status::invalid_argument("register at least one action"));
        }
        let mut names = Vec::new();
        for spec in register.actions {
            let schema = json_or_null(&spec.schema_json)?;
            let action = AsyncAction::new(
                &spec.name,
                Some(spec.permission),
                Some(&schema).filter(|s| !s.is_null()),
                Some(u64::from(spec.lease_timeout_ms)),
                Some(spec.max_attempts),
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.jobs
                .actions()
                .register_async(action)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            names.push(spec.name);
        }
        let (tx, rx) = mpsc::channel(64);
        let concurrency = usize::try_from(register.concurrency)
            .unwrap_or(1)
            .clamp(1, 1024);
        let session = self.jobs.open_session(
            &register.name,
            names,
            caller.tenant_filter().map(str::to_owned),
            concurrency,
            tx,
        );
        tokio::spawn(self.jobs.clone().dispatch(session.clone()));
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(v1::WorkRequest {
                        message: Some(message),
                    })) => {
                        if let Err(status) = handle(&jobs, &session, message).await {
                            tracing::warn!(error = %status.message(), "bad processor message");
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            jobs.close_session(&session).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
