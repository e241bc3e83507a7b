//! Test harness: the real `dev` binary (or the same parts in-process) on
//! free loopback ports, real WebSocket clients, real gRPC clients.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use streamer_control_plane::jwt::{
    Claims, RsaKeyPair, generate_rsa_key_pair, mint_rs256, now_secs,
};
use streamer_proto::auth::BearerToken;
use streamer_proto::v1::{
    self, broadcast_service_client::BroadcastServiceClient,
    connection_service_client::ConnectionServiceClient, edge_service_client::EdgeServiceClient,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub const EDGE_TOKEN: &str = "test-edge-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SERVICE_A_TOKEN: &str = "test-service-a-token-0123456789";

/// One RSA key pair for the whole test binary (generation takes a moment).
pub fn keys() -> &'static RsaKeyPair {
    static KEYS: OnceLock<RsaKeyPair> = OnceLock::new();
    KEYS.get_or_init(|| generate_rsa_key_pair().expect("keygen"))
}

pub fn claims(sub: &str, tenant: &str, permissions: &[&str]) -> Claims {
    Claims {
        sub: sub.into(),
        tenant_id: tenant.into(),
        exp: now_secs() + 3600,
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        iss: None,
        aud: None,
    }
}

pub fn token(sub: &str, tenant: &str, permissions: &[&str]) -> String {
    mint_rs256(&keys().private_pem, &claims(sub, tenant, permissions)).expect("mint")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The config file every test stack uses: one declared action with a
/// permission and a schema, and a service token bound to tenant "acme".
pub const CONFIG_TOML: &str = r#"
[[actions]]
name = "admin.echo"
mode = "sync"
handler = "echo"
permission = "admin"

[[actions]]
name = "greet"
mode = "sync"
handler = "echo"
schema = { type = "object", required = ["name"], properties = { name = { type = "string", maxLength = 20 } } }

[[actions]]
name = "durable_job"
mode = "async"
max_attempts = 2
lease_timeout_ms = 5000
schema = { type = "object", required = ["n"] }

[[tokens.services]]
name = "acme-billing"
token = "test-service-a-token-0123456789"
tenant_id = "acme"
"#;

/// The real `streamer-control-plane dev` process.
pub struct Dev {
    pub child: Child,
    pub grpc: SocketAddr,
    pub gateway: SocketAddr,
    pub stage: String,
    pub metrics: Option<SocketAddr>,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nonce: u64 = rand::random();
        let path = std::env::temp_dir().join(format!(
            "streamer-test-{tag}-{}-{nonce:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Dev {
    /// Starts `dev` on free ports with the test key and tokens; `env` adds
    /// or overrides variables.
    pub async fn start(env: &[(&str, &str)]) -> Dev {
        let dir = TempDir::new("dev");
        let config = dir.0.join("streamer.toml");
        std::fs::write(&config, CONFIG_TOML).expect("config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_streamer-control-plane"));
        command
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("STREAMER_CONFIG", &config)
            .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
            .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
            .env("STREAMER_JWT_PUBLIC_KEY", &keys().public_pem)
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(json) = line.strip_prefix("STREAMER_DEV_READY ") {
                    return serde_json::from_str::<Value>(json).expect("ready json");
                }
            }
            panic!("dev exited before it was ready");
        })
        .await
        .expect("dev ready in time");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Dev {
            child,
            grpc: ready["grpc"].as_str().expect("grpc").parse().expect("addr"),
            gateway: ready["gateway"]
                .as_str()
                .expect("gateway")
                .parse()
                .expect("addr"),
            stage: ready["stage"].as_str().expect("stage").to_owned(),
            metrics: ready["metrics"]
                .as_str()
                .map(|m| m.parse().expect("metrics addr")),
            _dir: dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/{}", self.gateway, self.stage)
    }

    pub fn management_endpoint(&self) -> String {
        format!("http://{}/{}", self.gateway, self.stage)
    }

    pub async fn connect(&self, token: &str) -> Ws {
        connect_ws(&format!("{}?token={token}", self.ws_url())).await
    }

    pub fn grpc_channel(&self) -> Channel {
        channel(self.grpc)
    }

    /// Registers a connection the gateway has never seen, through the edge
    /// protocol as a Lambda would: the row of a client whose `$disconnect`
    /// got lost.
    pub async fn register_ghost(&self, connection_id: &str, user: &str, tenant: &str) {
        let reply = edge(self.grpc_channel(), EDGE_TOKEN)
            .connect(v1::ConnectRequest {
                connection_id: connection_id.into(),
                endpoint: self.management_endpoint(),
                query: [("token".to_owned(), token(user, tenant, &[]))]
                    .into_iter()
                    .collect(),
                source_ip: "198.51.100.7".into(),
                ..Default::default()
            })
            .await
            .expect("connect")
            .into_inner();
        assert!(reply.accepted, "{reply:?}");
    }
}

/// A Send of `data` (as JSON text) to every connection of `tenant`.
pub fn tenant_target(tenant: &str, data: serde_json::Value) -> v1::SendRequest {
    v1::SendRequest {
        target: Some(v1::send_request::Target::TenantId(tenant.into())),
        payload: Some(v1::send_request::Payload::DataJson(data.to_string())),
        ..Default::default()
    }
}

pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy()
}

pub type Authed = InterceptedService<Channel, BearerToken>;

pub fn connections(channel: Channel, token: &str) -> ConnectionServiceClient<Authed> {
    ConnectionServiceClient::with_interceptor(channel, BearerToken::new(token).expect("token"))
}

pub fn broadcast(channel: Channel, token: &str) -> BroadcastServiceClient<Authed> {
    BroadcastServiceClient::with_interceptor(channel, BearerToken::new(token).expect("token"))
}

pub fn edge(channel: Channel, token: &str) -> EdgeServiceClient<Authed> {
    EdgeServiceClient::with_interceptor(channel, BearerToken::new(token).expect("token"))
}

pub async fn connect_ws(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("websocket accepted");
    ws
}

/// Connects and expects the handshake to be refused; returns status and body.
pub async fn refused(url: &str) -> (u16, Value) {
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
        .await
        .expect("answer in time")
    {
        Ok(_) => panic!("connection was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).expect("json body"))
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

pub async fn send(ws: &mut Ws, frame: &str) {
    ws.send(Message::Text(frame.into())).await.expect("send");
}

pub async fn send_json(ws: &mut Ws, value: &Value) {
    send(ws, &value.to_string()).await;
}

/// The next JSON frame, within the deadline.
pub async fn recv(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).expect("json frame");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Waits for the server to close; returns the close frame.
pub async fn closed(ws: &mut Ws) -> Option<CloseFrame> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends `{"action":"whoami"}` and returns the caller's connection id.
pub async fn whoami(ws: &mut Ws) -> String {
    send(ws, r#"{"id":"who","action":"whoami"}"#).await;
    let frame = recv(ws).await;
    assert_eq!(frame["type"], "response", "{frame}");
    frame["data"]["connection_id"]
        .as_str()
        .expect("connection id")
        .to_owned()
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(5);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    panic!("timed out waiting for: {what}");
}
