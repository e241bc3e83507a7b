//! Opaque, tamper-checked page tokens for list RPCs.
//!
//! A token is the last key of the previous page plus an HMAC over that key
//! and the query's scope, so a token minted for tenant A's listing is
//! rejected for tenant B's (or for another user), and a forged key is
//! rejected outright.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks page tokens with one secret.
#[derive(Clone)]
pub struct PageTokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTokens").finish_non_exhaustive()
    }
}

pub use crate::error::InvalidPageToken;

impl PageTokens {
    /// Tokens signed with `secret`, or with a random per-process secret.
    pub fn new(secret: Option<&str>) -> Self {
        let secret = match secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                use rand::RngCore;
                let mut bytes = vec![0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                bytes
            }
        };
        Self { secret }
    }

    fn mac(&self, scope: &str, key: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(key);
        mac
    }

    /// A token that resumes `scope` after `key`.
    pub fn encode(&self, scope: &str, key: &str) -> String {
        let tag = self.mac(scope, key.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(key),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The key a token resumes after, if the token was minted for `scope`.
    pub fn decode(&self, scope: &str, token: &str) -> Result<String, InvalidPageToken> {
        let (key, tag) = token.split_once('.').ok_or(InvalidPageToken)?;
        let key = URL_SAFE_NO_PAD.decode(key).map_err(|_| InvalidPageToken)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidPageToken)?;
        self.mac(scope, &key)
            .verify_slice(&tag)
            .map_err(|_| InvalidPageToken)?;
        String::from_utf8(key).map_err(|_| InvalidPageToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_only_in_its_scope() {
        let tokens = PageTokens::new(Some("secret"));
        let token = tokens.encode("tenant:a", "conn-9");
        assert_eq!(tokens.decode("tenant:a", &token), Ok("conn-9".to_owned()));
        assert_eq!(tokens.decode("tenant:b", &token), Err(InvalidPageToken));
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("conn-0"),
            token.split_once('.').expect("dot").1
        );
        assert_eq!(tokens.decode("tenant:a", &forged), Err(InvalidPageToken));
        assert_eq!(tokens.decode("tenant:a", "garbage"), Err(InvalidPageToken));
        assert_eq!(
            PageTokens::new(Some("other")).decode("tenant:a", &token),
            Err(InvalidPageToken)
        );
    }
}
