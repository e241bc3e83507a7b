//! The client library against the real `dev` binary (on free ports) with
//! real WebSocket clients.

use futures_util::TryStreamExt;
use serde_json::json;
use streamer_client::Client;
use streamer_test_kit::prelude::*;

#[tokio::test]
async fn broadcast_and_queries() {
    let dev = Dev::start(&[]).await;
    let token = token("alice", "acme", &[]);
    let mut a = dev.connect(&token).await;
    let mut b = dev.connect(&token).await;

    let client = Client::connect(&dev.grpc.to_string())
        .await
        .expect("connect")
        .with_token(ADMIN_TOKEN)
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
        let frame = recv(ws).await;
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

    let anonymous = Client::connect(&dev.grpc.to_string())
        .await
        .expect("connect");
    let err = anonymous
        .count_connections("acme", None)
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
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
