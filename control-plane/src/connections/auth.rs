//! Client authentication at `$connect`: strict JWT verification.
//!
//! Only the configured public-key algorithms are accepted (RS256 by default),
//! so `alg: none` and RS/HS confusion fail by construction. Every rejection
//! collapses to one client-facing answer; the reason is only logged.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::JwtConfig;

/// Longest token we even try to parse.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most permissions one token may carry.
const MAX_PERMISSIONS: usize = 64;

/// Why a key configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("STREAMER_JWT_ALGORITHMS: {0:?} need different key types; configure one family")]
    MixedFamilies(Vec<Algorithm>),
    #[error(
        "STREAMER_JWT_PUBLIC_KEY: not a valid {family} PEM public key (for STREAMER_JWT_ALGORITHMS {algorithms})"
    )]
    BadKey {
        family: &'static str,
        algorithms: String,
    },
    #[error("STREAMER_JWT_JWKS_URL: {0}")]
    Jwks(String),
}

/// Why a client token was refused. The variants are for logs and metrics;
/// clients only ever see "missing or invalid token".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("bad signature")]
    BadSignature,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("wrong issuer or audience")]
    IssuerOrAudience,
    #[error("missing or invalid claims")]
    Claims,
    #[error("malformed token")]
    Malformed,
    #[error("token lifetime over the limit")]
    TooLong,
    #[error("no key for this token's kid")]
    UnknownKey,
}

/// Who a verified token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub user_id: String,
    /// The `tenant_id` claim.
    pub tenant_id: String,
    /// The `permissions` claim (empty when absent).
    pub permissions: Vec<String>,
    /// The token's end (`exp`), milliseconds since the epoch.
    pub expires_at_ms: i64,
}

/// The claims Streamer reads.
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry (checked by `jsonwebtoken`; read here for the lifetime).
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: Option<u64>,
    /// The tenant.
    pub tenant_id: String,
    /// Granted permissions.
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// Verifies client tokens against one public key.
pub struct JwtVerifier {
    key: Option<DecodingKey>,
    validation: Validation,
    max_lifetime: Option<Duration>,
    jwks: Option<std::sync::Arc<super::jwks::Jwks>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(algorithm: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match algorithm {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Ed),
        _ => None,
    }
}

impl JwtVerifier {
    /// Builds a verifier; fails when the key does not parse or the algorithms
    /// do not all fit it.
    pub fn new(config: &JwtConfig) -> Result<Self, KeyError> {
        let families: HashSet<_> = config.algorithms.iter().map(|a| family(*a)).collect();
        let family = match families.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(family)] => *family,
            _ => return Err(KeyError::MixedFamilies(config.algorithms.clone())),
        };
        let pem = config.public_key_pem.as_bytes();
        let bad = |family| KeyError::BadKey {
            family,
            algorithms: config
                .algorithms
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        // With a key set only, there is no static key.
        let key = match family {
            _ if pem.is_empty() && config.jwks_url.is_some() => Ok(None),
            Family::Rsa => DecodingKey::from_rsa_pem(pem)
                .map(Some)
                .map_err(|_| bad("RSA")),
            Family::Ec => DecodingKey::from_ec_pem(pem)
                .map(Some)
                .map_err(|_| bad("EC")),
            Family::Ed => DecodingKey::from_ed_pem(pem)
                .map(Some)
                .map_err(|_| bad("Ed25519")),
        }?;
        let jwks = config
            .jwks_url
            .as_deref()
            .map(|url| super::jwks::Jwks::new(url, &config.algorithms).map(std::sync::Arc::new))
            .transpose()
            .map_err(KeyError::Jwks)?;
        let mut validation = Validation::new(config.algorithms[0]);
        validation.algorithms = config.algorithms.clone();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not just right
        // when present.
        let mut required = vec!["exp", "sub"];
        required.extend(config.issuer.as_ref().map(|_| "iss"));
        required.extend(config.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &config.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            key,
            validation,
            max_lifetime: config.max_lifetime,
            jwks,
        })
    }

    /// The key set, when one is configured (fetched by the app at start
    /// and on its interval).
    pub fn jwks(&self) -> Option<&std::sync::Arc<super::jwks::Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies a token and returns the identity it carries: with a key
    /// set, by the key its `kid` names (fetched when the set lacks it, at
    /// most once a minute); else, or without a `kid`, by the static key.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge);
        }
        let kid = match &self.jwks {
            Some(_) => {
                jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Malformed)?
                    .kid
            }
            None => None,
        };
        let from_set;
        let (key, validation) = match (&self.jwks, kid) {
            (Some(jwks), Some(kid)) => {
                let found = jwks.key_or_fetch(&kid).await.ok_or(AuthError::UnknownKey)?;
                let mut validation = self.validation.clone();
                validation.algorithms = found.algorithms;
                from_set = (found.key, validation);
                (&from_set.0, &from_set.1)
            }
            _ => (
                self.key.as_ref().ok_or(AuthError::UnknownKey)?,
                &self.validation,
            ),
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind::*;
            match err.kind() {
                ExpiredSignature => AuthError::Expired,
                ImmatureSignature => AuthError::NotYetValid,
                InvalidSignature => AuthError::BadSignature,
                InvalidAlgorithm | InvalidAlgorithmName | MissingAlgorithm => AuthError::Algorithm,
                InvalidIssuer | InvalidAudience => AuthError::IssuerOrAudience,
                MissingRequiredClaim(_) | InvalidClaimFormat(_) | Json(_) => AuthError::Claims,
                _ => AuthError::Malformed,
            }
        })?;
        let claims = data.claims;
        if let Some(max) = self.max_lifetime {
            // From `iat` when the token says; else what is left of it.
            let from = claims.iat.unwrap_or_else(wall_secs).min(claims.exp);
            if claims.exp - from > max.as_secs() + self.validation.leeway {
                return Err(AuthError::TooLong);
            }
        }
        if !streamer_proto::ids::valid_user_id(&claims.sub)
            || !streamer_proto::ids::valid_tenant_id(&claims.tenant_id)
            || claims.permissions.len() > MAX_PERMISSIONS
            || claims
                .permissions
                .iter()
                .any(|p| p.is_empty() || p.len() > streamer_proto::ids::MAX_ID_LEN)
        {
            return Err(AuthError::Claims);
        }
        Ok(Identity {
            user_id: claims.sub,
            tenant_id: claims.tenant_id,
            permissions: claims.permissions,
            expires_at_ms: i64::try_from(claims.exp)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        })
    }
}

