//! The client library against a real control plane and gateway emulator
//! (started in-process on free ports) with real WebSocket clients.

use std::collections::HashMap;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use streamer_client::Client;
use streamer_control_plane::{
    config::Config,
    dev::{self, DevStack},
    jwt::{Claims, generate_rsa_key_pair, mint_rs256, now_secs},
};

const ADMIN: &str = "client-test-admin-token-000";

async fn stack() -> (DevStack, String) {
    let keys = generate_rsa_key_pair().expect("keys");
    let vars: HashMap<String, String> = [
        ("STREAMER_JWT_PUBLIC_KEY", keys.public_pem.as_str()),
        ("STREAMER_ADMIN_TOKEN", ADMIN),
        ("STREAMER_GRPC_ADDR", "127.0.0.1:0"),
        ("STREAMER_GATEWAY_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::load(None, &move |name| vars.get(name).cloned()).expect("config");
    let stack = dev::start(config).await.expect("stack");
    let claims = Claims {
        sub: "alice".into(),
        tenant_id: "acme".into(),
        exp: now_secs() + 600,
        permissions: vec![],
        iss: None,
        aud: None,
    };
    let token = mint_rs256(&keys.private_pem, &claims).expect("token");
    (stack, token)
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    let deadline = std::time::Duration::from_secs(20);
    loop {
        match tokio::time::timeout(deadline, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                return serde_json::from_str(&text).expect("json");
            }
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn broadcast_and_queries() {
    let (stack, token) = stack().await;
    let url = format!(
        "ws://{}/{}?token={token}",
        stack.ready.gateway, stack.ready.stage
    );
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.expect("ws");

    let client = Client::connect(&stack.ready.grpc.to_string())
        .await
        .expect("connect")
        .with_token(ADMIN)
        .expect("token");
    assert_eq!(
        client.count_connections("acme", None).await.expect("count"),
        2
    );
    assert_eq!(
        client
            .count_connections("acme", Some("alice"))
            .await
            .expect("count"),
        2
    );
    let listed: Vec<_> = client
        .list_connections("acme", None)
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    let first = client
        .connection(&listed[0].connection_id)
        .await
        .expect("get");
    assert_eq!(first.user_id, "alice");

    let report = client
        .send()
        .to_tenant("acme")
        .topic("t")
        .json(&json!({"x": 1}))
        .await
        .expect("send");
    assert_eq!((report.targeted, report.delivered), (2, 2));
    for ws in [&mut a, &mut b] {
        let frame = next_json(ws).await;
        assert_eq!(
            (frame["data"].clone(), frame["topic"].clone()),
            (json!({"x": 1}), json!("t"))
        );
    }
    let report = client
        .send()
        .to_user("acme", "alice")
        .exclude([listed[0].connection_id.clone()])
        .json("only one")
        .await
        .expect("send");
    assert_eq!(report.delivered, 1);

    assert!(
        client
            .disconnect(&listed[0].connection_id)
            .await
            .expect("disconnect")
    );
    let err = client
        .connection(&listed[0].connection_id)
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Some(tonic::Code::NotFound));

    let anonymous = Client::connect(&stack.ready.grpc.to_string())
        .await
        .expect("connect");
    let err = anonymous
        .count_connections("acme", None)
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = Client::connect(&addr.to_string())
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, streamer_client::Error::Connect(_)), "{err:?}");
}
