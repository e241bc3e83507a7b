//! `dev`'s state folder (`STREAMER_STATE_DIR`, `.build/dev` by default):
//! the client-token signing key and the gRPC tokens it made, kept across
//! restarts so that tokens already handed out (in a wscat line, an exported
//! `STREAMER_TOKEN`) keep working. The private key is written there too,
//! for `streamerctl token --private-key`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use streamer_client::token::{RsaKeyPair, generate_rsa_key_pair};

/// The gRPC tokens `dev` made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    /// The edge role's token.
    pub edge: String,
    /// The admin role's token.
    pub admin: String,
}

/// What the state folder holds.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    /// The state in `dir` (made when missing).
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the state folder {} (STREAMER_STATE_DIR)",
                dir.display()
            )
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Where the private key is (for `streamerctl token --private-key`).
    pub fn private_key_path(&self) -> PathBuf {
        self.dir.join("jwt-private.pem")
    }

    /// The signing key pair: the one kept here, or a new one (then kept).
    pub fn key_pair(&self) -> anyhow::Result<RsaKeyPair> {
        let private = self.private_key_path();
        let public = self.dir.join("jwt-public.pem");
        if let (Ok(private_pem), Ok(public_pem)) = (
            std::fs::read_to_string(&private),
            std::fs::read_to_string(&public),
        ) {
            return Ok(RsaKeyPair {
                private_pem,
                public_pem,
            });
        }
        let keys = generate_rsa_key_pair()?;
        streamer_listener::pki::write(&private, &keys.private_pem)?;
        streamer_listener::pki::write(&public, &keys.public_pem)?;
        Ok(keys)
    }

    /// The gRPC tokens: the ones kept here, or new ones (then kept).
    pub fn tokens(&self) -> anyhow::Result<Tokens> {
        let path = self.dir.join("tokens.json");
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(tokens) = serde_json::from_str::<Tokens>(&text)
        {
            return Ok(tokens);
        }
        let tokens = Tokens {
            edge: random_token(),
            admin: random_token(),
        };
        streamer_listener::pki::write(&path, &serde_json::to_string_pretty(&tokens)?)?;
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_tokens_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("streamer-state-{:x}", rand::random::<u64>()));
        let first = State::open(&dir).expect("open");
        let keys = first.key_pair().expect("keys");
        let tokens = first.tokens().expect("tokens");
        let again = State::open(&dir).expect("reopen");
        assert_eq!(again.key_pair().expect("keys").public_pem, keys.public_pem);
        assert_eq!(again.tokens().expect("tokens").admin, tokens.admin);
        assert!(again.private_key_path().exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
