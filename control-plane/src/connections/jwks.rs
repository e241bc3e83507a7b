//! Client keys from a JWKS document (`STREAMER_JWT_JWKS_URL`): tokens pick
//! their key by `kid`; several keys hold at once, so an identity provider
//! rotates by publishing the new key beside the old, then dropping the old.
//!
//! The set is fetched at start, every `STREAMER_JWT_JWKS_REFRESH_SECS`, and
//! (at most once a minute) when a token names a `kid` the set lacks. A
//! document is taken whole or not at all: a malformed key, a duplicate or
//! missing `kid`, a key for an algorithm this deployment does not accept,
//! a document over 1 MiB, a redirect, an error status or a timeout each
//! leave the last good set in use, logged and counted
//! (`streamer_jwks_fetches_total{outcome}`) — never an outage. `https://`
//! only, except loopback addresses (tests and `dev`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HttpClient;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, JwkSet},
};

use crate::metrics::{ReasonLabel, metrics};

/// Largest JWKS document read.
const MAX_BYTES: usize = 1024 * 1024;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between fetches for an unknown `kid`.
const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(60);

/// A key of the set: the key, and the algorithm family it may verify.
#[derive(Clone)]
pub struct SetKey {
    /// The verification key.
    pub key: DecodingKey,
    /// Algorithms this key may be used with (of the accepted ones).
    pub algorithms: Vec<Algorithm>,
}

/// The key set and how to fetch it again.
pub struct Jwks {
    url: hyper::Uri,
    accepted: Vec<Algorithm>,
    http: HttpClient<crate::delivery::management_api::Connector, Empty<Bytes>>,
    keys: RwLock<Arc<HashMap<String, SetKey>>>,
    last_unknown_fetch: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may be fetched: `https://`, or `http://` to loopback.
pub fn check_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http")
            if host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(uri)
        }
        _ => Err("must be https:// (http:// only to a loopback address)".into()),
    }
}

fn family(algorithm: Algorithm) -> u8 {
    use Algorithm::*;
    match algorithm {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 1,
        ES256 | ES384 => 2,
        EdDSA => 3,
        _ => 0,
    }
}

/// The keys of a document, or why the whole document is refused.
pub fn parse(body: &[u8], accepted: &[Algorithm]) -> Result<HashMap<String, SetKey>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or("a key without a kid")?;
        let key_family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => 1,
            AlgorithmParameters::EllipticCurve(_) => 2,
            AlgorithmParameters::OctetKeyPair(_) => 3,
            _ => return Err(format!("key {kid:?} is a shared secret or an unknown type")),
        };
        let mut algorithms: Vec<Algorithm> = accepted
            .iter()
            .copied()
            .filter(|a| family(*a) == key_family)
            .collect();
        if let Some(named) = jwk.common.key_algorithm {
            let named: Algorithm = named.to_string().parse().map_err(|_| {
                format!("key {kid:?} names an algorithm this deployment does not accept")
            })?;
            if !accepted.contains(&named) {
                return Err(format!(
                    "key {kid:?} is for {named:?}, which this deployment does not accept"
                ));
            }
            algorithms = vec![named];
        }
        if algorithms.is_empty() {
            return Err(format!("key {kid:?} fits none of the accepted algorithms"));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        if keys
            .insert(kid.clone(), SetKey { key, algorithms })
            .is_some()
        {
            return Err(format!("kid {kid:?} appears twice"));
        }
    }
    Ok(keys)
}

impl Jwks {
    /// A set at `url` for the `accepted` algorithms, empty until fetched.
    pub fn new(url: &str, accepted: &[Algorithm]) -> Result<Self, String> {
        Ok(Self {
            url: check_url(url)?,
            accepted: accepted.to_vec(),
            http: HttpClient::builder(hyper_util::rt::TokioExecutor::new())
                .build(crate::delivery::management_api::connector()),
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_unknown_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key named `kid`, if the set holds it.
    pub fn key(&self, kid: &str) -> Option<SetKey> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// The key named `kid`; one the set lacks is looked for in a fresh
    /// fetch, at most once a minute.
    pub async fn key_or_fetch(&self, kid: &str) -> Option<SetKey> {
        if let Some(key) = self.key(kid) {
            return Some(key);
        }
        let due = {
            let mut last = self
                .last_unknown_fetch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            tracing::info!(kid = %kid.chars().take(64).collect::<String>(), "a token names a kid the key set lacks; fetching the set");
            self.refresh().await;
        }
        self.key(kid)
    }

    /// Fetches the set; on any failure the last good set stays. Returns
    /// whether a new set is in use.
    pub async fn refresh(&self) -> bool {
        let _one_at_a_time = self.fetching.lock().await;
        let outcome = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(Ok(keys)) => {
                let n = keys.len();
                *self
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                tracing::info!(keys = n, "client key set fetched");
                "ok"
            }
            Ok(Err(why)) => {
                tracing::warn!(url = %self.url, why = %why, "client key set refused; keeping the last good set");
                "refused"
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "client key set fetch timed out; keeping the last good set");
                "timeout"
            }
        };
        metrics()
            .jwks_fetches
            .get_or_create(&ReasonLabel { reason: outcome })
            .inc();
        outcome == "ok"
    }

    async fn fetch(&self) -> Result<HashMap<String, SetKey>, String> {
        let request = hyper::Request::get(self.url.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| format!("cannot fetch: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            // Redirects are not followed: the set is where it was said to be.
            return Err(format!("answered {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read the document (over {MAX_BYTES} bytes?): {e}"))?
            .to_bytes();
        parse(&body, &self.accepted)
    }

    /// Refreshes every `every` until the process ends.
    pub fn refresh_every(self: &Arc<Self>, every: Duration) {
        let jwks = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                jwks.refresh().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("ftp://127.0.0.1/jwks").is_err());
    }

    #[test]
    fn documents_are_taken_whole_or_not_at_all() {
        let rs = [Algorithm::RS256];
        assert!(parse(br#"{"keys":[]}"#, &rs).expect("empty").is_empty());
        assert!(parse(b"not json", &rs).is_err());
        assert!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#, &rs).is_err());
        assert!(
            parse(
                br#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB","kid":"bad"}]}"#,
                &rs
            )
            .is_err()
        );
    }
}
