//! A fleet on one machine: N `streamer-control-plane serve` replicas on one
//! DynamoDB (moto), behind one `streamer-gateway` that sends each event to
//! the next replica, as independent Lambda instances behind one API do.

use std::{net::SocketAddr, process::Stdio};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::transport::Channel;

use crate::{
    DEADLINE,
    dev::{ADMIN_TOKEN, EDGE_TOKEN, binary},
    grpc, moto, token,
};

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// The process.
    pub child: Child,
    /// Its gRPC address.
    pub addr: SocketAddr,
}

/// The running fleet.
#[derive(Debug)]
pub struct Fleet {
    /// The replicas (`None` once killed).
    pub replicas: Vec<Option<Replica>>,
    /// The gateway process.
    pub gateway: Child,
    /// `ws://addr/stage`.
    pub ws: String,
    /// The connections table (the others are named after it).
    pub table: String,
    /// The gateway's Management API endpoint, the replicas' one allowed
    /// endpoint (`STREAMER_MANAGEMENT_ENDPOINTS`).
    pub management_endpoint: String,
    env: Vec<(String, String)>,
}

/// Reads `child`'s JSON log lines (flattened: fields at the top level)
/// until one whose message is `message`;
/// returns that line. Later lines are drained (warnings and errors echoed).
async fn logged(child: &mut Child, message: &str) -> Value {
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("log line") {
            if let Ok(json) = serde_json::from_str::<Value>(&line)
                && json["message"] == message
            {
                return json;
            }
        }
        panic!("the process exited before logging {message:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {message:?} in time"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"WARN\"") || line.contains("\"ERROR\"") {
                eprintln!("replica: {line}");
            }
        }
    });
    found
}

impl Fleet {
    /// Starts `n` replicas (fresh tables) and a gateway in front of them;
    /// `extra` adds settings to every replica.
    pub async fn start(n: usize, extra: &[(&str, &str)]) -> Fleet {
        let tables = moto::Tables::new("fleet");
        tables.create().await;
        let mut env: Vec<(String, String)> = tables
            .env()
            .into_iter()
            // The gateway checks signatures made with its local credentials
            // (moto takes any).
            .filter(|(k, _)| *k != "AWS_ACCESS_KEY_ID" && *k != "AWS_SECRET_ACCESS_KEY")
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.extend(
            [
                ("AWS_ACCESS_KEY_ID", "streamer-local".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "streamer-local-secret".to_owned()),
                ("STREAMER_JWT_PUBLIC_KEY", token::keys().public_pem.clone()),
                ("STREAMER_JWT_ISSUER", token::ISSUER.to_owned()),
                ("STREAMER_JWT_AUDIENCE", token::AUDIENCE.to_owned()),
                ("STREAMER_EDGE_TOKEN", EDGE_TOKEN.to_owned()),
                ("STREAMER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
                // Page tokens from one replica are read by another.
                (
                    "STREAMER_PAGE_TOKEN_SECRET",
                    "fleet-page-token-secret-0123456789".to_owned(),
                ),
                ("STREAMER_LOG_FORMAT", "json".to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        // The gateway's address, chosen now (port 0, then let go) so the
        // replicas can be told it is their one Management API endpoint.
        let gateway_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port for the gateway");
        let management_endpoint = format!("http://{gateway_addr}/local");
        // Settings that name other endpoints get the gateway's too.
        match env
            .iter_mut()
            .find(|(k, _)| k == "STREAMER_MANAGEMENT_ENDPOINTS")
        {
            Some((_, list)) => *list = format!("{list},{management_endpoint}"),
            None => env.push((
                "STREAMER_MANAGEMENT_ENDPOINTS".to_owned(),
                management_endpoint.clone(),
            )),
        }
        let table = tables.connections.clone();
        let mut fleet = Fleet {
            replicas: Vec::new(),
            gateway: Command::new("true").spawn().expect("placeholder"),
            ws: String::new(),
            table,
            management_endpoint,
            env,
        };
        for _ in 0..n {
            let replica = fleet.replica().await;
            fleet.replicas.push(Some(replica));
        }
        let urls: Vec<String> = fleet
            .addrs()
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let (gateway, ws) = gateway_at(&urls.join(","), gateway_addr).await;
        fleet.ws = ws;
        fleet.gateway = gateway;
        fleet
    }

    /// Starts one more replica process on the fleet's tables.
    async fn replica(&self) -> Replica {
        let mut child = Command::new(binary("streamer-control-plane"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STREAMER_GRPC_ADDR", "127.0.0.1:0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("serve");
        let listening = logged(&mut child, "grpc server listening").await;
        let addr = listening["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket addr");
        Replica { child, addr }
    }

    /// Every live replica's address, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().flatten().map(|r| r.addr).collect()
    }

    /// A channel to replica `i`.
    pub fn channel(&self, i: usize) -> Channel {
        grpc::channel(self.replicas[i].as_ref().expect("alive").addr)
    }

    /// The WebSocket URL with `token`.
    pub fn url(&self, token: &str) -> String {
        format!("{}?token={token}", self.ws)
    }

    /// Kills replica `i` with SIGKILL.
    pub async fn kill(&mut self, i: usize) {
        let mut replica = self.replicas[i].take().expect("alive");
        replica.child.start_kill().expect("kill");
        let _ = replica.child.wait().await;
    }
}

/// Starts `streamer-gateway` in front of `control_planes` (a comma list of
/// URLs): the process and its WebSocket URL.
pub async fn gateway(control_planes: &str) -> (Child, String) {
    gateway_at(control_planes, "127.0.0.1:0".parse().expect("addr")).await
}

/// [`gateway`] listening on `addr`.
pub async fn gateway_at(control_planes: &str, addr: SocketAddr) -> (Child, String) {
    gateway_with(control_planes, addr, &[]).await
}

/// [`gateway_at`] with `env` adding or overriding settings (an empty value
/// unsets one).
pub async fn gateway_with(
    control_planes: &str,
    addr: SocketAddr,
    env: &[(&str, &str)],
) -> (Child, String) {
    let (child, ready) = gateway_ready(control_planes, addr, env).await;
    let ws = format!(
        "ws://{}/{}",
        ready["gateway"].as_str().expect("gateway"),
        ready["stage"].as_str().expect("stage")
    );
    (child, ws)
}

/// [`gateway_with`], answering the gateway's ready line (`gateway`,
/// `stage`, `metrics`) instead of its WebSocket URL.
pub async fn gateway_ready(
    control_planes: &str,
    addr: SocketAddr,
    env: &[(&str, &str)],
) -> (Child, Value) {
    let mut child = Command::new(binary("streamer-gateway"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("STREAMER_CONTROL_PLANE_URL", control_planes)
        .env("STREAMER_EDGE_TOKEN", EDGE_TOKEN)
        .env("STREAMER_GATEWAY_ADDR", addr.to_string())
        .env("STREAMER_CONSOLE_ADDR", "127.0.0.1:0")
        .env("STREAMER_GATEWAY_CONNECTS_PER_SECOND", "0")
        // Every test client is 127.0.0.1: the per-address limits are off
        // unless a test sets them.
        .env("STREAMER_GATEWAY_MAX_CONNECTIONS_PER_IP", "0")
        .env("STREAMER_GATEWAY_CONNECTS_PER_IP_PER_SECOND", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("gateway");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready: Value = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("line") {
            if let Some(json) = line.strip_prefix("STREAMER_GATEWAY_READY ") {
                return serde_json::from_str(json).expect("json");
            }
        }
        panic!("the gateway exited");
    })
    .await
    .expect("gateway ready");
    (child, ready)
}
