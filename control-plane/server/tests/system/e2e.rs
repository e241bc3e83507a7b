//! End to end: the real `streamer-control-plane dev` binary, real WebSocket
//! clients through the emulated API Gateway, real gRPC calls.

use base64::Engine;
use serde_json::{Value, json};
use streamer_proto::v1;
use streamer_test_kit::prelude::*;
use streamer_test_kit::token::{Claims, generate_rsa_key_pair, mint_rs256, now_secs};
use tokio_tungstenite::tungstenite::Message;

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn echo_whoami_ping_health() {
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("alice", "acme", &["reports:*"])).await;

    send(
        &mut ws,
        r#"{"id":"req-1","action":"echo","payload":{"hello":"world"},"metadata":{"k":"v"}}"#,
    )
    .await;
    let frame = recv(&mut ws).await;
    assert_eq!(frame["type"], "response");
    assert_eq!(frame["request_id"], "req-1");
    assert_eq!(frame["success"], true);
    assert_eq!(frame["data"], json!({"hello": "world"}));

    // The original demo client sends request_id instead of id.
    send(
        &mut ws,
        r#"{"request_id":"req-2","action":"echo","payload":[1,2,3]}"#,
    )
    .await;
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["request_id"].clone(), frame["data"].clone()),
        (json!("req-2"), json!([1, 2, 3]))
    );

    send(&mut ws, r#"{"id":"w","action":"whoami"}"#).await;
    let who = recv(&mut ws).await;
    assert_eq!(who["data"]["user_id"], "alice");
    assert_eq!(who["data"]["tenant_id"], "acme");
    assert_eq!(who["data"]["permissions"], json!(["reports:*"]));
    assert!(
        who["data"]["connection_id"]
            .as_str()
            .is_some_and(|id| id.len() == 16)
    );
    assert!(
        who["data"]["connected_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    send(&mut ws, r#"{"id":"p","action":"ping"}"#).await;
    let pong = recv(&mut ws).await;
    assert_eq!(
        (pong["type"].clone(), pong["request_id"].clone()),
        (json!("pong"), json!("p"))
    );

    send(&mut ws, r#"{"id":"h","action":"health"}"#).await;
    assert_eq!(recv(&mut ws).await["data"]["status"], "ok");

    // A request without an id gets a generated one.
    send(&mut ws, r#"{"action":"echo","payload":1}"#).await;
    assert!(
        recv(&mut ws).await["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_no_detail() {
    let dev = Dev::start(&[]).await;
    let url = |token: &str| format!("{}?token={token}", dev.ws_url());
    let other = generate_rsa_key_pair().expect("keygen");

    let bad_signature =
        mint_rs256(&other.private_pem, &claims("alice", "acme", &[])).expect("mint");
    let expired = mint_rs256(
        &keys().private_pem,
        &Claims {
            exp: now_secs() - 120,
            ..claims("alice", "acme", &[])
        },
    )
    .expect("mint");
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!(claims("alice", "acme", &[])))
    );
    let hs256_with_public_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("alice", "acme", &[]),
        &jsonwebtoken::EncodingKey::from_secret(keys().public_pem.as_bytes()),
    )
    .expect("hs256");
    let no_tenant = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "alice", "exp": now_secs() + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(keys().private_pem.as_bytes()).expect("key"),
    )
    .expect("mint");

    for (case, token) in [
        ("bad signature", bad_signature.as_str()),
        ("expired", expired.as_str()),
        ("alg none", alg_none.as_str()),
        ("hs256 with the public key", hs256_with_public_key.as_str()),
        ("missing tenant_id", no_tenant.as_str()),
        ("garbage", "not-a-jwt"),
    ] {
        let (status, body, _) = refused(&url(token)).await;
        assert_eq!(status, 401, "{case}");
        assert_eq!(
            body,
            json!({"error": {"code": "UNAUTHORIZED", "message": "missing or invalid token"}}),
            "{case}"
        );
    }
    let (status, _, _) = refused(&dev.ws_url()).await;
    assert_eq!(status, 401, "no token at all");

    // The Authorization header works too, with or without "Bearer ".
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = dev.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", token("alice", "acme", &[]))
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("header token accepted");
    assert_eq!(whoami(&mut ws).await.len(), 16);
}

#[tokio::test]
async fn invalid_messages_get_clear_errors_with_their_request_id() {
    let dev = Dev::start(&[
        ("STREAMER_GATEWAY_MAX_MESSAGE_BYTES", "300000"),
        ("STREAMER_GATEWAY_MAX_FRAME_BYTES", "300000"),
    ])
    .await;
    let mut ws = dev.connect(&token("bob", "acme", &[])).await;

    let cases: Vec<(String, Option<&str>, &str)> = vec![
        ("{this is not json".into(), None, "VALIDATION_ERROR"),
        (
            r#"{"id":"r1","payload":{}}"#.into(),
            Some("r1"),
            "VALIDATION_ERROR",
        ),
        (
            r#"{"id":"r2","action":"rm -rf"}"#.into(),
            Some("r2"),
            "VALIDATION_ERROR",
        ),
        (
            r#"{"id":"r3","action":"no_such_action"}"#.into(),
            Some("r3"),
            "INVALID_ACTION",
        ),
        (
            r#"{"id":"r4","action":"admin.echo","payload":{}}"#.into(),
            Some("r4"),
            "FORBIDDEN",
        ),
        (
            r#"{"id":"r5","action":"greet","payload":{"name":5}}"#.into(),
            Some("r5"),
            "VALIDATION_ERROR",
        ),
        (
            r#"{"id":"r6","action":"echo","metadata":{"k":1}}"#.into(),
            Some("r6"),
            "VALIDATION_ERROR",
        ),
    ];
    for (frame, id, code) in &cases {
        send(&mut ws, frame).await;
        let reply = recv(&mut ws).await;
        assert_eq!(reply["type"], "error", "{frame}");
        assert_eq!(reply["error"]["code"], *code, "{frame}");
        assert_eq!(reply["request_id"].as_str(), *id, "{frame}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    let long_id = "x".repeat(129);
    send_json(&mut ws, &json!({"id": long_id, "action": "echo"})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR");
    assert!(
        reply.get("request_id").is_none(),
        "an over-long id is never echoed back: {reply}"
    );

    // A repeated key is refused, not "the last one wins".
    send(&mut ws, r#"{"id":"dup","action":"echo","action":"whoami"}"#).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["error"]["code"], "VALIDATION_ERROR", "{reply}");

    // Schema violations say where.
    send(&mut ws, r#"{"id":"r7","action":"greet","payload":{}}"#).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["error"]["details"]["violations"][0]["path"], "");
    send(
        &mut ws,
        r#"{"id":"r8","action":"greet","payload":{"name":"Ada"}}"#,
    )
    .await;
    assert_eq!(recv(&mut ws).await["data"], json!({"name": "Ada"}));

    // Over 128 KiB: refused by the control plane (the gateway limit was
    // raised for this test), with the request id, and the connection lives.
    let big = json!({"id": "big", "action": "echo", "payload": "y".repeat(128 * 1024)});
    send_json(&mut ws, &big).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(reply["request_id"], "big");
    send(&mut ws, r#"{"id":"after","action":"echo","payload":true}"#).await;
    assert_eq!(recv(&mut ws).await["request_id"], "after");

    // With the admin permission the declared action works.
    let mut admin = dev.connect(&token("root", "acme", &["admin"])).await;
    send(
        &mut admin,
        r#"{"id":"a1","action":"admin.echo","payload":{"ok":1}}"#,
    )
    .await;
    assert_eq!(recv(&mut admin).await["data"], json!({"ok": 1}));
}

#[tokio::test]
async fn the_gateway_closes_1009_over_128_kib_like_api_gateway() {
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("bob", "acme", &[])).await;
    let big = json!({"id": "big", "action": "echo", "payload": "y".repeat(128 * 1024)});
    send_json(&mut ws, &big).await;
    let frame = closed(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1009);
    // The registry forgets the connection through $disconnect.
    let mut admin = connections(dev.grpc_channel(), ADMIN_TOKEN);
    eventually("registry forgets the closed connection", || {
        let mut admin = admin.clone();
        async move {
            let count = admin
                .count_connections(v1::CountConnectionsRequest {
                    tenant_id: "acme".into(),
                    user_id: String::new(),
                })
                .await
                .expect("count");
            count.into_inner().count == 0
        }
    })
    .await;
    let _ = &mut admin;
}

#[tokio::test]
async fn message_flood_is_rate_limited_with_retry_after() {
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("carol", "acme", &[])).await;
    // Default: 100/min with a burst of 20.
    let mut limited = None;
    for i in 0..40 {
        send_json(&mut ws, &json!({"id": format!("m{i}"), "action": "echo"})).await;
        let reply = recv(&mut ws).await;
        if reply["type"] == "error" {
            limited = Some((i, reply));
            break;
        }
    }
    let (i, reply) = limited.expect("rate limited within 40 messages");
    assert!(i >= 20, "the burst of 20 passes, limited at {i}");
    assert_eq!(reply["error"]["code"], "RATE_LIMITED");
    assert_eq!(reply["request_id"], format!("m{i}"));
    assert!(
        reply["error"]["retry"]["after"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );
    // Another connection of the same user is limited separately.
    let mut other = dev.connect(&token("carol", "acme", &[])).await;
    send(&mut other, r#"{"id":"o","action":"echo"}"#).await;
    assert_eq!(recv(&mut other).await["type"], "response");
}

#[tokio::test]
async fn connects_per_ip_and_tenant_quota_are_limited() {
    let dev = Dev::start(&[
        ("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "3"),
        ("STREAMER_LOOPBACK_CONNECTS_UNLIMITED", "false"),
    ])
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(dev.connect(&token("dan", "acme", &[])).await);
    }
    let (status, body, _) = refused(&format!(
        "{}?token={}",
        dev.ws_url(),
        token("dan", "acme", &[])
    ))
    .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert!(
        body["error"]["retry"]["after"]
            .as_u64()
            .is_some_and(|s| s >= 1)
    );

    let dev = Dev::start(&[("STREAMER_MAX_CONNECTIONS_PER_TENANT", "2")]).await;
    let _a = dev.connect(&token("u1", "small", &[])).await;
    let mut b = dev.connect(&token("u2", "small", &[])).await;
    let (status, body, _) = refused(&format!(
        "{}?token={}",
        dev.ws_url(),
        token("u3", "small", &[])
    ))
    .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    // Other tenants are not affected.
    let _c = dev.connect(&token("u1", "big", &[])).await;
    // A departure frees a slot.
    b.close(None).await.expect("close");
    let mut admin = connections(dev.grpc_channel(), ADMIN_TOKEN);
    eventually("slot freed", || {
        let mut admin = admin.clone();
        async move {
            admin
                .count_connections(v1::CountConnectionsRequest {
                    tenant_id: "small".into(),
                    user_id: String::new(),
                })
                .await
                .expect("count")
                .into_inner()
                .count
                == 1
        }
    })
    .await;
    let _ = &mut admin;
    let _d = dev.connect(&token("u3", "small", &[])).await;
}

#[tokio::test]
async fn sigterm_closes_clients_and_exits_cleanly() {
    let mut dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    assert_eq!(whoami(&mut ws).await.len(), 16);
    streamer_test_kit::dev::sigterm(&dev.child);
    let frame = closed(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1001);
    let exit = tokio::time::timeout(DEADLINE, dev.child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn bad_configuration_exits_before_binding() {
    for (name, value, expect) in [
        ("STREAMER_GRPC_ADDR", "not-an-address", "STREAMER_GRPC_ADDR"),
        (
            "STREAMER_JWT_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
            "STREAMER_JWT_PUBLIC_KEY",
        ),
        (
            "STREAMER_MESSAGES_PER_MINUTE",
            "0",
            "STREAMER_MESSAGES_PER_MINUTE",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamer-control-plane"))
            .arg("dev")
            .env_clear()
            .env(name, value)
            .env(
                "STREAMER_GRPC_ADDR",
                if name == "STREAMER_GRPC_ADDR" {
                    value
                } else {
                    "127.0.0.1:0"
                },
            )
            .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
            .env("STREAMER_CONSOLE_ADDR", "127.0.0.1:0")
            .output();
        let output = tokio::time::timeout(DEADLINE, output)
            .await
            .expect("exits")
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert_eq!(
            stderr.matches(expect).count(),
            1,
            "{name}: said once: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("STREAMER_DEV_READY"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn serve_names_every_missing_setting_before_any_aws_lookup() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamer-control-plane"))
        .arg("serve")
        .env_clear()
        .env("STREAMER_MESSAGE_BURST", "none")
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("exits")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for name in [
        "STREAMER_MESSAGE_BURST",
        "STREAMER_JWT_PUBLIC_KEY",
        "STREAMER_EDGE_TOKEN",
        "STREAMER_ADMIN_TOKEN",
    ] {
        assert!(stderr.contains(name), "{name} missing: {stderr}");
    }
    assert!(
        !stderr.to_lowercase().contains("imds") && !stderr.contains("metadata"),
        "no AWS lookup happened: {stderr}"
    );
}

#[tokio::test]
async fn binary_frames_and_unregistered_connections() {
    let dev = Dev::start(&[]).await;
    let mut ws = dev.connect(&token("alice", "acme", &[])).await;
    use futures_util::SinkExt;
    ws.send(Message::Binary(
        br#"{"id":"bin","action":"echo","payload":"b"}"#.to_vec().into(),
    ))
    .await
    .expect("send");
    let frame = recv(&mut ws).await;
    assert_eq!(
        (frame["request_id"].clone(), frame["data"].clone()),
        (json!("bin"), json!("b"))
    );
    ws.send(Message::Binary(vec![0xff, 0xfe].into()))
        .await
        .expect("send");
    assert_eq!(recv(&mut ws).await["error"]["code"], "VALIDATION_ERROR");

    // A Route for a connection the registry does not know.
    let reply = edge(dev.grpc_channel(), EDGE_TOKEN)
        .route(v1::RouteRequest {
            connection_id: "Unknown00000000=".into(),
            body: r#"{"id":"x","action":"echo"}"#.into(),
            ..Default::default()
        })
        .await
        .expect("route")
        .into_inner();
    let frame: Value = serde_json::from_str(&reply.reply.expect("reply")).expect("json");
    assert_eq!(
        (frame["error"]["code"].clone(), frame["request_id"].clone()),
        (json!("UNAUTHORIZED"), json!("x"))
    );
}
