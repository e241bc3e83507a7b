//! The real `streamer-control-plane dev` process on free loopback ports.

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

use serde_json::Value;
use streamer_proto::v1;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::{DEADLINE, TempDir, grpc, token, ws};

/// The edge token every test stack uses.
pub const EDGE_TOKEN: &str = "test-edge-token-0123456789";
/// The admin token every test stack uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// For tests with ghost rows (registered just now, unknown to the gateway):
/// trust the gateway's 410 at once instead of after the connecting grace.
pub const TRUST_410_AT_ONCE: (&str, &str) = ("STREAMER_DELIVERY_CONNECTING_GRACE_MS", "0");

/// A service token bound to tenant `acme`.
pub const SERVICE_A_TOKEN: &str = "test-service-a-token-0123456789";

/// The config file every test stack uses: declared actions with a
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

/// Where a workspace binary was built: `STREAMER_<NAME>_BIN` when set,
/// else next to the running test's own directory (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let var = format!(
        "STREAMER_{}_BIN",
        name.trim_start_matches("streamer-")
            .replace('-', "_")
            .to_uppercase()
    );
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (the test command does), or set {var}",
        path.display()
    );
    path
}

/// The real `dev` process.
#[derive(Debug)]
pub struct Dev {
    /// The process.
    pub child: Child,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Stage name.
    pub stage: String,
    /// `/metrics`, when enabled.
    pub metrics: Option<SocketAddr>,
    /// The banner's ready line.
    pub ready: Value,
    dir: TempDir,
}

impl Dev {
    /// Starts `dev` on free ports with the test key and tokens; `env` adds
    /// or overrides variables.
    pub async fn start(env: &[(&str, &str)]) -> Dev {
        Self::start_with(env, CONFIG_TOML).await
    }

    /// Like [`Dev::start`] with another config file.
    pub async fn start_with(env: &[(&str, &str)], config_toml: &str) -> Dev {
        let dir = TempDir::new("dev");
        let config = dir.0.join("streamer.toml");
        std::fs::write(&config, config_toml).expect("config");
        let mut command = Command::new(binary("streamer-control-plane"));
        command
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .env("STREAMER_CONFIG", &config)
            .env("STREAMER_STATE_DIR", dir.0.join("state"))
            .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
            .env("STREAMER_GATEWAY_ADDR", "127.0.0.1:0")
            .env("STREAMER_CONSOLE_ADDR", "127.0.0.1:0")
            .env("STREAMER_JWT_PUBLIC_KEY", &token::keys().public_pem)
            .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
            .env("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STREAMER_CONNECTS_PER_MINUTE_PER_IP", "100000")
            .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "100000")
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
        let addr = |key: &str| -> SocketAddr {
            ready[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {ready}"))
                .parse()
                .expect("addr")
        };
        Dev {
            grpc: addr("grpc"),
            gateway: addr("gateway"),
            stage: ready["stage"].as_str().expect("stage").to_owned(),
            metrics: ready["metrics"]
                .as_str()
                .map(|m| m.parse().expect("metrics addr")),
            ready: ready.clone(),
            child,
            dir,
        }
    }

    /// The scratch directory of this stack.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/{}", self.gateway, self.stage)
    }

    /// The Management API endpoint.
    pub fn management_endpoint(&self) -> String {
        format!("http://{}/{}", self.gateway, self.stage)
    }

    /// A WebSocket client with `token`.
    pub async fn connect(&self, token: &str) -> ws::Ws {
        ws::connect(&format!("{}?token={token}", self.ws_url())).await
    }

    /// A gRPC channel to the control plane.
    pub fn grpc_channel(&self) -> Channel {
        grpc::channel(self.grpc)
    }

    /// Registers a connection the gateway has never seen, through the edge
    /// protocol as a Lambda would: the row of a client whose `$disconnect`
    /// got lost.
    pub async fn register_ghost(&self, connection_id: &str, user: &str, tenant: &str) {
        let reply = grpc::edge(self.grpc_channel(), EDGE_TOKEN)
            .connect(v1::ConnectRequest {
                connection_id: connection_id.into(),
                endpoint: self.management_endpoint(),
                query: [("token".to_owned(), token::token(user, tenant, &[]))]
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

    /// The `streamer_*` samples of `/metrics` now (needs
    /// `STREAMER_METRICS_ADDR=127.0.0.1:0`), by series.
    pub async fn metrics_now(&self) -> std::collections::HashMap<String, f64> {
        scrape(self.metrics.expect("start dev with STREAMER_METRICS_ADDR"))
            .await
            .expect("scrape /metrics")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        sigterm(&self.child);
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait")
    }
}

/// Sends SIGTERM to `child` (a graceful stop, as ECS and systemd do).
pub fn sigterm(child: &tokio::process::Child) {
    signal(child, "-TERM");
}

/// Sends `signal` (`"-TERM"`, `"-KILL"`, ...) to `child` with `kill`.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the child is running");
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {signal} {pid}");
}

/// The `streamer_*` series of `/metrics` at `addr`, by name (with labels).
pub async fn scrape(addr: SocketAddr) -> std::io::Result<std::collections::HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("not an http response"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head.to_owned()));
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with("streamer_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}
