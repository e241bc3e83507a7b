//! The gRPC channel from the edge to the control plane: built once (at cold
//! start in a Lambda), connected lazily, with short timeouts so that a
//! control plane that is down gives a fast, clean error instead of a hang.

use std::time::Duration;

pub use streamer_proto::auth::BearerToken;
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
}

/// The edge protocol client.
pub type EdgeClient = EdgeServiceClient<InterceptedService<Channel, BearerToken>>;

/// A lazily connected channel to `url` with the edge timeouts.
pub fn channel(url: &str) -> Result<Channel, ClientError> {
    channel_with_timeout(url, CALL_TIMEOUT)
}

/// A lazily connected channel to `url` whose calls give up after `call_timeout`.
pub fn channel_with_timeout(url: &str, call_timeout: Duration) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|_| ClientError::Url {
        url: url.to_owned(),
    })?;
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
    Ok(EdgeServiceClient::with_interceptor(
        channel_with_timeout(url, call_timeout)?,
        BearerToken::new(token).map_err(|_| ClientError::Token)?,
    ))
}
