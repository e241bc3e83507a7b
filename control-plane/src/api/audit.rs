//! The audit trail and the operators' roles, one layer in front of every
//! server-API call (the gRPC port and the console's gRPC-Web alike).
//!
//! Each call writes one record on the log target `streamer::audit` when it
//! ends: the principal (the token's name, never the token), its role, the
//! method, the tenant the call named (recorded by
//! [`super::auth::Caller::check_tenant`]), the gRPC outcome code, the peer
//! and the duration; never a payload. A refused credential writes one too
//! (`principal = "-"`). The edge protocol's calls are the clients' own
//! traffic, counted by metrics and traced, not audited one by one.
//!
//! A `read` operator calling anything but a read is refused here with
//! `PERMISSION_DENIED` before the service sees the call.

use std::{
    cell::RefCell,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::{auth::Tokens, transport::ConnInfo};

tokio::task_local! {
    static TENANT: RefCell<Option<String>>;
}

/// Records the tenant the call in progress names (a no-op outside one).
pub fn note_tenant(tenant_id: &str) {
    let _ = TENANT.try_with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| tenant_id.to_owned());
    });
}

/// The layer; `transport` is `grpc` or `grpc-web`.
#[derive(Debug, Clone)]
pub struct Audit {
    tokens: Tokens,
    transport: &'static str,
}

impl Audit {
    /// An audit layer over `tokens`.
    pub fn new(tokens: Tokens, transport: &'static str) -> Self {
        Self { tokens, transport }
    }
}

impl<S> tower::Layer<S> for Audit {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService {
            inner,
            audit: self.clone(),
        }
    }
}

/// The `log_group` field every audit record carries: the deployment's
/// log router sends records with it to the audit log group
/// (`/streamer/<stack>/audit`), every other line to the control plane's
/// (`deploy/template.yaml`, FireLens `log_group_template`).
pub const AUDIT_LOG_GROUP: &str = "audit";

/// The service of [`Audit`].
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    inner: S,
    audit: Audit,
}

/// What one record says, filled in as the call goes.
#[derive(Debug)]
pub struct Record {
    principal: String,
    role: &'static str,
    method: String,
    peer: Option<SocketAddr>,
    transport: &'static str,
    started: Instant,
    tenant: Option<String>,
}

impl Record {
    fn write(&self, code: &str) {
        tracing::info!(
            target: "streamer::audit",
            log_group = AUDIT_LOG_GROUP,
            principal = %self.principal,
            role = self.role,
            method = %self.method,
            tenant_id = self.tenant.as_deref().unwrap_or(""),
            code = %code,
            peer = %self.peer.map(|p| p.to_string()).unwrap_or_default(),
            transport = self.transport,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "audit"
        );
    }
}

/// A gRPC status code by its number, as the audit trail spells it.
fn code_name(code: &str) -> String {
    code.parse::<i32>()
        .map(|n| format!("{:?}", tonic::Code::from_i32(n)))
        .unwrap_or_else(|_| code.to_owned())
}

fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(code_name)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, B> tower::Service<http::Request<ReqBody>> for AuditService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<AuditBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let method = request.uri().path().to_owned();
        // The edge protocol and the health checks are not operator calls.
        let audited = !method.starts_with("/streamer.v1.EdgeService/")
            && !method.starts_with("/grpc.health.");
        if !audited {
            return Box::pin(async move {
                let response = inner.call(request).await?;
                Ok(response.map(|body| AuditBody::Inner { body, record: None }))
            });
        }
        let info = request.extensions().get::<ConnInfo>();
        let peer = info.and_then(|i| i.remote).or_else(|| {
            request
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        });
        let edge_certificate = info.is_some_and(|i| !i.client_names.is_empty());
        let identified = self.audit.tokens.current().identify(
            request.headers().get(http::header::AUTHORIZATION),
            edge_certificate,
        );
        let mut record = Record {
            principal: "-".into(),
            role: "-",
            method,
            peer,
            transport: self.audit.transport,
            started: Instant::now(),
            tenant: None,
        };
        if let Ok(caller) = &identified {
            record.principal = caller.principal().to_owned();
            record.role = caller.role();
        }
        if let Ok(caller) = &identified
            && !caller.may_call(&record.method)
        {
            record.write(&code_name("7"));
            let role = caller.role();
            return Box::pin(async move { Ok(denied(role)) });
        }
        Box::pin(async move {
            let tenant = RefCell::new(None);
            let (response, tenant) = TENANT
                .scope(tenant, async move {
                    let response = inner.call(request).await;
                    (response, TENANT.with(|t| t.borrow_mut().take()))
                })
                .await;
            record.tenant = tenant;
            let response = match response {
                Ok(response) => response,
                Err(err) => {
                    record.write("Unavailable");
                    return Err(err);
                }
            };
            // A trailers-only response (every refusal) has its status in
            // the headers; otherwise it comes in the trailers.
            if let Some(code) = grpc_status(response.headers()) {
                record.write(&code);
                return Ok(response.map(|body| AuditBody::Inner { body, record: None }));
            }
            Ok(response.map(|body| AuditBody::Inner {
                body,
                record: Some(record),
            }))
        })
    }
}

/// `PERMISSION_DENIED` as a trailers-only gRPC response.
fn denied<B>(role: &str) -> http::Response<AuditBody<B>> {
    let mut response = http::Response::new(AuditBody::Empty);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("7"));
    let message = format!("the {role} role may only read");
    if let Ok(value) = HeaderValue::from_str(&message.replace(' ', "%20")) {
        headers.insert("grpc-message", value);
    }
    response
}

/// A response body that writes its call's record when the trailers (and
/// with them the outcome) pass, or when it is dropped unfinished.
pub enum AuditBody<B> {
    /// The service's body.
    Inner {
        /// The body.
        body: B,
        /// The record still to write.
        record: Option<Record>,
    },
    /// A refusal made here.
    Empty,
}

impl<B> std::fmt::Debug for AuditBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBody").finish_non_exhaustive()
    }
}

impl<B> Drop for AuditBody<B> {
    fn drop(&mut self) {
        if let AuditBody::Inner {
            record: Some(record),
            ..
        } = self
        {
            // The client went away before the call ended.
            record.write("Cancelled");
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for AuditBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            AuditBody::Empty => Poll::Ready(None),
            AuditBody::Inner { body, record } => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                            && let Some(record) = record.take()
                        {
                            record.write(&code);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(record) = record.take() {
                            record.write("Unknown");
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(record) = record.take() {
                            record.write("Ok");
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AuditBody::Empty => true,
            AuditBody::Inner { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            AuditBody::Empty => http_body::SizeHint::with_exact(0),
            AuditBody::Inner { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named() {
        assert_eq!(code_name("0"), "Ok");
        assert_eq!(code_name("7"), "PermissionDenied");
        assert_eq!(code_name("16"), "Unauthenticated");
    }

    #[tokio::test]
    async fn the_tenant_noted_inside_a_call_is_the_calls() {
        let noted = TENANT
            .scope(RefCell::new(None), async {
                note_tenant("acme");
                note_tenant("other");
                TENANT.with(|t| t.borrow().clone())
            })
            .await;
        assert_eq!(noted.as_deref(), Some("acme"));
        // Outside a call: nothing happens, nothing panics.
        note_tenant("acme");
    }
}
