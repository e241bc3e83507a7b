//! SigV4 for `PostToConnection`, at the cost of one HMAC and two SHA-256 of
//! a few hundred bytes per request: the signing key is derived once per
//! day (and per access key), the date strings once per second, and the
//! payload hash once per frame (every recipient of a broadcast gets the same
//! body). The primitives are `aws-sigv4`'s (the SDK's own signer); the
//! canonical request is built here for this one request shape, and a test
//! checks it against the SDK's signature for the same request and time.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

use aws_credential_types::{
    Credentials,
    provider::{ProvideCredentials, SharedCredentialsProvider},
};
use sha2::{Digest, Sha256};

use crate::error::DeliveryError;

/// The service name API Gateway's Management API signs with.
pub const SERVICE: &str = "execute-api";
/// Credentials closer than this to their expiry are refreshed.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The hex SHA-256 of a request body.
pub fn payload_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// `20261129T031659Z` and `20261129` for a time.
fn dates(time: SystemTime) -> (String, String) {
    let date_time = chrono::DateTime::<chrono::Utc>::from(time);
    (
        date_time.format("%Y%m%dT%H%M%SZ").to_string(),
        date_time.format("%Y%m%d").to_string(),
    )
}

/// The canonical URI of a wire path: each byte outside the unreserved set
/// percent-encoded once more (`aws-sigv4`'s "double" encoding, which API
/// Gateway expects).
pub fn canonical_uri(wire_path: &str) -> String {
    aws_smithy_http::label::fmt_string(wire_path, aws_smithy_http::label::EncodingStrategy::Greedy)
}

/// The wire path of `PostToConnection` for `connection_id` below the
/// endpoint's `base_path` (the stage, e.g. `/prod`), encoded as the SDK
/// encodes it.
pub fn connection_path(base_path: &str, connection_id: &str) -> String {
    let id = aws_smithy_http::label::fmt_string(
        connection_id,
        aws_smithy_http::label::EncodingStrategy::Default,
    );
    format!("{}/@connections/{id}", base_path.trim_end_matches('/'))
}

struct Cache {
    credentials: Option<Credentials>,
    /// (day, access key id) → signing key.
    key: Option<(String, String, Vec<u8>)>,
    /// (second, amz date, day).
    date: Option<(u64, String, String)>,
}

/// Signs Management API requests for one region with cached state.
pub struct Signer {
    provider: SharedCredentialsProvider,
    region: String,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Everything a request needs from the signer: the date header and the
/// `Authorization` header (and the session token, if any).
#[derive(Debug, Clone)]
pub struct Signature {
    /// `x-amz-date`.
    pub amz_date: String,
    /// `authorization`.
    pub authorization: String,
    /// `x-amz-security-token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl Signer {
    /// A signer for `region`, with credentials from `provider` (the standard
    /// AWS provider chain on AWS; static local ones for the emulator).
    pub fn new(provider: SharedCredentialsProvider, region: &str) -> Self {
        Self {
            provider,
            region: region.to_owned(),
            cache: Mutex::new(Cache {
                credentials: None,
                key: None,
                date: None,
            }),
        }
    }

    /// The credentials to sign with: resolved once, then again only when
    /// they come close to their expiry.
    pub async fn credentials(&self) -> Result<Credentials, DeliveryError> {
        if let Ok(cache) = self.cache.lock()
            && let Some(creds) = &cache.credentials
            && creds
                .expiry()
                .is_none_or(|expiry| expiry > SystemTime::now() + REFRESH_BEFORE)
        {
            return Ok(creds.clone());
        }
        let fresh = self
            .provider
            .provide_credentials()
            .await
            .map_err(|err| DeliveryError(format!("no credentials to sign with: {err}")))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.credentials = Some(fresh.clone());
        }
        Ok(fresh)
    }

    /// Signs `POST {wire_path}` to `host` with `headers` (lowercase names,
    /// sorted, `host` and `x-amz-date` among them, values trimmed) at
    /// `time`; `headers` must not hold `x-amz-date` or the token, which the
    /// signer adds.
    pub fn sign(
        &self,
        credentials: &Credentials,
        time: SystemTime,
        method: &str,
        wire_path: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> Signature {
        let secs = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (amz_date, day, key) = {
            let mut cache = match self.cache.lock() {
                Ok(cache) => cache,
                Err(poisoned) => poisoned.into_inner(),
            };
            let (amz_date, day) = match &cache.date {
                Some((s, amz, day)) if *s == secs => (amz.clone(), day.clone()),
                _ => {
                    let (amz, day) = dates(time);
                    cache.date = Some((secs, amz.clone(), day.clone()));
                    (amz, day)
                }
            };
            let key = match &cache.key {
                Some((d, id, key)) if *d == day && id == credentials.access_key_id() => key.clone(),
                _ => {
                    let key = aws_sigv4::sign::v4::generate_signing_key(
                        credentials.secret_access_key(),
                        time,
                        &self.region,
                        SERVICE,
                    )
                    .as_ref()
                    .to_vec();
                    cache.key = Some((
                        day.clone(),
                        credentials.access_key_id().to_owned(),
                        key.clone(),
                    ));
                    key
                }
            };
            (amz_date, day, key)
        };
        let token = credentials.session_token();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        all.push(("x-amz-date", &amz_date));
        if let Some(token) = token {
            all.push(("x-amz-security-token", token));
        }
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut canonical = String::with_capacity(256 + payload_hash.len());
        canonical.push_str(method);
        canonical.push('\n');
        canonical.push_str(&canonical_uri(wire_path));
        canonical.push_str("\n\n");
        for (name, value) in &all {
            canonical.push_str(name);
            canonical.push(':');
            canonical.push_str(value.trim());
            canonical.push('\n');
        }
        canonical.push('\n');
        let signed_headers = all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(";");
        canonical.push_str(&signed_headers);
        canonical.push('\n');
        canonical.push_str(payload_hash);
        let scope = format!("{day}/{}/{SERVICE}/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let signature = aws_sigv4::sign::v4::calculate_signature(&key, string_to_sign.as_bytes());
        Signature {
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                credentials.access_key_id()
            ),
            amz_date,
            session_token: token.map(str::to_owned),
        }
    }
}
