//! `streamer-control-plane dev`: the control plane on the embedded store plus
//! the local API Gateway emulator, in one process, on loopback.
//!
//! Whatever is not configured is made up for the session: an RSA key pair
//! for client tokens (with a ready-to-use token printed), and the edge and
//! admin gRPC tokens. The emulator's Management API is reached with static
//! local credentials, so nothing ever looks for AWS credentials or instance
//! metadata.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use rand::RngCore;
use streamer_edge::{
    client::edge_client,
    gateway::{Gateway, GatewayOptions},
    handler::EdgeHandler,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    config::{Config, JwtConfig},
    delivery::local_sdk_config,
    jwt::{Claims, generate_rsa_key_pair, mint_rs256, now_secs},
    server::App,
};

/// How long the printed development token is valid.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `dev` prints once it is ready (also as one JSON line for scripts and
/// tests: `STREAMER_DEV_READY {...}`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ready {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// Gateway (WebSocket + Management API) address.
    pub gateway: SocketAddr,
    /// Stage name.
    pub stage: String,
    /// `/metrics` address, when enabled.
    pub metrics: Option<SocketAddr>,
}

/// A running control plane plus gateway emulator.
#[derive(Debug)]
pub struct DevStack {
    /// Where everything listens.
    pub ready: Ready,
    /// The admin gRPC token (configured or generated).
    pub admin_token: String,
    /// Whether `admin_token` was generated for this session.
    pub admin_token_generated: bool,
    /// A client token for user `dev-user` of tenant `dev`, when the key was
    /// generated for this session.
    pub sample_token: Option<String>,
    stop: watch::Sender<bool>,
    grpc_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    gateway_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DevStack {
    /// Closes every WebSocket (1001), lets their `$disconnect` events reach
    /// the control plane, then stops the gRPC server after in-flight calls.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.gateway_task.await?.context("gateway failed")?;
        self.grpc_task.await?.context("grpc server failed")?;
        Ok(())
    }
}

/// Starts the control plane and the emulator on the configured addresses.
pub async fn start(mut config: Config) -> anyhow::Result<DevStack> {
    let mut sample_token = None;
    let jwt = match &config.jwt {
        Some(jwt) => jwt.clone(),
        None => {
            let keys = generate_rsa_key_pair()?;
            let claims = Claims {
                sub: "dev-user".into(),
                tenant_id: "dev".into(),
                exp: now_secs() + DEV_TOKEN_TTL.as_secs(),
                permissions: vec!["*".into()],
                iss: None,
                aud: None,
            };
            sample_token = Some(mint_rs256(&keys.private_pem, &claims)?);
            JwtConfig {
                public_key_pem: keys.public_pem,
                algorithms: vec![jsonwebtoken::Algorithm::RS256],
                issuer: None,
                audience: None,
                leeway: Duration::from_secs(5),
            }
        }
    };
    let admin_token_generated = config.tokens.admin.is_none();
    let edge_token = config.tokens.edge.get_or_insert_with(random_token).clone();
    let admin_token = config.tokens.admin.get_or_insert_with(random_token).clone();

    let app = App::build(&config, Some(&jwt), local_sdk_config().await).await?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
    let gateway_listener = TcpListener::bind(config.gateway.addr)
        .await
        .with_context(|| format!("cannot listen for the gateway on {}", config.gateway.addr))?;
    crate::server::raise_open_file_limit();
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let gateway_addr = gateway_listener.local_addr()?;
    let stage = config.gateway.stage.clone();

    let handler = EdgeHandler::new(
        edge_client(&format!("http://{grpc_addr}"), &edge_token)?,
        Some(format!("http://{gateway_addr}/{stage}")),
    );
    let gateway = Gateway::new(
        handler,
        GatewayOptions {
            stage: stage.clone(),
            max_message_bytes: config.gateway.max_message_bytes,
            idle_timeout: config.gateway.idle_timeout,
            max_duration: config.gateway.max_duration,
        },
    );

    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc_task = tokio::spawn(app.serve(grpc_listener, stopped(stop_rx.clone())));
    let gateway_task = tokio::spawn(gateway.serve(gateway_listener, stopped(stop_rx.clone())));
    if let Some(listener) = metrics_listener {
        tokio::spawn(crate::metrics::serve(listener, stopped(stop_rx.clone())));
    }
    if config.demo_processor {
        let demo = crate::demo::processor(
            &format!("http://{grpc_addr}"),
            &admin_token,
            config.demo_duration,
        );
        tokio::spawn(demo.run(stopped(stop_rx)));
    }
    Ok(DevStack {
        ready: Ready {
            grpc: grpc_addr,
            gateway: gateway_addr,
            stage,
            metrics: metrics_addr,
        },
        admin_token,
        admin_token_generated,
        sample_token,
        stop,
        grpc_task,
        gateway_task,
    })
}

/// Runs `dev` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stack = start(config).await?;
    print_banner(
        &stack.ready,
        stack.sample_token.as_deref(),
        stack
            .admin_token_generated
            .then_some(stack.admin_token.as_str()),
    );
    crate::server::shutdown_signal().await;
    tracing::info!("shutting down");
    stack.stop().await
}

fn print_banner(ready: &Ready, sample_token: Option<&str>, admin_token: Option<&str>) {
    let ws = format!("ws://{}/{}", ready.gateway, ready.stage);
    println!("streamer dev is ready");
    println!("  websocket:       {ws}");
    println!(
        "  management api:  http://{}/{}",
        ready.gateway, ready.stage
    );
    println!("  grpc:            {}", ready.grpc);
    if let Some(metrics) = ready.metrics {
        println!("  metrics:         http://{metrics}/metrics");
    }
    println!();
    match sample_token {
        Some(token) => {
            println!("connect as user dev-user of tenant dev (token valid 12 h):");
            println!("  wscat -c '{ws}?token={token}'");
            println!(r#"  then send: {{"id":"1","action":"echo","payload":{{"hello":"world"}}}}"#);
            println!(
                r#"  or a long-running one: {{"request_id":"r1","action":"generate_report","payload":{{"start_date":"2024-01-01","end_date":"2024-01-31","format":"pdf","report_type":"monthly"}}}}"#
            );
        }
        None => println!(
            "connect with a token signed by your configured key: wscat -c '{ws}?token=<jwt>'"
        ),
    }
    let bearer = admin_token.map_or_else(|| "$STREAMER_ADMIN_TOKEN".to_owned(), str::to_owned);
    println!("query the control plane:");
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer {bearer}' {} list",
        ready.grpc
    );
    println!(
        r#"  grpcurl -plaintext -H 'authorization: Bearer {bearer}' -d '{{"tenant_id":"dev","data":{{"hello":"everyone"}}}}' {} streamer.v1.BroadcastService/Send"#,
        ready.grpc
    );
    println!(
        "STREAMER_DEV_READY {}",
        serde_json::to_string(ready).unwrap_or_default()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
