//! `RequestService`: long-running requests for services and operators.

use std::sync::Arc;

use serde_json::Value;
use streamer_proto::v1::{self, request_service_server::RequestService};
use tonic::{Request, Response, Status};

use super::{
    auth::Caller,
    convert::{self, page_size, timestamp},
    pagetoken::PageTokens,
};
use crate::{
    error::Fault,
    requests::{Jobs, queue},
};

fn status_of(status: queue::Status) -> v1::RequestStatus {
    match status {
        queue::Status::Queued => v1::RequestStatus::Queued,
        queue::Status::Running => v1::RequestStatus::Running,
        queue::Status::Completed => v1::RequestStatus::Completed,
        queue::Status::Failed => v1::RequestStatus::Failed,
        queue::Status::Cancelled => v1::RequestStatus::Cancelled,
        queue::Status::Expired => v1::RequestStatus::Expired,
    }
}

fn request_proto(r: &queue::Request) -> v1::Request {
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

/// The tenant and request id of a call, validated and checked against the
/// caller.
fn key<'a>(
    caller: &Caller,
    tenant_id: &'a str,
    request_id: &'a str,
) -> Result<(&'a str, &'a str), Fault> {
    let tenant_id = convert::tenant(tenant_id)?;
    let request_id = convert::request(request_id)?;
    caller.check_tenant(tenant_id)?;
    Ok((tenant_id, request_id))
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
        let (tenant_id, request_id) = key(caller, &r.tenant_id, &r.request_id)?;
        let found = self
            .jobs
            .get(tenant_id, request_id)
            .await
            .map_err(Fault::from)?
            .ok_or_else(|| Fault::not_found("request"))?;
        Ok(Response::new(v1::GetRequestResponse {
            request: Some(request_proto(&found)),
        }))
    }

    async fn list_requests(
        &self,
        request: Request<v1::ListRequestsRequest>,
    ) -> Result<Response<v1::ListRequestsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let tenant_id = convert::tenant(&r.tenant_id)?;
        caller.check_tenant(tenant_id)?;
        let status = match v1::RequestStatus::try_from(r.status) {
            Ok(v1::RequestStatus::Unspecified) => None,
            Ok(v1::RequestStatus::Queued) => Some(queue::Status::Queued),
            Ok(v1::RequestStatus::Running) => Some(queue::Status::Running),
            Ok(v1::RequestStatus::Completed) => Some(queue::Status::Completed),
            Ok(v1::RequestStatus::Failed) => Some(queue::Status::Failed),
            Ok(v1::RequestStatus::Cancelled) => Some(queue::Status::Cancelled),
            Ok(v1::RequestStatus::Expired) => Some(queue::Status::Expired),
            Err(_) => return Err(Fault::invalid("unknown status").into()),
        };
        let size = page_size(r.page_size)?;
        let key = format!("requests\0{}\0{}", tenant_id, r.status);
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(self.page_tokens.decode(&key, token).map_err(Fault::from)?),
        };
        let (page, next) = self
            .jobs
            .list(tenant_id, status, after.as_deref(), size)
            .await
            .map_err(Fault::from)?;
        Ok(Response::new(v1::ListRequestsResponse {
            requests: page.iter().map(request_proto).collect(),
            next_page_token: next
                .map(|n| self.page_tokens.encode(&key, &n))
                .unwrap_or_default(),
        }))
    }

    async fn list_processors(
        &self,
        request: Request<v1::ListProcessorsRequest>,
    ) -> Result<Response<v1::ListProcessorsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut processors: Vec<v1::ProcessorInfo> = self
            .jobs
            .sessions()
            .iter()
            .filter(|s| caller.tenant_filter().is_none_or(|t| s.tenant() == Some(t)))
            .map(|s| v1::ProcessorInfo {
                session_id: s.id.clone(),
                name: s.name().to_owned(),
                actions: s.actions().to_vec(),
                tenant_id: s.tenant().unwrap_or_default().to_owned(),
                concurrency: u32::try_from(s.concurrency()).unwrap_or(u32::MAX),
                in_flight: u32::try_from(s.in_flight()).unwrap_or(u32::MAX),
            })
            .collect();
        processors.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(Response::new(v1::ListProcessorsResponse { processors }))
    }

    async fn cancel_request(
        &self,
        request: Request<v1::CancelRequestRequest>,
    ) -> Result<Response<v1::CancelRequestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (tenant_id, request_id) = key(caller, &r.tenant_id, &r.request_id)?;
        let cancelled = self
            .jobs
            .cancel(tenant_id, request_id, None)
            .await
            .map_err(Fault::from)?;
        Ok(Response::new(v1::CancelRequestResponse {
            request: Some(request_proto(&cancelled)),
        }))
    }
}
