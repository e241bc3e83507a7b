//! The API Gateway Management API.
//!
//! `PostToConnection`, the call every recipient of every broadcast costs, is
//! sent on a hyper HTTP/1.1 keep-alive pool (rustls for `https` endpoints)
//! and signed by [`Signer`] with cached key, date and payload hash: a
//! profile put the SDK's per-call machinery (interceptors, config layering,
//! type-erased boxes, allocation) at ~138 µs of CPU per call against ~25 µs
//! for this path. The rare `GetConnection` and `DeleteConnection` go through
//! the AWS SDK client, one per endpoint. Credentials come from the same
//! `aws-config` provider chain either way (resolved once, refreshed before
//! expiry, session tokens sent).

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::{
    Client,
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
};
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{
    Attempt, BatchAttempt, Delivery, DeliveryError, Endpoint, Outcome, PreparedFrame,
    signer::Signer,
};
use crate::{
    config::DeliveryConfig,
    metrics::{OperationLabel, metrics},
};

/// HTTPS (platform roots) or HTTP, as the URL says.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// What the lean path sends as `user-agent`.
const USER_AGENT: &str = concat!("streamer/", env!("CARGO_PKG_VERSION"));

/// The Management API of every endpoint the registry names.
pub struct ManagementApi {
    sdk: aws_config::SdkConfig,
    clients: DashMap<Arc<str>, Client>,
    http: HttpClient<Connector, Full<Bytes>>,
    signer: Signer,
    /// Signs calls to Streamer's own gateways, when they have a key pair
    /// of their own (`STREAMER_GATEWAY_SIGNING_*`).
    gateway_signer: Option<Signer>,
    config: DeliveryConfig,
    /// Each endpoint's batch limit (0: none) and until when it holds.
    batch_limits: DashMap<Arc<str>, (usize, std::time::Instant)>,
}

