//! The control plane and the gateway emulator in-process on free ports:
//! the Management API driven by the AWS SDK client itself, the Lambda
//! handlers fed real API Gateway event JSON, and the gateway's time limits.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use aws_lambda_events::{apigw::ApiGatewayWebsocketProxyRequest, encodings::Body};
use aws_sdk_apigatewaymanagement::{Client, primitives::Blob};
use serde_json::{Value, json};
use streamer_control_plane::config::Config;
use streamer_edge::{client::edge_client, gateway::GatewayOptions, handler::EdgeHandler};
use streamer_proto::v1;
use streamer_server::dev::DevStack;
use streamer_test_kit::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Stack {
    grpc: SocketAddr,
    gateway: SocketAddr,
    handler: EdgeHandler,
    _dev: DevStack,
}

impl Stack {
    async fn start(options: GatewayOptions) -> Stack {
        let vars: HashMap<String, String> = [
            ("STREAMER_JWT_PUBLIC_KEY", keys().public_pem.as_str()),
            ("STREAMER_EDGE_TOKEN", EDGE_TOKEN),
            ("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN),
            ("STREAMER_GRPC_ADDR", "127.0.0.1:0"),
            ("STREAMER_GATEWAY_ADDR", "127.0.0.1:0"),
            ("STREAMER_CONSOLE_ADDR", "127.0.0.1:0"),
            ("STREAMER_DEMO_PROCESSOR", "false"),
            // The endpoint of the API Gateway fixtures (the stack's API).
            (
                "STREAMER_MANAGEMENT_ENDPOINTS",
                "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut config = Config::load(None, &move |name| vars.get(name).cloned()).expect("config");
        config.gateway.idle_timeout = options.idle_timeout;
        config.gateway.max_duration = options.max_duration;
        let dev = streamer_server::dev::start(config)
            .await
            .expect("dev stack");
        // The handler the Lambdas run: endpoint derived from the event.
        let client =
            edge_client(&format!("http://{}", dev.ready.grpc), EDGE_TOKEN).expect("edge client");
        Stack {
            grpc: dev.ready.grpc,
            gateway: dev.ready.gateway,
            handler: EdgeHandler::new(client, None),
            _dev: dev,
        }
    }

    fn management(&self) -> String {
        format!("http://{}/local", self.gateway)
    }

    async fn sdk(&self) -> Client {
        let sdk = streamer_server::dev::local_sdk_config(&Default::default()).await;
        Client::from_conf(
            aws_sdk_apigatewaymanagement::config::Builder::from(&sdk)
                .endpoint_url(self.management())
                .build(),
        )
    }

    async fn connect(&self, token: &str) -> Ws {
        let mut request = format!("ws://{}/local?token={token}", self.gateway)
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("User-Agent", "streamer-test/1.0".parse().expect("header"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("accepted");
        ws
    }
}

#[tokio::test]
async fn management_api_through_the_aws_sdk() {
    let stack = Stack::start(GatewayOptions::default()).await;
    let mut ws = stack.connect(&token("alice", "acme", &[])).await;
    let id = whoami(&mut ws).await;
    let sdk = stack.sdk().await;

    sdk.post_to_connection()
        .connection_id(&id)
        .data(Blob::new(r#"{"type":"message","data":1}"#))
        .send()
        .await
        .expect("post");
    assert_eq!(recv(&mut ws).await, json!({"type": "message", "data": 1}));

    let info = sdk
        .get_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("get");
    assert!(info.connected_at().is_some());
    assert!(info.last_active_at().is_some());
    let identity = info.identity().expect("identity");
    assert_eq!(identity.source_ip(), Some("127.0.0.1"));
    assert_eq!(identity.user_agent(), Some("streamer-test/1.0"));

    let too_big = vec![b'x'; 128 * 1024 + 1];
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new(too_big))
        .send()
        .await
        .expect_err("413");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_payload_too_large_exception()),
        "{err:?}"
    );

    let err = sdk
        .get_connection()
        .connection_id("NoSuchConn00000=")
        .send()
        .await
        .expect_err("410");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_gone_exception()),
        "{err:?}"
    );
    let err = sdk
        .post_to_connection()
        .connection_id("NoSuchConn00000=")
        .data(Blob::new("x"))
        .send()
        .await;
    assert!(
        err.expect_err("410")
            .as_service_error()
            .is_some_and(|e| e.is_gone_exception())
    );

    sdk.delete_connection()
        .connection_id(&id)
        .send()
        .await
        .expect("delete");
    assert!(
        closed(&mut ws)
            .await
            .is_some_and(|f| u16::from(f.code) == 1000)
    );
    let mut admin = connections(channel(stack.grpc), ADMIN_TOKEN);
    eventually("$disconnect removed the row", || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move {
            admin
                .get_connection(v1::GetConnectionRequest { connection_id: id })
                .await
                .is_err()
        }
    })
    .await;
    let _ = &mut admin;
    let err = sdk
        .post_to_connection()
        .connection_id(&id)
        .data(Blob::new("x"))
        .send()
        .await;
    assert!(
        err.expect_err("gone after delete")
            .as_service_error()
            .is_some_and(|e| e.is_gone_exception())
    );
}

#[tokio::test]
async fn management_api_refuses_unsigned_calls() {
    let stack = Stack::start(GatewayOptions::default()).await;
    let mut socket = tokio::net::TcpStream::connect(stack.gateway)
        .await
        .expect("connect");
    let request = format!(
        "POST /local/@connections/abc HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        stack.gateway
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{response}"
    );
}

fn fixture(name: &str, token: &str) -> ApiGatewayWebsocketProxyRequest {
    let path = format!(
        "{}/../../edge-lambdas/tests/fixtures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    serde_json::from_str(&text.replace("__TOKEN__", token)).expect("websocket event")
}

fn text(body: Option<&Body>) -> String {
    match body {
        Some(Body::Text(text)) => text.clone(),
        other => panic!("expected text body, got {other:?}"),
    }
}

#[tokio::test]
async fn lambda_handlers_on_real_api_gateway_events() {
    let stack = Stack::start(GatewayOptions::default()).await;
    let handler = &stack.handler;
    let mut admin = connections(channel(stack.grpc), ADMIN_TOKEN);
    let count = || v1::CountConnectionsRequest {
        tenant_id: "acme".into(),
        user_id: String::new(),
    };

    // $connect with a bad token: 401 with a JSON body for the client.
    let refused = handler.handle(fixture("connect", "bad-token")).await;
    assert_eq!(refused.status_code, 401);
    let body: Value = serde_json::from_str(&text(refused.body.as_ref())).expect("json");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");

    let valid = token("alice", "acme", &["reports:*"]);
    let accepted = handler.handle(fixture("connect", &valid)).await;
    assert_eq!(accepted.status_code, 200);
    let row = admin
        .get_connection(v1::GetConnectionRequest {
            connection_id: "PwQ8XdTQjoECJhw=".into(),
        })
        .await
        .expect("registered")
        .into_inner()
        .connection
        .expect("row");
    assert_eq!(
        row.endpoint,
        "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"
    );
    assert_eq!(row.source_ip, "203.0.113.10");
    assert_eq!(
        row.user_agent,
        "Mozilla/5.0 (X11; Linux x86_64) Fixture/1.0"
    );
    assert_eq!(
        (row.tenant_id.as_str(), row.user_id.as_str()),
        ("acme", "alice")
    );

    // A redelivered $connect is accepted once more without a second row.
    assert_eq!(
        handler.handle(fixture("connect", &valid)).await.status_code,
        200
    );
    assert_eq!(
        admin
            .count_connections(count())
            .await
            .expect("count")
            .into_inner()
            .count,
        1
    );

    // $default: the reply is the route response body.
    let reply = handler.handle(fixture("message", &valid)).await;
    assert_eq!(reply.status_code, 200);
    let frame: Value = serde_json::from_str(&text(reply.body.as_ref())).expect("json");
    assert_eq!(frame["type"], "response");
    assert_eq!(frame["request_id"], "fixture-1");
    assert_eq!(frame["data"], json!({"hello": "lambda"}));

    // $disconnect, twice: the second is a no-op.
    assert_eq!(
        handler
            .handle(fixture("disconnect", &valid))
            .await
            .status_code,
        200
    );
    assert_eq!(
        handler
            .handle(fixture("disconnect", &valid))
            .await
            .status_code,
        200
    );
    assert_eq!(
        admin
            .count_connections(count())
            .await
            .expect("count")
            .into_inner()
            .count,
        0
    );
}

#[tokio::test]
async fn gateway_closes_idle_connections() {
    let options = GatewayOptions {
        idle_timeout: Duration::from_millis(300),
        ..GatewayOptions::default()
    };
    let stack = Stack::start(options).await;
    let mut ws = stack.connect(&token("alice", "acme", &[])).await;
    let frame = closed(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1001);
}

#[tokio::test]
async fn gateway_enforces_the_maximum_connection_duration() {
    let options = GatewayOptions {
        max_duration: Duration::from_millis(500),
        ..GatewayOptions::default()
    };
    let stack = Stack::start(options).await;
    let mut ws = stack.connect(&token("alice", "acme", &[])).await;
    // Activity does not extend the maximum duration.
    let id = whoami(&mut ws).await;
    assert!(!id.is_empty());
    let frame = closed(&mut ws).await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1001);
}
