//! The gRPC channel from the edge to the control plane: built once (at cold
//! start in a Lambda), connected lazily, with short timeouts so that a
//! control plane that is down gives a fast, clean error instead of a hang.

use std::time::Duration;

pub use streamer_proto::auth::BearerToken;
pub use streamer_proto::tls::ClientTls;
use streamer_proto::v1::edge_service_client::EdgeServiceClient;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

/// Timeout for establishing the connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one edge call (well under API Gateway's 29 s integration limit).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the edge client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane url {url:?}")]
    Url { url: String },
    #[error("the edge token is not valid header text")]
    Token,
    #[error("{0} is not set")]
    MissingEnv(&'static str),
    #[error(transparent)]
    Tls(#[from] streamer_proto::tls::TlsSettingError),
    #[error("cannot read the edge token from Secrets Manager ({arn}): {why}")]
    Secret { arn: String, why: String },
}

/// The settings that name the edge's TLS material, for errors.
pub const TLS_SETTINGS: (&str, &str, &str) = (
    "STREAMER_CONTROL_PLANE_CA",
    "STREAMER_EDGE_TLS_CERT",
    "STREAMER_EDGE_TLS_KEY",
);

/// How the edge proves who it is to the control plane: its token (when
/// mutual TLS does not name it), and what its TLS trusts and presents.
#[derive(Debug, Clone, Default)]
pub struct EdgeCredentials {
    /// The edge token; `None` with a client certificate instead.
    pub token: Option<String>,
    /// TLS for an `https://` control plane.
    pub tls: ClientTls,
}

impl EdgeCredentials {
    /// Just a token (plaintext or platform-trusted TLS).
    pub fn token(token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            tls: ClientTls::default(),
        }
    }
}

/// The edge protocol client.
pub type EdgeClient = EdgeServiceClient<InterceptedService<Channel, BearerToken>>;

/// A lazily connected channel to `url` with the edge timeouts.
pub fn channel(url: &str) -> Result<Channel, ClientError> {
    channel_with_timeout(url, CALL_TIMEOUT)
}

/// A lazily connected channel to `url` whose calls give up after `call_timeout`.
pub fn channel_with_timeout(url: &str, call_timeout: Duration) -> Result<Channel, ClientError> {
    channel_with(url, &ClientTls::default(), call_timeout)
}

/// [`channel_with_timeout`] over TLS as `tls` says (for `https://`).
pub fn channel_with(
    url: &str,
    tls: &ClientTls,
    call_timeout: Duration,
) -> Result<Channel, ClientError> {
    if Endpoint::from_shared(url.to_owned()).is_err() {
        return Err(ClientError::Url {
            url: url.to_owned(),
        });
    }
    let endpoint = streamer_proto::tls::endpoint(url, tls, TLS_SETTINGS)?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT.min(call_timeout))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// An edge client for the control plane at `url`, authenticated with `token`.
pub fn edge_client(url: &str, token: &str) -> Result<EdgeClient, ClientError> {
    edge_client_with_timeout(url, token, CALL_TIMEOUT)
}

/// Like [`edge_client`], with another call timeout.
pub fn edge_client_with_timeout(
    url: &str,
    token: &str,
    call_timeout: Duration,
) -> Result<EdgeClient, ClientError> {
    edge_client_with(url, &EdgeCredentials::token(token), call_timeout)
}

/// An edge client for `url` with `credentials`.
pub fn edge_client_with(
    url: &str,
    credentials: &EdgeCredentials,
    call_timeout: Duration,
) -> Result<EdgeClient, ClientError> {
    let bearer = match &credentials.token {
        Some(token) => BearerToken::new(token).map_err(|_| ClientError::Token)?,
        None => BearerToken::none(),
    };
    Ok(EdgeServiceClient::with_interceptor(
        channel_with(url, &credentials.tls, call_timeout)?,
        bearer,
    ))
}
