//! SigV4 verification of Management API calls, as AWS does it: the
//! signature is recomputed with `aws-sigv4` (the AWS SDK's signer) over the
//! method, path, signed headers and body the emulator received, with the
//! configured local credentials, and compared. A forged or stale signature
//! gets what AWS answers: 403 `InvalidSignatureException`.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

/// The credentials and region the emulator's Management API accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCredentials {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// Region.
    pub region: String,
}

impl Default for LocalCredentials {
    fn default() -> Self {
        Self {
            access_key: "streamer-local".into(),
            secret_key: "streamer-local-secret".into(),
            region: "us-east-1".into(),
        }
    }
}

/// Why a call was refused, with AWS's error type and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `x-amzn-errortype`.
    pub error_type: &'static str,
    /// The message AWS gives.
    pub message: &'static str,
}

const SKEW: Duration = Duration::from_secs(15 * 60);

fn refusal(error_type: &'static str, message: &'static str) -> Refusal {
    Refusal {
        error_type,
        message,
    }
}

/// The parts of `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
fn parse(authorization: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let credential = credential?;
    let (access_key, scope) = credential.split_once('/')?;
    Some((access_key, scope, signed?, signature?))
}

/// Checks the signature of a request to the Management API.
pub fn verify(
    credentials: &LocalCredentials,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), Refusal> {
    let Some(authorization) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(refusal(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let Some((access_key, scope, signed, signature)) = parse(authorization) else {
        return Err(refusal(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        ));
    };
    if access_key != credentials.access_key {
        return Err(refusal(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    let Some(date) = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| chrono::NaiveDateTime::parse_from_str(d, "%Y%m%dT%H%M%SZ").ok())
    else {
        return Err(refusal(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let time = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(date.and_utc().timestamp()).unwrap_or(0));
    let skew = now.duration_since(time).unwrap_or_else(|e| e.duration());
    if skew > SKEW {
        return Err(refusal(
            "InvalidSignatureException",
            "Signature expired: the request time is too far from the server time.",
        ));
    }
    let expected_scope = format!(
        "{}/{}/execute-api/aws4_request",
        date.format("%Y%m%d"),
        credentials.region
    );
    if scope != expected_scope {
        return Err(refusal(
            "InvalidSignatureException",
            "Credential should be scoped to a valid region and service.",
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    let mut signed_headers = Vec::with_capacity(names.len());
    for name in &names {
        let Some(value) = headers.get(*name).and_then(|v| v.to_str().ok()) else {
            return Err(refusal(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            ));
        };
        signed_headers.push((*name, value));
    }
    let identity = Credentials::new(
        &credentials.access_key,
        &credentials.secret_key,
        headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        None,
        "emulator",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Sign exactly the headers the caller signed.
    settings.excluded_headers = Some(Vec::new());
    let Ok(params) = v4::SigningParams::builder()
        .identity(&identity)
        .region(&credentials.region)
        .name("execute-api")
        .time(time)
        .settings(settings)
        .build()
    else {
        return Err(refusal(
            "InvalidSignatureException",
            "Bad signing parameters.",
        ));
    };
    let hash = hex::encode(Sha256::digest(body));
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let Ok(request) = SignableRequest::new(
        method.as_str(),
        path,
        signed_headers
            .iter()
            .filter(|(n, _)| *n != "x-amz-date" && *n != "x-amz-security-token")
            .copied(),
        SignableBody::Precomputed(hash),
    ) else {
        return Err(refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    };
    let Ok(output) = sign(request, &params.into()) else {
        return Err(refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    };
    let expected = output.signature();
    if expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    {
        Ok(())
    } else {
        Err(refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ))
    }
}
