//! The edge handlers fed real API Gateway event JSON while the control plane
//! is down or hangs: the client gets a clean 503 at connect and an
//! `error` frame (SERVICE_UNAVAILABLE) on messages, never a hang.

use std::time::{Duration, Instant};

use aws_lambda_events::{apigw::ApiGatewayWebsocketProxyRequest, encodings::Body};
use serde_json::Value;
use streamer_edge::{
    client::edge_client_with_timeout,
    handler::{EdgeHandler, Route},
};

fn fixture(name: &str) -> ApiGatewayWebsocketProxyRequest {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    serde_json::from_str(&text.replace("__TOKEN__", "not-checked-here"))
        .expect("fixture is a websocket event")
}

fn body_json(body: Option<&Body>) -> Value {
    match body {
        Some(Body::Text(text)) => serde_json::from_str(text).expect("json body"),
        other => panic!("expected a text body, got {other:?}"),
    }
}

#[test]
fn fixtures_are_recognised() {
    assert_eq!(Route::of(&fixture("connect")), Some(Route::Connect));
    assert_eq!(Route::of(&fixture("message")), Some(Route::Default));
    assert_eq!(Route::of(&fixture("disconnect")), Some(Route::Disconnect));
}

async fn check_unavailable(handler: EdgeHandler) {
    let started = Instant::now();
    let connect = handler.handle(fixture("connect")).await;
    assert_eq!(connect.status_code, 503);
    let body = body_json(connect.body.as_ref());
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");

    let message = handler.handle(fixture("message")).await;
    assert_eq!(
        message.status_code, 200,
        "the route response carries the error frame"
    );
    let frame = body_json(message.body.as_ref());
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["request_id"], "fixture-1");
    assert_eq!(frame["error"]["code"], "SERVICE_UNAVAILABLE");
    let text = serde_json::to_string(&frame).expect("json");
    assert!(
        !text.contains("transport") && !text.contains("refused"),
        "no internal detail: {text}"
    );

    let disconnect = handler.handle(fixture("disconnect")).await;
    assert_eq!(disconnect.status_code, 503);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answers promptly"
    );
}

#[tokio::test]
async fn control_plane_refusing_connections() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let client = edge_client_with_timeout(
        &format!("http://{addr}"),
        "edge-token-0123456789",
        Duration::from_secs(2),
    )
    .expect("client");
    check_unavailable(EdgeHandler::new(client, None)).await;
}

#[tokio::test]
async fn control_plane_that_hangs() {
    // Accepts TCP but never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = edge_client_with_timeout(
        &format!("http://{addr}"),
        "edge-token-0123456789",
        Duration::from_millis(300),
    )
    .expect("client");
    check_unavailable(EdgeHandler::new(client, None)).await;
}
