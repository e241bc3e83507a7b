//! The Lambda entry point shared by the three route binaries: build the
//! control-plane client once at cold start, then hand each event to
//! [`EdgeHandler`].
//!
//! The edge's credential is never in the function's settings: with
//! `STREAMER_EDGE_TOKEN_SECRET_ARN` the token is read from Secrets Manager
//! at cold start (and again every 15 minutes, so a rotation reaches warm
//! functions; the control plane accepts the previous value meanwhile);
//! with mutual TLS (`STREAMER_EDGE_TLS_CERT` / `_KEY`) the certificate is
//! the credential and no token is needed. `STREAMER_EDGE_TOKEN` still works
//! for local use.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use tokio::sync::RwLock;

use streamer_telemetry::{self as telemetry, LogFormat};

use crate::{
    client::{
        CALL_TIMEOUT, ClientError, ClientTls, EdgeCredentials, TLS_SETTINGS, edge_client_with,
    },
    handler::{EdgeHandler, Route},
};

/// How long a token read from Secrets Manager is used before it is read
/// again.
pub const SECRET_REFRESH: Duration = Duration::from_secs(15 * 60);

/// Reads the edge token (the secret's current value) from Secrets Manager.
pub async fn token_from_secret(arn: &str) -> Result<String, ClientError> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let secret = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| ClientError::Secret {
            arn: arn.to_owned(),
            why: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        })?;
    secret
        .secret_string()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ClientError::Secret {
            arn: arn.to_owned(),
            why: "the secret has no string value".into(),
        })
}

/// The edge's credentials from its settings: the token (from Secrets
/// Manager, or `STREAMER_EDGE_TOKEN`; none with a client certificate) and
/// TLS (`STREAMER_CONTROL_PLANE_CA`, `STREAMER_EDGE_TLS_CERT`, `_KEY`).
pub async fn credentials_from_env(
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<EdgeCredentials, ClientError> {
    let tls = ClientTls::from_lookup(lookup, TLS_SETTINGS.0, TLS_SETTINGS.1, TLS_SETTINGS.2)?;
    let token = match lookup("STREAMER_EDGE_TOKEN_SECRET_ARN").filter(|a| !a.is_empty()) {
        Some(arn) => Some(token_from_secret(&arn).await?),
        None => lookup("STREAMER_EDGE_TOKEN").filter(|t| !t.is_empty()),
    };
    if token.is_none() && tls.identity.is_none() {
        return Err(ClientError::MissingEnv(
            "STREAMER_EDGE_TOKEN_SECRET_ARN (or STREAMER_EDGE_TLS_CERT and _KEY for mutual TLS)",
        ));
    }
    Ok(EdgeCredentials { token, tls })
}

/// Builds the handler from the Lambda's environment:
/// `STREAMER_CONTROL_PLANE_URL`, the credentials ([`credentials_from_env`])
/// and the optional `STREAMER_MANAGEMENT_ENDPOINT`.
pub async fn handler_from_env(
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<EdgeHandler, ClientError> {
    let url = lookup("STREAMER_CONTROL_PLANE_URL")
        .ok_or(ClientError::MissingEnv("STREAMER_CONTROL_PLANE_URL"))?;
    let credentials = credentials_from_env(lookup).await?;
    let endpoint = lookup("STREAMER_MANAGEMENT_ENDPOINT").filter(|e| !e.is_empty());
    Ok(EdgeHandler::new(
        edge_client_with(&url, &credentials, CALL_TIMEOUT)?,
        endpoint,
    ))
}

/// Runs the Lambda for `route` until the runtime stops it.
pub async fn run(route: Route) -> Result<(), Error> {
    let telemetry = Arc::new(telemetry::init(LogFormat::Json, "streamer-edge"));
    let env = |name: &str| std::env::var(name).ok();
    let from_secret = env("STREAMER_EDGE_TOKEN_SECRET_ARN").is_some_and(|a| !a.is_empty());
    let handler = Arc::new(RwLock::new((handler_from_env(&env).await?, Instant::now())));
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let (handler, telemetry) = (handler.clone(), telemetry.clone());
            async move {
                if from_secret && handler.read().await.1.elapsed() >= SECRET_REFRESH {
                    match handler_from_env(&|name: &str| std::env::var(name).ok()).await {
                        Ok(fresh) => *handler.write().await = (fresh, Instant::now()),
                        Err(err) => tracing::warn!(error = %err, "cannot read the edge token again; keeping the one in use"),
                    }
                }
                let actual = Route::of(&event.payload);
                if actual != Some(route) {
                    tracing::warn!(
                        ?route,
                        ?actual,
                        "event for another route; handling it anyway"
                    );
                }
                let current = handler.read().await.0.clone();
                let response = current.handle(event.payload).await;
                // The runtime may freeze the process right after the response.
                telemetry.flush();
                Ok::<ApiGatewayProxyResponse, Error>(response)
            }
        },
    ))
    .await
}
