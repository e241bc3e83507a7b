//! Named operators with roles and the audit trail, against `serve`: a
//! `read` operator reads and is refused every change with
//! `PERMISSION_DENIED`; every server-API call and every refused credential
//! leaves one record on `streamer::audit` naming the principal (never the
//! token), the role, the method, the tenant, the outcome and the peer.

use serde_json::{Value, json};
use streamer_proto::v1;
use streamer_test_kit::prelude::*;

const ALICE: &str = "operator-alice-token-0123456789";
const BOB: &str = "operator-bob-token-0123456789";

const OPERATORS: &str = r#"
[[tokens.operators]]
name = "alice"
token = "operator-alice-token-0123456789"
role = "admin"

[[tokens.operators]]
name = "bob"
token = "operator-bob-token-0123456789"
role = "read"
"#;

async fn start() -> (Serve, TempDir) {
    let dir = TempDir::new("operators");
    let config = dir.0.join("streamer.toml");
    std::fs::write(&config, OPERATORS).expect("config");
    let serve = Serve::start(&[("STREAMER_CONFIG", &config.to_string_lossy())]).await;
    (serve, dir)
}

/// The audit records for `method` so far.
fn records(serve: &Serve, method: &str) -> Vec<Value> {
    serve
        .audit()
        .into_iter()
        .filter(|r| r["method"] == method)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_operator_reads_and_is_refused_every_change() {
    let (serve, _dir) = start().await;
    let ch = channel(serve.grpc);
    let count = v1::CountConnectionsRequest {
        tenant_id: "acme".into(),
        ..Default::default()
    };
    connections(ch.clone(), BOB)
        .count_connections(count.clone())
        .await
        .expect("bob may count");
    connections(ch.clone(), BOB)
        .list_connections(v1::ListConnectionsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("bob may list");
    admin(ch.clone(), BOB)
        .get_stats(v1::GetStatsRequest {})
        .await
        .expect("bob may read the stats");
    let denied = [
        broadcast(ch.clone(), BOB)
            .send(tenant_target("acme", json!({"x": 1})))
            .await
            .map(|_| ()),
        connections(ch.clone(), BOB)
            .disconnect_connection(v1::DisconnectConnectionRequest {
                connection_id: "Someone0000000A=".into(),
            })
            .await
            .map(|_| ()),
        admin(ch.clone(), BOB)
            .run_reconcile(v1::RunReconcileRequest::default())
            .await
            .map(|_| ()),
        groups(ch.clone(), BOB)
            .add_to_group(v1::AddToGroupRequest {
                tenant_id: "acme".into(),
                group: "room".into(),
                member: Some(v1::add_to_group_request::Member::UserId("alice".into())),
            })
            .await
            .map(|_| ()),
        requests(ch.clone(), BOB)
            .cancel_request(v1::CancelRequestRequest {
                tenant_id: "acme".into(),
                request_id: "r1".into(),
            })
            .await
            .map(|_| ()),
    ];
    for outcome in denied {
        assert_eq!(
            outcome.expect_err("a change").code(),
            tonic::Code::PermissionDenied
        );
    }
    // The admin operator may change things.
    broadcast(ch.clone(), ALICE)
        .send(tenant_target("acme", json!({"x": 1})))
        .await
        .expect("alice may send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_and_every_refused_credential_leaves_one_audit_record_without_the_token() {
    let (serve, _dir) = start().await;
    let ch = channel(serve.grpc);
    broadcast(ch.clone(), ALICE)
        .send(tenant_target("acme", json!({"secret-payload": "p"})))
        .await
        .expect("send");
    let _ = broadcast(ch.clone(), BOB)
        .send(tenant_target("acme", json!({"x": 1})))
        .await;
    let _ = connections(ch.clone(), "not-a-token-0123456789")
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await;
    connections(ch.clone(), ADMIN_TOKEN)
        .count_connections(v1::CountConnectionsRequest {
            tenant_id: "globex".into(),
            ..Default::default()
        })
        .await
        .expect("count");
    eventually("four records", || {
        let n = serve.audit().len();
        async move { n >= 4 }
    })
    .await;
    let send = records(&serve, "/streamer.v1.BroadcastService/Send");
    let by = |who: &str| {
        send.iter()
            .find(|r| r["principal"] == who)
            .unwrap_or_else(|| panic!("no record for {who}: {send:?}"))
            .clone()
    };
    let alice = by("alice");
    assert_eq!(
        (&alice["role"], &alice["tenant_id"], &alice["code"]),
        (&json!("admin"), &json!("acme"), &json!("Ok")),
        "{alice}"
    );
    assert!(
        alice["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{alice}"
    );
    assert!(alice["duration_ms"].is_u64(), "{alice}");
    // What the deployment's log router sends to the audit log group.
    assert!(
        serve.audit().iter().all(|r| r["log_group"] == "audit"),
        "every audit record names its log group"
    );
    assert!(
        serve
            .logs()
            .iter()
            .filter(|l| l["target"] != "streamer::audit")
            .all(|l| l.get("log_group").is_none()),
        "no other line does"
    );
    let bob = by("bob");
    assert_eq!(
        (&bob["role"], &bob["code"]),
        (&json!("read"), &json!("PermissionDenied")),
        "{bob}"
    );
    let count = records(&serve, "/streamer.v1.ConnectionService/CountConnections");
    assert!(
        count
            .iter()
            .any(|r| r["principal"] == "-" && r["code"] == "Unauthenticated"),
        "a refused credential is recorded: {count:?}"
    );
    assert!(
        count
            .iter()
            .any(|r| r["principal"] == "admin" && r["tenant_id"] == "globex" && r["code"] == "Ok"),
        "STREAMER_ADMIN_TOKEN is the operator named admin: {count:?}"
    );
    // Never a token, never a payload, anywhere in the log.
    let everything = serve
        .logs()
        .iter()
        .map(Value::to_string)
        .collect::<String>();
    for secret in [
        ALICE,
        BOB,
        ADMIN_TOKEN,
        "not-a-token-0123456789",
        "secret-payload",
    ] {
        assert!(!everything.contains(secret), "{secret} is in the log");
    }
}

#[tokio::test]
async fn serve_requires_an_issuer_and_an_audience_unless_told_any() {
    let (code, stderr) =
        Serve::refused(&[("STREAMER_JWT_ISSUER", ""), ("STREAMER_JWT_AUDIENCE", "")]).await;
    assert_eq!(code, Some(2), "{stderr}");
    for name in ["STREAMER_JWT_ISSUER", "STREAMER_JWT_AUDIENCE"] {
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
    // Said on purpose, it starts.
    let serve = Serve::start(&[
        ("STREAMER_JWT_ISSUER", "any"),
        ("STREAMER_JWT_AUDIENCE", "any"),
    ])
    .await;
    assert!(serve.grpc.port() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_token_for_another_audience_or_living_too_long() {
    use streamer_test_kit::{
        fleet::gateway,
        token::{Claims, mint_rs256, now_secs},
    };
    let serve = Serve::start(&[("STREAMER_JWT_MAX_LIFETIME_SECS", "3600")]).await;
    let (_gateway, ws) = gateway(&format!("http://{}", serve.grpc)).await;
    let connects = |claims: Claims| {
        let url = format!(
            "{ws}?token={}",
            mint_rs256(&keys().private_pem, &claims).expect("mint")
        );
        async move { tokio_tungstenite::connect_async(&url).await.is_ok() }
    };
    assert!(connects(claims("alice", "acme", &[])).await, "a good token");
    assert!(
        !connects(Claims {
            aud: Some("another-service".into()),
            ..claims("alice", "acme", &[])
        })
        .await,
        "a token minted for another audience"
    );
    assert!(
        !connects(Claims {
            exp: now_secs() + 2 * 3600,
            ..claims("alice", "acme", &[])
        })
        .await,
        "a token living two hours under a one-hour limit"
    );
}
