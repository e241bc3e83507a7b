//! The web console (`STREAMER_CONSOLE_ADDR`): one page, built from the
//! TypeScript in `control-plane/console/` and embedded in the binary, that
//! talks to the very gRPC services of the gRPC port through gRPC-Web
//! (`tonic-web`), on the same origin. Every call goes through the same
//! interceptors and the same tenant checks as a call from grpcurl: the page
//! holds the operator's token and sends it as `authorization` metadata.
//!
//! Besides the gRPC-Web routes there are only the page's assets and, under
//! `dev`, one helper for the page's client panel (`POST /console/dev/token`,
//! which needs a server token like any gRPC call and mints a client token
//! with `dev`'s own signing key).

mod assets;

use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::api::{
    auth::{Audience, Caller, TokenTable, Tokens},
    convert,
};

/// What `dev` lends the console's client panel: client tokens signed with
/// its own key, and where its gateway listens.
pub trait DevClients: Send + Sync + 'static {
    /// A client token for `user_id` of `tenant_id` with every permission.
    fn mint(&self, tenant_id: &str, user_id: &str) -> Result<String, String>;
    /// The gateway's WebSocket URL, with the stage.
    fn websocket_url(&self) -> String;
}

/// The largest body the page's routes take.
const DEV_TOKEN_MAX_BYTES: usize = 4096;
/// The largest gRPC-Web request body (the gRPC port's message limit plus
/// framing).
const GRPC_WEB_MAX_BYTES: usize = 4 * 1024 * 1024 + 1024;

/// How long a token minted for the client panel is valid, in seconds.
pub const DEV_CLIENT_TOKEN_TTL_SECS: u64 = 3600;

#[derive(Clone)]
struct Shared {
    tokens: Tokens,
    dev: Option<Arc<dyn DevClients>>,
}

/// The console's routes: the page, its assets, `dev`'s helper and the gRPC
/// services behind the gRPC-Web translation.
pub fn router(
    grpc: tonic::service::Routes,
    tokens: Tokens,
    dev: Option<Arc<dyn DevClients>>,
) -> Router {
    let shared = Shared {
        tokens: tokens.clone(),
        dev,
    };
    let page = Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/console/info", get(info))
        .route("/console/dev/token", post(dev_token))
        .with_state(shared);
    // A declared length over a route's limit is refused before any body
    // is read (a helper call is a few hundred bytes; gRPC-Web messages are
    // bounded like the gRPC port's, 4 MiB).
    let page = streamer_listener::limit_body(page, DEV_TOKEN_MAX_BYTES);
    let grpc_web = streamer_listener::limit_body(
        grpc.prepare()
            .into_axum_router()
            .layer(crate::api::audit::Audit::new(tokens, "grpc-web"))
            .layer(tonic_web::GrpcWebLayer::new()),
        GRPC_WEB_MAX_BYTES,
    );
    page.merge(grpc_web)
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
}

/// Serves `router` on `listener` under `limits` (and TLS when given) until
/// `shutdown` resolves; connections in flight then get a few seconds to
/// finish. The listener is hardened like every HTTP port
/// ([`streamer_listener`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: streamer_listener::Limits,
    tls: Option<streamer_listener::tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    streamer_listener::serve(listener, router, limits, tls, shutdown).await
}

/// Same-origin only, no framing, no referrer: the page runs its own script
/// and styles, talks to its own origin, and (in `dev`) to the gateway's
/// WebSocket.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}

#[derive(Serialize)]
struct Info {
    /// Whether the client panel can mint tokens (under `dev`).
    dev: bool,
    /// The gateway's WebSocket URL, under `dev`.
    #[serde(skip_serializing_if = "Option::is_none")]
    websocket_url: Option<String>,
    /// Who the `authorization` header names (the token's name, never the
    /// token), when it names someone of the server API.
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    /// Their role: `admin`, `read` or `service`.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    /// The tenant a bound service token is restricted to.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
}

async fn info(State(shared): State<Shared>, headers: HeaderMap) -> Json<Info> {
    // Only to show who is signed in and hide what their role cannot do;
    // the server still refuses it on every call.
    let caller = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| shared.tokens.current().identify(Some(value), false).ok())
        .filter(|c| !matches!(c, Caller::Edge));
    Json(Info {
        dev: shared.dev.is_some(),
        websocket_url: shared.dev.as_ref().map(|dev| dev.websocket_url()),
        principal: caller.as_ref().map(|c| c.principal().to_owned()),
        role: caller.as_ref().map(Caller::role),
        tenant_id: caller.as_ref().and_then(Caller::visible_to),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    tenant_id: String,
    user_id: String,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    websocket_url: String,
    expires_in: u64,
}

/// A refused helper call: its status and a message for people.
struct Refusal(StatusCode, String);

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// A domain refusal as an HTTP one (`other` for everything but a tenant the
/// caller may not reach).
fn refusal(fault: crate::error::Fault, other: StatusCode) -> Refusal {
    let status = tonic::Status::from(fault);
    let code = match status.code() {
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => other,
    };
    Refusal(code, status.message().to_owned())
}

/// Who the `authorization` header says is calling, with the rules of the
/// gRPC server API.
fn caller(tokens: &TokenTable, headers: &HeaderMap) -> Result<Caller, Refusal> {
    let mut probe = tonic::Request::new(());
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
    {
        probe.metadata_mut().insert("authorization", value);
    }
    let caller = tokens.authenticate(&probe, Audience::Server);
    // The helper is no gRPC call, so the audit layer does not see it: its
    // record is written here (refused or allowed; the helper's handler
    // answers the rest).
    let principal = tokens
        .identify(headers.get(header::AUTHORIZATION), false)
        .ok();
    tracing::info!(
        target: "streamer::audit",
        log_group = crate::api::audit::AUDIT_LOG_GROUP,
        principal = principal.as_ref().map_or("-", Caller::principal),
        role = principal.as_ref().map_or("-", Caller::role),
        method = "POST /console/dev/token",
        code = if caller.is_ok() { "Ok" } else { "Unauthenticated" },
        transport = "http",
        "audit"
    );
    caller.map_err(|fault| refusal(fault, StatusCode::UNAUTHORIZED))
}

async fn dev_token(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TokenResponse>, Refusal> {
    let Some(dev) = shared.dev.as_ref() else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            "the client panel is only available under `dev`".into(),
        ));
    };
    let caller = caller(&shared.tokens.current(), &headers)?;
    let Json(request) = body.map_err(|rejection| {
        Refusal(
            rejection.status(),
            format!(
                "expected {{\"tenant_id\":..., \"user_id\":...}}: {}",
                rejection.body_text()
            ),
        )
    })?;
    convert::tenant(&request.tenant_id)
        .and_then(|_| convert::user(&request.user_id))
        .and_then(|_| caller.check_tenant(&request.tenant_id))
        .map_err(|fault| refusal(fault, StatusCode::BAD_REQUEST))?;
    let token = dev
        .mint(&request.tenant_id, &request.user_id)
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot mint a client token for the console");
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot mint a client token".into(),
            )
        })?;
    Ok(Json(TokenResponse {
        token,
        websocket_url: dev.websocket_url(),
        expires_in: DEV_CLIENT_TOKEN_TTL_SECS,
    }))
}
