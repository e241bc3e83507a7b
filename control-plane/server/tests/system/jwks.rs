//! Client keys from a JWKS document, against `serve` and a gateway, with a
//! loopback server standing for the identity provider: a rotation
//! k1 → k1+k2 → k2 with no restart, an unknown `kid` fetched once a
//! minute at most, and every bad document (or no answer) leaving the last
//! good set in use.

use serde_json::json;
use streamer_test_kit::{
    fleet::gateway,
    jwks::{Provider, jwk, ok},
    prelude::*,
    token::{RsaKeyPair, generate_rsa_key_pair},
};

/// A client token of `user` (tenant acme) signed by `pair` naming `kid`.
fn signed(pair: &RsaKeyPair, kid: &str, user: &str) -> String {
    streamer_test_kit::jwks::signed(pair, kid, &claims(user, "acme", &[]))
}

async fn connects(ws: &str, token: &str) -> bool {
    tokio_tungstenite::connect_async(format!("{ws}?token={token}"))
        .await
        .is_ok()
}

async fn stack(provider: &Provider, refresh: &str) -> (Serve, tokio::process::Child, String) {
    let serve = Serve::start(&[
        ("STREAMER_JWT_PUBLIC_KEY", ""),
        ("STREAMER_JWT_JWKS_URL", &provider.url),
        ("STREAMER_JWT_JWKS_REFRESH_SECS", refresh),
        ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000"),
    ])
    .await;
    let (child, ws) = gateway(&format!("http://{}", serve.grpc)).await;
    (serve, child, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_k1_to_k1_and_k2_to_k2_without_a_restart() {
    let (k1, k2) = (
        generate_rsa_key_pair().expect("k1"),
        generate_rsa_key_pair().expect("k2"),
    );
    let provider = Provider::start(&json!({"keys": [jwk(&k1, "k1")]})).await;
    let (_serve, _gateway, ws) = stack(&provider, "1").await;
    assert!(connects(&ws, &signed(&k1, "k1", "a")).await, "k1 at start");

    provider.serve(&json!({"keys": [jwk(&k1, "k1"), jwk(&k2, "k2")]}));
    // k2 is new: its first token fetches the set (or the refresh did).
    assert!(
        connects(&ws, &signed(&k2, "k2", "b")).await,
        "k2 once published"
    );
    assert!(connects(&ws, &signed(&k1, "k1", "c")).await, "k1 beside it");

    provider.serve(&json!({"keys": [jwk(&k2, "k2")]}));
    eventually("a new k1 token is refused once k1 is withdrawn", || {
        let (ws, token) = (ws.clone(), signed(&k1, "k1", "d"));
        async move { !connects(&ws, &token).await }
    })
    .await;
    assert!(connects(&ws, &signed(&k2, "k2", "e")).await, "k2 still");
    // A token signed by k1 but naming k2 is a bad signature.
    assert!(!connects(&ws, &signed(&k1, "k2", "f")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_the_set_at_most_once_a_minute() {
    let k1 = generate_rsa_key_pair().expect("k1");
    let stranger = generate_rsa_key_pair().expect("stranger");
    let provider = Provider::start(&json!({"keys": [jwk(&k1, "k1")]})).await;
    let (_serve, _gateway, ws) = stack(&provider, "3600").await;
    let at_start = provider.requests();
    assert_eq!(at_start, 1, "fetched once at start");
    for i in 0..5 {
        assert!(!connects(&ws, &signed(&stranger, "zzz", &format!("x{i}"))).await);
    }
    assert_eq!(
        provider.requests(),
        at_start + 1,
        "one fetch for five unknown kids"
    );
    assert!(connects(&ws, &signed(&k1, "k1", "ok")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_or_no_answer_keeps_the_last_good_set() {
    let k1 = generate_rsa_key_pair().expect("k1");
    let good = json!({"keys": [jwk(&k1, "k1")]});
    let provider = Provider::start(&good).await;
    let (serve, _gateway, ws) = stack(&provider, "1").await;
    let mut hs = jwk(&k1, "k1");
    hs["alg"] = json!("HS256");
    let mut es = jwk(&k1, "k1");
    es["alg"] = json!("ES256");
    let mut broken = jwk(&k1, "k1");
    broken["n"] = json!("!!not base64!!");
    let huge = format!(
        "{{\"keys\":[{}],\"pad\":\"{}\"}}",
        jwk(&k1, "k1"),
        "x".repeat(10 * 1024 * 1024)
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "a malformed key",
            ok(&json!({"keys": [broken]}).to_string()),
        ),
        (
            "a duplicate kid",
            ok(&json!({"keys": [jwk(&k1, "k1"), jwk(&k1, "k1")]}).to_string()),
        ),
        (
            "an alg it may not use (HS256)",
            ok(&json!({"keys": [hs]}).to_string()),
        ),
        (
            "an alg it may not use (ES256)",
            ok(&json!({"keys": [es]}).to_string()),
        ),
        ("a 10 MB document", ok(&huge)),
        (
            "a redirect (to itself: a loop if followed)",
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                provider.url
            ),
        ),
        (
            "an error status",
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .into(),
        ),
        ("no answer (the provider down)", String::new()),
    ];
    for (i, (what, answer)) in cases.into_iter().enumerate() {
        provider.answer(answer);
        let before = provider.requests();
        eventually(&format!("{what} fetched"), || {
            let n = provider.requests();
            async move { n >= before + 2 }
        })
        .await;
        assert!(
            connects(&ws, &signed(&k1, "k1", &format!("u{i}"))).await,
            "{what}: the last good set still verifies"
        );
    }
    let refused = serve
        .logs()
        .iter()
        .filter(|l| l["message"] == "client key set refused; keeping the last good set")
        .count();
    assert!(refused >= 7, "each bad document is logged ({refused})");
    provider.serve(&good);
}
