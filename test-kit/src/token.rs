//! Client tokens for tests: one RSA key pair per test binary.

use std::sync::OnceLock;

pub use streamer_client::token::{
    Claims, RsaKeyPair, TokenError, generate_rsa_key_pair, mint_rs256, now_secs,
};

/// One RSA key pair for the whole test binary (generation takes a moment).
pub fn keys() -> &'static RsaKeyPair {
    static KEYS: OnceLock<RsaKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| generate_rsa_key_pair().expect("keygen"))
}

/// The issuer of every test token (`serve` in the tests requires it).
pub const ISSUER: &str = "https://issuer.streamer.test";
/// The audience of every test token.
pub const AUDIENCE: &str = "streamer-test";

/// Claims valid for an hour, from [`ISSUER`] for [`AUDIENCE`].
pub fn claims(sub: &str, tenant: &str, permissions: &[&str]) -> Claims {
    Claims {
        iss: Some(ISSUER.into()),
        aud: Some(AUDIENCE.into()),
        ..Claims::new(sub, tenant, permissions, 3600)
    }
}

/// A token for `sub` of `tenant`, signed with [`keys`].
pub fn token(sub: &str, tenant: &str, permissions: &[&str]) -> String {
    mint_rs256(&keys().private_pem, &claims(sub, tenant, permissions)).expect("mint")
}
