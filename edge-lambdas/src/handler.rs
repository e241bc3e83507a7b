//! The route handlers: one API Gateway WebSocket event in, one gRPC call to
//! the control plane, one Lambda proxy response out. The same code runs in
//! the Lambdas and in the local emulator.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use aws_lambda_events::{
    apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest},
    encodings::Body,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use streamer_proto::{
    client::{self as frames, ClientError as FrameError, ErrorCode, Frame},
    v1,
};
use streamer_telemetry::inject;

use crate::client::{CALL_TIMEOUT, EdgeClient};

/// How long the compensating `Disconnect` after a failed connect may take.
const COMPENSATE_TIMEOUT: Duration = Duration::from_secs(2);

/// The three WebSocket routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `$connect`
    Connect,
    /// `$disconnect`
    Disconnect,
    /// `$default` (every client message)
    Default,
}

impl Route {
    /// The route an event belongs to, from `eventType` (or `routeKey`).
    pub fn of(event: &ApiGatewayWebsocketProxyRequest) -> Option<Self> {
        let ctx = &event.request_context;
        match (ctx.event_type.as_deref(), ctx.route_key.as_deref()) {
            (Some("CONNECT"), _) | (_, Some("$connect")) => Some(Route::Connect),
            (Some("DISCONNECT"), _) | (_, Some("$disconnect")) => Some(Route::Disconnect),
            (Some("MESSAGE"), _) | (_, Some(_)) => Some(Route::Default),
            _ => None,
        }
    }
}

/// Handles events with one control-plane client.
#[derive(Debug, Clone)]
pub struct EdgeHandler {
    clients: Arc<[EdgeClient]>,
    next: Arc<AtomicUsize>,
    management_endpoint: Option<String>,
    call_timeout: Duration,
}

fn response(status: u16, body: Option<String>, headers: HeaderMap) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = body.map(Body::Text);
    response
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// Whether a failed call never reached the control plane (no connection
/// could be made), so another replica may take it.
fn never_arrived(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error")
            || status.message().contains("Connection refused"))
}

fn unavailable() -> FrameError {
    FrameError::new(
        ErrorCode::ServiceUnavailable,
        "service temporarily unavailable, retry later",
    )
}

impl EdgeHandler {
    /// A handler calling the control plane through `client`.
    /// `management_endpoint` overrides the endpoint derived from the event
    /// (`https://{domainName}/{stage}`), e.g. for custom domains or the
    /// local emulator.
    pub fn new(client: EdgeClient, management_endpoint: Option<String>) -> Self {
        Self::spread(vec![client], management_endpoint)
    }

    /// A handler spreading its events over several control-plane replicas,
    /// each event to the next, as independent Lambda instances behind one
    /// API do (one connection's events reach different replicas).
    pub fn spread(clients: Vec<EdgeClient>, management_endpoint: Option<String>) -> Self {
        assert!(!clients.is_empty(), "at least one control-plane client");
        Self {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
            management_endpoint,
            call_timeout: CALL_TIMEOUT,
        }
    }

