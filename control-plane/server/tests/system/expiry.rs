//! A token's end is its connection's end, against the real processes: a
//! six-second token gets `token_expiring` and its socket closes at `exp`;
//! `refresh` with a new token of the same user keeps it open past the old
//! end (also when the refresh reaches another replica than the connect);
//! a token of someone else in `refresh` is refused and changes nothing.

use std::time::{Duration, Instant};

use serde_json::json;
use streamer_test_kit::{
    fleet::Fleet,
    prelude::*,
    token::{Claims, mint_rs256, now_secs},
};

/// A token of `user` (tenant `acme`) ending `secs` from now.
fn ending_in(user: &str, secs: u64, permissions: &[&str]) -> String {
    let claims = Claims {
        exp: now_secs() + secs,
        ..claims(user, "acme", permissions)
    };
    mint_rs256(&keys().private_pem, &claims).expect("mint")
}

/// Keeps `ws` answering until `until` has passed: each round trip is an
/// echo.
async fn open_until(ws: &mut Ws, until: Instant) {
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        send_json(ws, &json!({"id": format!("alive-{i}"), "action": "echo"})).await;
        let frame = recv_type(ws, "response").await;
        assert_eq!(frame["request_id"], json!(format!("alive-{i}")), "{frame}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_warned_then_closed_at_its_tokens_end_unless_refreshed() {
    let dev = Dev::start(&[("STREAMER_TOKEN_EXPIRY_WARNING_SECS", "3")]).await;
    // Warned, then closed.
    let started = Instant::now();
    let mut lapsing = dev.connect(&ending_in("alice", 6, &[])).await;
    let warning = recv_type(&mut lapsing, "token_expiring").await;
    assert!(warning["expires_at"].is_string(), "{warning}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "warned before the end"
    );
    closed(&mut lapsing).await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed at the end, not before ({:?})",
        started.elapsed()
    );

    // A token that ends inside the warning window is warned at once, then
    // closed at its end.
    let started = Instant::now();
    let mut short = dev.connect(&ending_in("carol", 2, &[])).await;
    recv_type(&mut short, "token_expiring").await;
    closed(&mut short).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at its end ({:?})",
        started.elapsed()
    );

    // Refreshed: open past the old end, with the new token's permissions.
    let started = Instant::now();
    let mut kept = dev.connect(&ending_in("bob", 6, &[])).await;
    recv_type(&mut kept, "token_expiring").await;
    // Someone else's token is refused and changes nothing.
    send_json(
        &mut kept,
        &json!({"id": "r0", "action": "refresh", "payload": {"token": ending_in("mallory", 60, &["*"])}}),
    )
    .await;
    let refused = recv_type(&mut kept, "error").await;
    assert_eq!(refused["error"]["code"], json!("FORBIDDEN"), "{refused}");
    send_json(
        &mut kept,
        &json!({"id": "r1", "action": "refresh", "payload": {"token": ending_in("bob", 60, &["reports:*"])}}),
    )
    .await;
    let renewed = recv_type(&mut kept, "response").await;
    assert!(renewed["data"]["expires_at"].is_string(), "{renewed}");
    open_until(&mut kept, started + Duration::from_secs(8)).await;
    send_json(&mut kept, &json!({"id": "who", "action": "whoami"})).await;
    let me = recv_type(&mut kept, "response").await;
    assert_eq!(me["data"]["permissions"], json!(["reports:*"]), "{me}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_refresh_hold_across_two_replicas() {
    let fleet = Fleet::start(
        2,
        &[
            ("STREAMER_TOKEN_EXPIRY_WARNING_SECS", "3"),
            ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut lapsing = connect_ws(&fleet.url(&ending_in("carol", 6, &[]))).await;
    let mut kept = connect_ws(&fleet.url(&ending_in("dave", 6, &[]))).await;
    // The gateway sends each event to the next replica: the refresh is
    // answered by the other replica than the one that accepted the connect.
    send_json(
        &mut kept,
        &json!({"id": "r1", "action": "refresh", "payload": {"token": ending_in("dave", 60, &[])}}),
    )
    .await;
    recv_type(&mut kept, "response").await;
    closed(&mut lapsing).await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    open_until(&mut kept, started + Duration::from_secs(8)).await;
}