/// Wall-clock seconds: `jsonwebtoken` checks `exp` against the system
/// clock, so the lifetime check reads the same one.
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Finds the client token in a `$connect` request: query parameter
/// `Authorization` or `token`, else the `Authorization` header; a `Bearer `
/// prefix is allowed everywhere.
pub fn token_from_request<'a>(
    query: &'a HashMap<String, String>,
    headers: &'a HashMap<String, String>,
) -> Option<&'a str> {
    let raw = query
        .get("Authorization")
        .or_else(|| query.get("authorization"))
        .or_else(|| query.get("token"))
        .or_else(|| headers.get("authorization"))?;
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = match raw.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => raw[7..].trim_start(),
        _ => raw,
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use streamer_test_kit::token::{Claims, generate_rsa_key_pair, keys, mint_rs256, now_secs};

    use super::*;

    fn verifier_config() -> JwtConfig {
        JwtConfig {
            public_key_pem: keys().public_pem.clone(),
            algorithms: vec![Algorithm::RS256],
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
            max_lifetime: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            any_issuer: false,
            any_audience: false,
        }
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..verifier_config()
        })
        .expect("verifier")
    }

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            tenant_id: "acme".into(),
            exp: now_secs() + 600,
            permissions: vec!["reports:*".into()],
            iss: None,
            aud: None,
            iat: None,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[tokio::test]
    async fn accepts_a_valid_token() {
        let token = mint_rs256(&keys().private_pem, &claims()).expect("mint");
        let identity = verifier(None, None).verify(&token).await.expect("valid");
        assert_eq!(identity.user_id, "alice");
        assert_eq!(identity.tenant_id, "acme");
        assert_eq!(identity.permissions, vec!["reports:*".to_owned()]);
    }

    #[tokio::test]
    async fn a_token_living_longer_than_the_limit_is_refused() {
        let limited = JwtVerifier::new(&JwtConfig {
            max_lifetime: Some(Duration::from_secs(3600)),
            ..verifier_config()
        })
        .expect("verifier");
        let now = now_secs();
        let long = Claims {
            iat: Some(now),
            exp: now + 2 * 3600,
            ..claims()
        };
        let token = mint_rs256(&keys().private_pem, &long).expect("mint");
        assert!(matches!(
            limited.verify(&token).await,
            Err(AuthError::TooLong)
        ));
        // Without `iat`, what is left of it counts.
        let no_iat = Claims { iat: None, ..long };
        let token = mint_rs256(&keys().private_pem, &no_iat).expect("mint");
        assert!(matches!(
            limited.verify(&token).await,
            Err(AuthError::TooLong)
        ));
        let short = Claims {
            iat: Some(now - 1800),
            exp: now + 1800,
            ..claims()
        };
        let token = mint_rs256(&keys().private_pem, &short).expect("mint");
        limited.verify(&token).await.expect("an hour in all");
    }

    #[tokio::test]
    async fn refuses_what_it_must() {
        let v = verifier(None, None);
        let expired = Claims {
            exp: now_secs() - 10,
            ..claims()
        };
        assert_eq!(
            v.verify(&mint_rs256(&keys().private_pem, &expired).expect("mint"))
                .await,
            Err(AuthError::Expired)
        );

        let other = generate_rsa_key_pair().expect("keygen");
        assert_eq!(
            v.verify(&mint_rs256(&other.private_pem, &claims()).expect("mint"))
                .await,
            Err(AuthError::BadSignature)
        );

        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(keys().public_pem.as_bytes()),
        )
        .expect("hs");
        assert_eq!(v.verify(&hs).await, Err(AuthError::Algorithm));

        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"JWT"})),
            b64(&serde_json::json!(claims()))
        );
        assert!(v.verify(&none).await.is_err());

        let no_tenant = serde_json::json!({"sub": "alice", "exp": now_secs() + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &no_tenant,
            &EncodingKey::from_rsa_pem(keys().private_pem.as_bytes()).expect("key"),
        )
        .expect("mint");
        assert_eq!(v.verify(&token).await, Err(AuthError::Claims));

        let bad_tenant = Claims {
            tenant_id: "a#b".into(),
            ..claims()
        };
        assert_eq!(
            v.verify(&mint_rs256(&keys().private_pem, &bad_tenant).expect("mint"))
                .await,
            Err(AuthError::Claims)
        );

        assert_eq!(v.verify("not.a.token").await, Err(AuthError::Malformed));
        assert_eq!(v.verify("").await, Err(AuthError::Missing));
        assert_eq!(
            v.verify(&"a".repeat(MAX_TOKEN_LEN + 1)).await,
            Err(AuthError::TooLarge)
        );
    }

    #[tokio::test]
    async fn checks_issuer_and_audience_when_configured() {
        let v = verifier(Some("https://issuer"), Some("streamer"));
        let token = mint_rs256(&keys().private_pem, &claims()).expect("mint");
        assert!(v.verify(&token).await.is_err());
        let good = Claims {
            iss: Some("https://issuer".into()),
            aud: Some("streamer".into()),
            ..claims()
        };
        assert!(
            v.verify(&mint_rs256(&keys().private_pem, &good).expect("mint"))
                .await
                .is_ok()
        );
        let wrong = Claims {
            aud: Some("other".into()),
            ..good
        };
        assert_eq!(
            v.verify(&mint_rs256(&keys().private_pem, &wrong).expect("mint"))
                .await,
            Err(AuthError::IssuerOrAudience)
        );
    }

    #[tokio::test]
    async fn finds_the_token_where_clients_put_it() {
        let q = |k: &str, v: &str| {
            [(k.to_owned(), v.to_owned())]
                .into_iter()
                .collect::<HashMap<_, _>>()
        };
        let none = HashMap::new();
        assert_eq!(token_from_request(&q("token", "abc"), &none), Some("abc"));
        assert_eq!(
            token_from_request(&q("Authorization", "Bearer abc"), &none),
            Some("abc")
        );
        assert_eq!(
            token_from_request(&none, &q("authorization", "bearer abc")),
            Some("abc")
        );
        assert_eq!(
            token_from_request(&none, &q("authorization", "Bearer ")),
            None
        );
        assert_eq!(token_from_request(&none, &none), None);
    }

    #[tokio::test]
    async fn permission_wildcards() {
        use crate::config::grants;
        assert!(grants(&["echo"], "echo"));
        assert!(grants(&["*"], "anything"));
        assert!(grants(&["group:join:*"], "group:join:room-1"));
        assert!(!grants(&["group:join:*"], "group:leave:room-1"));
        let none: [&str; 0] = [];
        assert!(!grants(&none, "echo"));
    }

    #[tokio::test]
    async fn mixed_key_families_are_a_config_error() {
        let err = JwtVerifier::new(&JwtConfig {
            public_key_pem: keys().public_pem.clone(),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            max_lifetime: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            any_issuer: false,
            any_audience: false,
        })
        .expect_err("mixed");
        assert!(matches!(err, KeyError::MixedFamilies(_)));
    }
}