/// The batch call's body type (`streamer-gateway`'s `@batch`).
const BATCH_CONTENT_TYPE: &str = "application/x-streamer-batch";
/// How long what an endpoint announced is trusted.
const CAPABILITIES_FOR: std::time::Duration = std::time::Duration::from_secs(300);
/// How soon an endpoint that could not be asked is asked again.
const UNKNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `authority` is an AWS endpoint (API Gateway has no batch call:
/// never asked).
fn is_aws(authority: &str) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.to_ascii_lowercase().ends_with(".amazonaws.com")
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("endpoints", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// An HTTP/1.1 connector for `https://` (platform roots) and `http://`.
pub(crate) fn connector() -> Connector {
    connector_trusting(None)
}

/// [`connector`] trusting `extra` CAs beside the platform's roots.
pub(crate) fn connector_trusting(extra: Option<&rustls::RootCertStore>) -> Connector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "a platform root certificate could not be read");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 && extra.is_none() {
        tracing::warn!("no platform root certificates; https endpoints will fail");
    }
    if let Some(extra) = extra {
        roots.extend(extra.roots.iter().cloned());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        Err(err) => {
            tracing::error!(error = %err, "no TLS versions; https endpoints will fail");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl ManagementApi {
    /// Uses `sdk` (credentials, region) for every endpoint.
    pub fn new(sdk: aws_config::SdkConfig, config: DeliveryConfig) -> Self {
        let provider = sdk.credentials_provider().unwrap_or_else(|| {
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("", "", None, None, "none"),
            )
        });
        let region = sdk
            .region()
            .map_or_else(|| "us-east-1".to_owned(), |r| r.to_string());
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.concurrency.max(1))
            .build(connector_trusting(config.gateway_ca.as_ref()));
        let gateway_signer = config.gateway_signing.as_ref().map(|pair| {
            Signer::new(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        pair.access_key_id.clone(),
                        pair.secret_access_key.clone(),
                        None,
                        None,
                        "streamer-gateway-signing",
                    ),
                ),
                &region,
            )
        });
        Self {
            gateway_signer,
            signer: Signer::new(provider, &region),
            sdk,
            clients: DashMap::new(),
            http,
            config,
            batch_limits: DashMap::new(),
        }
    }

    /// The signer for `endpoint`: AWS's credentials for AWS, the gateways'
    /// pair (when set) for Streamer's own gateways.
    fn signer_for(&self, endpoint: &Endpoint) -> &Signer {
        match &self.gateway_signer {
            Some(own) if !is_aws(&endpoint.authority) => own,
            _ => &self.signer,
        }
    }

    /// A signed request for `method` on `path` (the whole wire path),
    /// carrying `body` (hashed as `hash`) of `content_type`; public for the
    /// tests that send what this client never would.
    #[allow(clippy::too_many_arguments)]
    pub async fn signed(
        &self,
        endpoint: &Endpoint,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
        hash: &str,
        time: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, DeliveryError> {
        let signer = self.signer_for(endpoint);
        let credentials = signer.credentials().await?;
        let length = body.len().to_string();
        let signature = signer.sign(
            &credentials,
            time,
            method,
            path,
            &[
                ("content-length", &length),
                ("content-type", content_type),
                ("host", &endpoint.authority),
            ],
            hash,
        );
        let scheme = if endpoint.https { "https" } else { "http" };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{scheme}://{}{path}", endpoint.authority))
            .header(http::header::HOST, &endpoint.authority)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, length)
            .header("x-amz-date", &signature.amz_date)
            .header(http::header::AUTHORIZATION, &signature.authorization)
            .header(http::header::USER_AGENT, USER_AGENT);
        if let Some(token) = &signature.session_token {
            request = request.header("x-amz-security-token", token);
        }
        request
            .body(Full::new(body))
            .map_err(|err| DeliveryError(format!("cannot build the request: {err}")))
    }

    /// Asks the endpoint what it offers: `Some(ids per batch call)` (0 when
    /// it answers but offers none), `None` when it could not be asked.
    async fn ask_batch_limit(&self, endpoint: &Endpoint) -> Option<usize> {
        let path = format!("{}/@capabilities", endpoint.base_path);
        let empty = super::signer::payload_hash(b"");
        let request = self
            .signed(
                endpoint,
                "GET",
                &path,
                "application/json",
                Bytes::new(),
                &empty,
                SystemTime::now(),
            )
            .await
            .ok()?;
        let response = tokio::time::timeout(self.config.call_timeout, self.http.request(request))
            .await
            .ok()?
            .ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        if status >= 500 || status == 429 {
            return None;
        }
        if status != 200 {
            return Some(0);
        }
        let announced: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let max_ids = announced
            .pointer("/batch/max_ids")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        Some(max_ids)
    }

    fn client(&self, endpoint: &str) -> Client {
        if let Some(client) = self.clients.get(endpoint) {
            return client.clone();
        }
        let mut builder = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk);
        if let Some(pair) = &self.config.gateway_signing
            && Endpoint::parse(endpoint).is_some_and(|e| !is_aws(&e.authority))
        {
            builder = builder.credentials_provider(aws_credential_types::Credentials::new(
                pair.access_key_id.clone(),
                pair.secret_access_key.clone(),
                None,
                None,
                "streamer-gateway-signing",
            ));
        }
        let config = builder
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

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        metrics()
            .management_api_duration
            .get_or_create(&OperationLabel { operation })
            .observe(started.elapsed());
        out
    }

    /// The `PostToConnection` request this path sends (for tests that hold
    /// it against the SDK's).
    pub async fn post_request(
        &self,
        endpoint: &Endpoint,
        connection_id: &str,
        frame: &PreparedFrame,
        time: SystemTime,
    ) -> Result<http::Request<Full<Bytes>>, DeliveryError> {
        let path = super::signer::connection_path(&endpoint.base_path, connection_id);
        self.signed(
            endpoint,
            "POST",
            &path,
            "application/octet-stream",
            frame.bytes.clone(),
            &frame.hash,
            time,
        )
        .await
    }
}

/// AWS's error type of an answer (`x-amzn-errortype`, before any `:`).
fn error_type(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(':').next().unwrap_or(v).to_owned())
}

/// The outcome of a `PostToConnection` answer.
fn classify(status: u16, error_type: Option<&str>) -> Attempt {
    match (status, error_type) {
        (200..=299, _) => Attempt::Done(Outcome::Delivered),
        (410, _) | (_, Some("GoneException")) => Attempt::Done(Outcome::Gone),
        (413, _) | (_, Some("PayloadTooLargeException")) => Attempt::Done(Outcome::TooLarge),
        (429, _) | (_, Some("LimitExceededException")) => Attempt::Throttled,
        (500.., _) => Attempt::Retryable,
        _ => Attempt::Done(Outcome::Failed),
    }
}

