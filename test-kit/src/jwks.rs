//! An identity provider's JWKS endpoint on loopback, and the JWKs and
//! `kid`-naming tokens to put in and verify against it (the JWKS tests and
//! `streamer-bench auth`).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::Value;
use streamer_client::token::{Claims, RsaKeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The endpoint: answers every request with the response set now, and
/// counts requests.
pub struct Provider {
    /// `http://127.0.0.1:PORT/.well-known/jwks.json`.
    pub url: String,
    response: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
}

/// A `200 OK` JSON response carrying `body`.
pub fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl Provider {
    /// Serves `document` on a port of its own.
    pub async fn start(document: &Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let response = Arc::new(Mutex::new(ok(&document.to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let (answer, count) = (response.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // An empty answer: hang up without one (the provider down).
                    if !answer.is_empty() {
                        let _ = socket.write_all(answer.as_bytes()).await;
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            url,
            response,
            requests,
        }
    }

    /// Answers `raw` (a whole HTTP response; empty: no answer) from now on.
    pub fn answer(&self, raw: String) {
        *self.response.lock().expect("lock") = raw;
    }

    /// Serves `document` from now on.
    pub fn serve(&self, document: &Value) {
        self.answer(ok(&document.to_string()));
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The public JWK of `pair` named `kid`.
pub fn jwk(pair: &RsaKeyPair, kid: &str) -> Value {
    let key = EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()).expect("key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).expect("json")
}

/// `claims` signed by `pair`, the header naming `kid`.
pub fn signed(pair: &RsaKeyPair, kid: &str, claims: &Claims) -> String {
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(Algorithm::RS256)
    };
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pair.private_pem.as_bytes()).expect("key"),
    )
    .expect("token")
}
