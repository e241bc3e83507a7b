//! Delivery through the API Gateway Management API (`PostToConnection`,
//! `DeleteConnection`), with the AWS SDK client the control plane uses on
//! AWS and against the local emulator alike.
//!
//! One SDK client per distinct endpoint, built once and cached; the SDK's own
//! retries are off because this module retries 429 / 5xx / network errors
//! itself with exponential backoff and full jitter, so it can tell throttled
//! from failed in the delivery report. 4xx other than 429 is never retried.

use std::{sync::Arc, time::Duration};

use aws_sdk_apigatewaymanagement::{
    Client,
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    primitives::Blob,
};
use dashmap::DashMap;
use rand::Rng;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Delivery, DeliveryError, Outcome};
use crate::{
    config::DeliveryConfig,
    metrics::{OperationLabel, metrics, timed},
};

/// The Management API, reached through cached SDK clients.
pub struct ManagementApi {
    sdk: aws_config::SdkConfig,
    clients: DashMap<Arc<str>, Client>,
    config: DeliveryConfig,
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("endpoints", &self.clients.len())
            .finish()
    }
}

enum Attempt {
    Done(Outcome),
    Retry(Outcome),
}

impl ManagementApi {
    /// Uses `sdk` (credentials, region, HTTP client) for every endpoint.
    pub fn new(sdk: aws_config::SdkConfig, config: DeliveryConfig) -> Self {
        Self {
            sdk,
            clients: DashMap::new(),
            config,
        }
    }

    /// The delivery settings in force.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    fn client(&self, endpoint: &str) -> Client {
        if let Some(client) = self.clients.get(endpoint) {
            return client.clone();
        }
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk)
            .endpoint_url(endpoint.to_string())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(self.config.call_timeout)
                    .build(),
            )
            .build();
        let client = Client::from_conf(config);
        self.clients
            .entry(Arc::from(endpoint))
            .or_insert(client)
            .clone()
    }

    fn histogram(
        &self,
        operation: &'static str,
    ) -> prometheus_client::metrics::histogram::Histogram {
        metrics()
            .management_api_duration
            .get_or_create(&OperationLabel { operation })
            .clone()
    }

    /// Exponential backoff with full jitter for the `attempt`-th retry.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

#[async_trait]
impl Delivery for ManagementApi {
    async fn post(&self, endpoint: &str, connection_id: &str, frame: Bytes) -> Outcome {
        let client = self.client(endpoint);
        let histogram = self.histogram("post_to_connection");
        let mut attempt = 0;
        loop {
            let call = client
                .post_to_connection()
                .connection_id(connection_id)
                .data(Blob::new(frame.to_vec()))
                .send();
            let result = timed(&histogram, call).await;
            let classified = match result {
                Ok(_) => Attempt::Done(Outcome::Delivered),
                Err(err) => classify(&err),
            };
            attempt += 1;
            match classified {
                Attempt::Done(outcome) => return outcome,
                Attempt::Retry(outcome) if attempt >= self.config.max_attempts => return outcome,
                Attempt::Retry(_) => tokio::time::sleep(self.backoff(attempt)).await,
            }
        }
    }

    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError> {
        let call = self
            .client(endpoint)
            .delete_connection()
            .connection_id(connection_id)
            .send();
        still_there(timed(&self.histogram("delete_connection"), call).await)
    }

    async fn is_connected(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> Result<bool, DeliveryError> {
        let call = self
            .client(endpoint)
            .get_connection()
            .connection_id(connection_id)
            .send();
        still_there(timed(&self.histogram("get_connection"), call).await)
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }
}

/// The answer of a call on one connection: `Ok(true)` when the gateway had
/// it, `Ok(false)` when it answered 410.
fn still_there<T, E: ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, SdkError<E, aws_sdk_apigatewaymanagement::config::http::HttpResponse>>,
) -> Result<bool, DeliveryError> {
    match result {
        Ok(_) => Ok(true),
        Err(err) if status(&err) == Some(410) || err.code() == Some("GoneException") => Ok(false),
        Err(err) => Err(DeliveryError(describe(&err))),
    }
}

fn status<E>(
    err: &SdkError<E, aws_sdk_apigatewaymanagement::config::http::HttpResponse>,
) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn describe<E: std::fmt::Debug>(
    err: &SdkError<E, aws_sdk_apigatewaymanagement::config::http::HttpResponse>,
) -> String {
    match status(err) {
        Some(code) => format!("http {code}"),
        None => format!("{err:?}").chars().take(200).collect(),
    }
}

fn classify<E: ProvideErrorMetadata>(
    err: &SdkError<E, aws_sdk_apigatewaymanagement::config::http::HttpResponse>,
) -> Attempt {
    match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => match (status(err), err.code()) {
            (Some(410), _) | (_, Some("GoneException")) => Attempt::Done(Outcome::Gone),
            (Some(413), _) | (_, Some("PayloadTooLargeException")) => {
                Attempt::Done(Outcome::TooLarge)
            }
            (Some(429), _) | (_, Some("LimitExceededException")) => {
                Attempt::Retry(Outcome::Throttled)
            }
            (Some(code), _) if code >= 500 => Attempt::Retry(Outcome::Failed),
            _ => Attempt::Done(Outcome::Failed),
        },
        // Timeouts and connection failures may succeed on another try.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Attempt::Retry(Outcome::Failed),
        _ => Attempt::Done(Outcome::Failed),
    }
}

/// The SDK configuration for talking to the local emulator: static local
/// credentials and a fixed region, so no credential or region lookup ever
/// leaves the machine (no instance-metadata calls).
pub async fn local_sdk_config() -> aws_config::SdkConfig {
    use aws_config::{BehaviorVersion, Region};
    use aws_sdk_apigatewaymanagement::config::Credentials;
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "streamer-local",
            "streamer-local-secret",
            None,
            None,
            "streamer-local",
        ))
        .load()
        .await
}