#[async_trait]
impl Delivery for ManagementApi {
    async fn post(
        &self,
        endpoint: &Endpoint,
        connection_id: &str,
        frame: &PreparedFrame,
    ) -> Attempt {
        let request = match self
            .post_request(endpoint, connection_id, frame, SystemTime::now())
            .await
        {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(error = %err, "cannot sign PostToConnection");
                return Attempt::Done(Outcome::Failed);
            }
        };
        match self.http.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let error_type = error_type(response.headers());
                // Read the (small) body so the connection goes back to the pool.
                let _ = response.into_body().collect().await;
                let attempt = classify(status, error_type.as_deref());
                if status == 403 {
                    tracing::warn!(endpoint = %endpoint.raw, "the gateway refused the request's signature or credentials");
                }
                attempt
            }
            // Refused, reset or timed out: another attempt may get through.
            Err(_) => Attempt::Retryable,
        }
    }

    async fn batch_limit(&self, endpoint: &Endpoint) -> usize {
        if self.config.batch_size == 0 || is_aws(&endpoint.authority) {
            return 0;
        }
        let now = std::time::Instant::now();
        if let Some(known) = self.batch_limits.get(&endpoint.raw)
            && known.1 > now
        {
            return known.0;
        }
        let (limit, for_how_long) = match self.ask_batch_limit(endpoint).await {
            Some(limit) => (limit.min(self.config.batch_size), CAPABILITIES_FOR),
            None => (0, UNKNOWN_FOR),
        };
        if limit > 0 {
            tracing::debug!(endpoint = %endpoint.raw, limit, "the endpoint takes batch calls");
        }
        self.batch_limits
            .insert(endpoint.raw.clone(), (limit, now + for_how_long));
        limit
    }

    async fn post_batch(
        &self,
        endpoint: &Endpoint,
        connection_ids: &[Arc<str>],
        frame: &PreparedFrame,
    ) -> BatchAttempt {
        let ids_len: usize = connection_ids.iter().map(|id| id.len() + 1).sum();
        let mut body = bytes::BytesMut::with_capacity(ids_len + 1 + frame.bytes.len());
        for id in connection_ids {
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(b"\n");
        }
        body.extend_from_slice(b"\n");
        body.extend_from_slice(&frame.bytes);
        let body = body.freeze();
        let hash = super::signer::payload_hash(&body);
        let path = format!("{}/@batch", endpoint.base_path);
        let request = match self
            .signed(
                endpoint,
                "POST",
                &path,
                BATCH_CONTENT_TYPE,
                body,
                &hash,
                SystemTime::now(),
            )
            .await
        {
            Ok(request) => request,
            Err(err) => {
                tracing::warn!(error = %err, "cannot sign a batch call");
                return BatchAttempt::Whole(Attempt::Done(Outcome::Failed));
            }
        };
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(_) => return BatchAttempt::Whole(Attempt::Retryable),
        };
        let status = response.status().as_u16();
        let error_type = error_type(response.headers());
        let Ok(body) = response.into_body().collect().await.map(|b| b.to_bytes()) else {
            return BatchAttempt::Whole(Attempt::Retryable);
        };
        if status == 200 {
            #[derive(serde::Deserialize)]
            struct Answer {
                gone: Vec<String>,
            }
            return match serde_json::from_slice::<Answer>(&body) {
                Ok(answer) => BatchAttempt::Answered { gone: answer.gone },
                Err(_) => {
                    tracing::warn!(endpoint = %endpoint.raw, "a batch call's answer did not parse");
                    BatchAttempt::Whole(Attempt::Done(Outcome::Failed))
                }
            };
        }
        if status == 404 {
            // The gateway no longer offers it (an older one took over the
            // address): one PostToConnection each from now on.
            self.batch_limits.insert(
                endpoint.raw.clone(),
                (0, std::time::Instant::now() + CAPABILITIES_FOR),
            );
            return BatchAttempt::Whole(Attempt::Retryable);
        }
        if status == 403 {
            tracing::warn!(endpoint = %endpoint.raw, "the gateway refused the batch call's signature or credentials");
        }
        BatchAttempt::Whole(classify(status, error_type.as_deref()))
    }

    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<bool, DeliveryError> {
        let call = self
            .client(endpoint)
            .delete_connection()
            .connection_id(connection_id)
            .send();
        still_there(self.timed("delete_connection", call).await)
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
        still_there(self.timed("get_connection", call).await)
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

#[cfg(test)]
mod tests;