    /// The client for the next event.
    fn client(&self) -> EdgeClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// Makes one call on the next replica; when that replica cannot be
    /// reached at all (the call never got there), on the one after, as a
    /// load balancer would route around a dead target.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(EdgeClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = None;
        for _ in 0..self.clients.len() {
            match call(self.client()).await {
                Err(status) if never_arrived(&status) => last = Some(status),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no control plane")))
    }

    /// The same handler, for a client whose calls give up after
    /// `call_timeout` (the connect deadline sent to the control plane).
    pub fn with_call_timeout(mut self, call_timeout: Duration) -> Self {
        self.call_timeout = call_timeout;
        self
    }

    /// Handles one event of any route.
    pub async fn handle(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        match Route::of(&event) {
            Some(Route::Connect) => self.connect(event).await,
            Some(Route::Disconnect) => self.disconnect(event).await,
            Some(Route::Default) => self.message(event).await,
            None => {
                tracing::error!("event without eventType or routeKey");
                response(400, None, HeaderMap::new())
            }
        }
    }

    fn endpoint(&self, event: &ApiGatewayWebsocketProxyRequest) -> String {
        if let Some(endpoint) = &self.management_endpoint {
            return endpoint.clone();
        }
        let ctx = &event.request_context;
        format!(
            "https://{}/{}",
            ctx.domain_name.as_deref().unwrap_or_default(),
            ctx.stage.as_deref().unwrap_or_default()
        )
    }

    /// `$connect`: accept (200) or return the control plane's rejection; 503
    /// when the control plane cannot be reached.
    #[tracing::instrument(name = "edge.connect", skip_all, fields(connection_id = event.request_context.connection_id.as_deref().unwrap_or_default()))]
    pub async fn connect(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let headers: HashMap<String, String> = event
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let query: HashMap<String, String> = event
            .query_string_parameters
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let ctx = &event.request_context;
        let user_agent = ctx
            .identity
            .user_agent
            .clone()
            .or_else(|| headers.get("user-agent").cloned())
            .unwrap_or_default();
        let request = v1::ConnectRequest {
            connection_id: ctx.connection_id.clone().unwrap_or_default(),
            endpoint: self.endpoint(&event),
            query,
            headers,
            source_ip: ctx.identity.source_ip.clone().unwrap_or_default(),
            user_agent,
            api_request_id: ctx.request_id.clone().unwrap_or_default(),
            deadline_unix_ms: SystemTime::now()
                .checked_add(self.call_timeout)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
        };
        let connection_id = request.connection_id.clone();
        let called = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.connect(inject(request)).await }
            })
            .await;
        match called {
            Ok(reply) => {
                let reply = reply.into_inner();
                if reply.accepted {
                    return response(200, None, HeaderMap::new());
                }
                let mut headers = json_headers();
                for (name, value) in &reply.headers {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::try_from(name.as_str()),
                        HeaderValue::try_from(value.as_str()),
                    ) {
                        headers.insert(name, value);
                    }
                }
                let status = u16::try_from(reply.status_code)
                    .ok()
                    .filter(|s| (400..600).contains(s))
                    .unwrap_or(403);
                response(status, Some(reply.body), headers)
            }
            Err(status) => {
                tracing::error!(code = ?status.code(), message = status.message(), cause = ?std::error::Error::source(&status), "control plane connect call failed");
                self.compensate(&connection_id, status.code()).await;
                response(
                    503,
                    Some(serde_json::json!({ "error": unavailable().to_json() }).to_string()),
                    json_headers(),
                )
            }
        }
    }

    /// After a connect whose outcome is unknown (timed out, reset), tells
    /// the control plane to forget the connection: API Gateway sends no
    /// `$disconnect` for a refused `$connect`, so nothing else would. The
    /// control plane also refuses or undoes a connect past its deadline;
    /// what both miss, the reconcile job removes (the gateway answers 410).
    async fn compensate(&self, connection_id: &str, code: tonic::Code) {
        use tonic::Code;
        if !matches!(
            code,
            Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable | Code::Unknown
        ) {
            return;
        }
        let request = v1::DisconnectRequest {
            connection_id: connection_id.to_owned(),
            reason: "connect failed at the edge".into(),
            ..Default::default()
        };
        let mut client = self.client();
        match tokio::time::timeout(COMPENSATE_TIMEOUT, client.disconnect(inject(request))).await {
            Ok(Ok(_)) => tracing::info!(connection_id, "forgot the connection of a failed connect"),
            _ => tracing::warn!(
                connection_id,
                "cannot forget the connection of a failed connect; reconcile will"
            ),
        }
    }

    /// `$disconnect`: best effort; API Gateway ignores the answer.
    #[tracing::instrument(name = "edge.disconnect", skip_all, fields(connection_id = event.request_context.connection_id.as_deref().unwrap_or_default()))]
    pub async fn disconnect(
        &self,
        event: ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let ctx = &event.request_context;
        let request = v1::DisconnectRequest {
            connection_id: ctx.connection_id.clone().unwrap_or_default(),
            status_code: ctx
                .disconnect_status_code
                .and_then(|c| i32::try_from(c).ok())
                .unwrap_or_default(),
            reason: ctx.disconnect_reason.clone().unwrap_or_default(),
            api_request_id: ctx.request_id.clone().unwrap_or_default(),
        };
        let called = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.disconnect(inject(request)).await }
            })
            .await;
        match called {
            Ok(_) => response(200, None, HeaderMap::new()),
            Err(status) => {
                tracing::error!(code = ?status.code(), message = status.message(), cause = ?std::error::Error::source(&status), "control plane disconnect call failed");
                response(503, None, HeaderMap::new())
            }
        }
    }

    /// `$default`: the reply frame, if any, is the route response body. When
    /// the control plane cannot be reached the client still gets an answer:
    /// a `SERVICE_UNAVAILABLE` error frame.
    #[tracing::instrument(name = "edge.message", skip_all, fields(connection_id = event.request_context.connection_id.as_deref().unwrap_or_default()))]
    pub async fn message(&self, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        let ctx = &event.request_context;
        let body = event.body.clone().unwrap_or_default();
        let request = v1::RouteRequest {
            connection_id: ctx.connection_id.clone().unwrap_or_default(),
            body,
            is_base64_encoded: event.is_base64_encoded,
            api_request_id: ctx.request_id.clone().unwrap_or_default(),
        };
        let called = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.route(inject(request)).await }
            })
            .await;
        match called {
            Ok(reply) => response(200, reply.into_inner().reply, HeaderMap::new()),
            Err(status) => {
                tracing::error!(code = ?status.code(), message = status.message(), cause = ?std::error::Error::source(&status), "control plane route call failed");
                let request_id = if event.is_base64_encoded {
                    None
                } else {
                    event.body.as_deref().and_then(frames::peek_request_id)
                };
                response(
                    200,
                    Some(Frame::error(request_id.as_deref(), &unavailable()).to_json()),
                    HeaderMap::new(),
                )
            }
        }
    }
}
