//! Client tokens for development and tests: an RSA key pair and RS256 tokens
//! with the claims Streamer reads. `streamerctl token`, `dev` and the test
//! kit mint with this; production tokens come from your identity provider.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The claims Streamer reads from a client token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The tenant.
    pub tenant_id: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Granted permissions (`*` and `prefix*` wildcards match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// Claims for `sub` of `tenant_id` with `permissions`, valid for `ttl_secs`.
    pub fn new(sub: &str, tenant_id: &str, permissions: &[&str], ttl_secs: u64) -> Self {
        let now = now_secs();
        Self {
            sub: sub.to_owned(),
            tenant_id: tenant_id.to_owned(),
            iat: Some(now),
            exp: now + ttl_secs,
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            iss: None,
            aud: None,
        }
    }
}

/// An RSA key pair in PEM form.
#[derive(Clone)]
pub struct RsaKeyPair {
    /// PKCS#8 private key PEM.
    pub private_pem: String,
    /// SubjectPublicKeyInfo public key PEM.
    pub public_pem: String,
}

impl std::fmt::Debug for RsaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaKeyPair").finish_non_exhaustive()
    }
}

/// Why a key or token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot generate a key pair")]
    Generate,
    #[error("not an RSA private key in PEM form: {0}")]
    Key(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Generates a 2048-bit RSA key pair with aws-lc-rs (already in the tree via
/// the AWS SDK).
pub fn generate_rsa_key_pair() -> Result<RsaKeyPair, TokenError> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| TokenError::Generate)?;
    let private = pair.as_der().map_err(|_| TokenError::Generate)?;
    let public = pair
        .public_key()
        .as_der()
        .map_err(|_| TokenError::Generate)?;
    Ok(RsaKeyPair {
        private_pem: pem("PRIVATE KEY", private.as_ref()),
        public_pem: pem("PUBLIC KEY", public.as_ref()),
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Signs `claims` with an RSA private key (RS256).
pub fn mint_rs256(private_pem: &str, claims: &Claims) -> Result<String, TokenError> {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes())
        .map_err(|e| TokenError::Key(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_carry_the_claims() {
        let keys = generate_rsa_key_pair().expect("keygen");
        let claims = Claims::new("alice", "acme", &["group:join:*"], 60);
        let token = mint_rs256(&keys.private_pem, &claims).expect("mint");
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(keys.public_pem.as_bytes()).expect("pem");
        let decoded = jsonwebtoken::decode::<Claims>(
            &token,
            &key,
            &jsonwebtoken::Validation::new(Algorithm::RS256),
        )
        .expect("valid");
        assert_eq!(decoded.claims, claims);
        assert!(matches!(
            mint_rs256("not a key", &claims),
            Err(TokenError::Key(_))
        ));
    }
}
