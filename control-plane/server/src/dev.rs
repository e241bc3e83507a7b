//! `streamer-control-plane dev`: the control plane on the embedded store
//! plus the local API Gateway emulator and a demo processor, in one process,
//! on loopback.
//!
//! Whatever is not configured comes from the state folder
//! (`STREAMER_STATE_DIR`): an RSA key pair for client tokens (with a
//! ready-to-use token printed) and the edge and admin gRPC tokens, made once
//! and kept across restarts. The emulator's Management API is reached with
//! static local credentials, so nothing ever looks for AWS credentials or
//! instance metadata. `dev` reports ready only once its demo processor has
//! registered, so the demo actions answer from the first frame.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use streamer_client::token::{Claims, mint_rs256};
use streamer_control_plane::{
    app::{App, Console, raise_open_file_limit},
    config::{Config, JwtConfig, ManagementEndpoints, settings},
    console::{DEV_CLIENT_TOKEN_TTL_SECS, DevClients},
    delivery::management_api::ManagementApi,
};
use streamer_edge::{
    client::{EdgeCredentials, edge_client_with},
    gateway::{Gateway, GatewayOptions, LocalCredentials},
    handler::EdgeHandler,
};
use tokio::{net::TcpListener, sync::watch};

use crate::state::State;

/// How long the printed development token is valid.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long `dev` waits for its demo processor to register.
const DEMO_READY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Every replica's gRPC address (`grpc` is the first).
    pub replicas: Vec<SocketAddr>,
    /// The web console's address, unless it is off.
    pub console: Option<SocketAddr>,
    /// With TLS on: what a client trusts and presents.
    pub tls: Option<ReadyTls>,
}

/// The TLS material a client of `dev` uses (PEM files).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyTls {
    /// The CA to trust (`None`: the certificate is for the platform's
    /// roots).
    pub ca: Option<std::path::PathBuf>,
    /// Whether the gRPC port requires a client certificate.
    pub mutual: bool,
    /// A client certificate and key `dev` made (`dev --tls`).
    pub client_cert: Option<std::path::PathBuf>,
    /// Its key.
    pub client_key: Option<std::path::PathBuf>,
}

/// A running control plane plus gateway emulator.
#[derive(Debug)]
pub struct DevStack {
    /// Where everything listens.
    pub ready: Ready,
    /// The admin gRPC token (configured or from the state folder).
    pub admin_token: String,
    /// Whether the admin token came from the state folder (so it may be
    /// printed).
    pub admin_token_made: bool,
    /// A client token for user `dev-user` of tenant `dev`, when the signing
    /// key is `dev`'s own.
    pub sample_token: Option<String>,
    /// The private key file, when the signing key is `dev`'s own.
    pub private_key: Option<std::path::PathBuf>,
    stop: watch::Sender<bool>,
    grpc_stop: watch::Sender<bool>,
    apps: Vec<App>,
    drain_timeout: Duration,
    grpc_tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    gateway_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DevStack {
    /// Lets the sends in flight finish (within `STREAMER_DRAIN_TIMEOUT_SECS`:
    /// a broadcast under way reaches its clients, and its report says so),
    /// then closes every WebSocket (1001), lets their `$disconnect` events
    /// reach the control plane, and stops the gRPC server after in-flight
    /// calls.
    pub async fn stop(self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for app in &self.apps {
            app.drain_sends(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        }
        let _ = self.stop.send(true);
        let gateway = self.gateway_task.await;
        let _ = self.grpc_stop.send(true);
        gateway?.context("gateway failed")?;
        for task in self.grpc_tasks {
            task.await?.context("grpc server failed")?;
        }
        Ok(())
    }
}

async fn bind(
    addr: SocketAddr,
    what: &str,
    setting: &settings::Setting,
) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen for {what} on {addr} (set {} to another address)",
            setting.name()
        )
    })
}

/// The AWS configuration for talking to the local emulator: its static
/// credentials and region, so no credential or region lookup ever leaves
/// the machine (no instance-metadata calls).
pub async fn local_sdk_config(credentials: &LocalCredentials) -> aws_config::SdkConfig {
    use aws_config::{BehaviorVersion, Region};
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(credentials.region.clone()))
        .credentials_provider(aws_credential_types::Credentials::new(
            &credentials.access_key,
            &credentials.secret_key,
            None,
            None,
            "streamer-local",
        ))
        .load()
        .await
}

/// The emulator's options from the configuration.
pub fn gateway_options(config: &Config) -> GatewayOptions {
    let gateway = &config.gateway;
    GatewayOptions {
        stage: gateway.stage.clone(),
        max_message_bytes: gateway.max_message_bytes,
        max_frame_bytes: gateway.max_frame_bytes,
        idle_timeout: gateway.idle_timeout,
        max_duration: gateway.max_duration,
        header_timeout: gateway.header_timeout,
        connects_per_second: gateway.connects_per_second,
        management_rps: gateway.management_rps,
        management_burst: gateway.management_burst,
        batch: gateway.batch,
        credentials: LocalCredentials::default(),
        verify_signatures: true,
        // API Gateway has no per-address limits of its own: `dev` emulates it.
        ..GatewayOptions::default()
    }
}

/// With `dev --tls`: a local CA and certificates in the state folder's
/// `tls/` (made once, made again near their end), served with mutual TLS,
/// the emulator's edge presenting the edge certificate. With
/// `STREAMER_TLS_*` set: what a client needs to know of them.
fn local_tls(config: &mut Config) -> anyhow::Result<Option<ReadyTls>> {
    if config.dev.tls {
        let identity = config.server.tls.as_ref().map_or_else(
            || settings::TLS_EDGE_IDENTITY.default.to_owned(),
            |t| t.edge_identity.clone(),
        );
        let pki =
            streamer_listener::pki::LocalPki::open(&config.dev.state_dir.join("tls"), &identity)
                .map_err(|e| anyhow::anyhow!("dev --tls: {e}"))?;
        config.server.tls = Some(streamer_control_plane::config::TlsConfig {
            cert: pki.server.0.clone(),
            key: pki.server.1.clone(),
            client_ca: Some(pki.ca.clone()),
            edge_identity: identity,
        });
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        config.gateway.edge_tls = streamer_client::ClientTls {
            ca: Some(path(&pki.ca)),
            identity: Some((path(&pki.edge.0), path(&pki.edge.1))),
        };
        return Ok(Some(ReadyTls {
            ca: Some(pki.ca),
            mutual: true,
            client_cert: Some(pki.client.0),
            client_key: Some(pki.client.1),
        }));
    }
    Ok(config.server.tls.as_ref().map(|tls| ReadyTls {
        ca: config
            .gateway
            .edge_tls
            .ca
            .as_ref()
            .filter(|ca| !ca.trim_start().starts_with("-----BEGIN"))
            .map(std::path::PathBuf::from),
        mutual: tls.client_ca.is_some(),
        client_cert: None,
        client_key: None,
    }))
}

/// Starts the control plane and the emulator on the configured addresses.
pub async fn start(mut config: Config) -> anyhow::Result<DevStack> {
    let state = State::open(&config.dev.state_dir)?;
    let mut sample_token = None;
    let mut private_key = None;
    let mut signing_key = None;
    let jwt = match &config.jwt {
        Some(jwt) => jwt.clone(),
        None => {
            let keys = state.key_pair()?;
            let claims = Claims::new("dev-user", "dev", &["*"], DEV_TOKEN_TTL.as_secs());
            sample_token = Some(mint_rs256(&keys.private_pem, &claims)?);
            private_key = Some(state.private_key_path());
            signing_key = Some(keys.private_pem.clone());
            JwtConfig {
                public_key_pem: keys.public_pem,
                algorithms: vec![jsonwebtoken::Algorithm::RS256],
                issuer: None,
                audience: None,
                leeway: Duration::from_secs(5),
                max_lifetime: None,
                jwks_url: None,
                jwks_refresh: Duration::from_secs(300),
                any_issuer: true,
                any_audience: true,
            }
        }
    };
    let ready_tls = local_tls(&mut config)?;
    let admin_token_made = config.tokens.admin.is_none();
    if config.tokens.edge.is_none() || config.tokens.admin.is_none() {
        let made = state.tokens()?;
        config.tokens.edge.get_or_insert(made.edge);
        config.tokens.admin.get_or_insert(made.admin);
    }
    let edge_token = config.tokens.edge.clone().unwrap_or_default();
    let admin_token = config.tokens.admin.clone().unwrap_or_default();
    // Every client of `dev` comes from loopback: the per-IP connect limit
    // would stop a newcomer's eleventh wscat line.
    config
        .limits
        .loopback_connects_unlimited
        .get_or_insert(true);

    let options = gateway_options(&config);
    // The gateway's address first: it is the one Management API endpoint
    // this deployment calls (unless configured otherwise).
    let gateway_listener =
        bind(config.gateway.addr, "the gateway", &settings::GATEWAY_ADDR).await?;
    let gateway_addr = gateway_listener.local_addr()?;
    let stage = config.gateway.stage.clone();
    let management_endpoint = config
        .gateway
        .management_endpoint
        .clone()
        .unwrap_or_else(|| format!("http://{gateway_addr}/{stage}"));
    // dev calls its own emulator, whatever else is configured.
    let own = ManagementEndpoints::normalise(&management_endpoint);
    config.delivery.endpoints = match std::mem::take(&mut config.delivery.endpoints) {
        ManagementEndpoints::Any => ManagementEndpoints::Any,
        ManagementEndpoints::Unset => ManagementEndpoints::Only(own.into_iter().collect()),
        ManagementEndpoints::Only(mut list) => {
            list.extend(own);
            ManagementEndpoints::Only(list)
        }
    };
    let delivery = Arc::new(ManagementApi::new(
        local_sdk_config(&options.credentials).await,
        config.delivery.clone(),
    ));
    // One App per replica, each with its own store clients and caches, as
    // separate processes would have; they share only the store.
    let mut apps = Vec::with_capacity(config.dev.replicas);
    let mut grpc_listeners = Vec::with_capacity(config.dev.replicas);
    for i in 0..config.dev.replicas {
        apps.push(App::build(&config, Some(&jwt), delivery.clone()).await?);
        let addr = if i == 0 {
            config.server.grpc_addr
        } else {
            SocketAddr::new(config.server.grpc_addr.ip(), 0)
        };
        grpc_listeners.push(bind(addr, "gRPC", &settings::GRPC_ADDR).await?);
    }
    let app = apps[0].clone();
    let console_listener = match config.server.console.resolve(true) {
        Some(addr) => Some(bind(addr, "the console", &settings::CONSOLE_ADDR).await?),
        None => None,
    };
    let console_addr = console_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    raise_open_file_limit();
    let metrics_listener = match config.server.metrics_addr {
        Some(addr) => Some(bind(addr, "metrics", &settings::METRICS_ADDR).await?),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let replicas = grpc_listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let grpc_addr = replicas[0];

    // With TLS on, the emulator's edge calls its own gRPC port over TLS,
    // as the Lambdas do; with a client certificate it needs no token.
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let control_plane_urls = match &config.gateway.control_plane_url {
        Some(url) => vec![url.clone()],
        None => replicas.iter().map(|a| format!("{scheme}://{a}")).collect(),
    };
    let credentials = EdgeCredentials {
        token: config
            .gateway
            .edge_tls
            .identity
            .is_none()
            .then(|| edge_token.clone()),
        tls: config.gateway.edge_tls.clone(),
    };
    let clients = control_plane_urls
        .iter()
        .map(|url| edge_client_with(url, &credentials, config.gateway.edge_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let handler = EdgeHandler::spread(clients, Some(management_endpoint))
        .with_call_timeout(config.gateway.edge_timeout);
    let gateway = Gateway::new(handler, options);

    let (stop, stop_rx) = watch::channel(false);
    // The gRPC servers stop only after the gateway has closed its sockets and
    // delivered their `$disconnect`s (on one signal, their GOAWAY refused
    // those calls).
    let (grpc_stop, grpc_stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // The console rides on the first replica.
    let mut console = console_listener.map(|listener| Console {
        listener,
        dev: signing_key.map(|private_pem| {
            Arc::new(ConsoleClients {
                private_pem,
                websocket_url: format!("ws://{gateway_addr}/{stage}"),
            }) as Arc<dyn DevClients>
        }),
    });
    let serving = apps.clone();
    let grpc_tasks = apps
        .into_iter()
        .zip(grpc_listeners)
        .map(|(app, listener)| {
            tokio::spawn(app.serve_with(listener, console.take(), stopped(grpc_stop_rx.clone())))
        })
        .collect();
    let gateway_task = tokio::spawn(gateway.serve(gateway_listener, stopped(stop_rx.clone())));
    if let Some(listener) = metrics_listener {
        app.serve_metrics(listener, stopped(stop_rx.clone()));
    }
    if config.dev.demo_processor {
        let demo = crate::demo::processor(
            &format!("{scheme}://{grpc_addr}"),
            &admin_token,
            config.gateway.edge_tls.clone(),
            config.dev.demo_duration,
        );
        tokio::spawn(demo.run(stopped(stop_rx)));
        let waited = tokio::time::timeout(DEMO_READY_TIMEOUT, async {
            while app.processor_count() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                "the demo processor did not register in time; its actions may answer INVALID_ACTION for a moment"
            );
        }
    }
    Ok(DevStack {
        ready: Ready {
            grpc: grpc_addr,
            gateway: gateway_addr,
            stage,
            metrics: metrics_addr,
            replicas,
            console: console_addr,
            tls: ready_tls,
        },
        admin_token,
        admin_token_made,
        sample_token,
        private_key,
        stop,
        grpc_stop,
        apps: serving,
        drain_timeout: config.server.transport.drain_timeout,
        grpc_tasks,
        gateway_task,
    })
}

/// The console's client panel: tokens signed with `dev`'s own key.
struct ConsoleClients {
    private_pem: String,
    websocket_url: String,
}

impl DevClients for ConsoleClients {
    fn mint(&self, tenant_id: &str, user_id: &str) -> Result<String, String> {
        let claims = Claims::new(user_id, tenant_id, &["*"], DEV_CLIENT_TOKEN_TTL_SECS);
        mint_rs256(&self.private_pem, &claims).map_err(|e| e.to_string())
    }

    fn websocket_url(&self) -> String {
        self.websocket_url.clone()
    }
}

/// Runs `dev` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let stack = start(config).await?;
    crate::banner::print(&stack);
    streamer_control_plane::app::shutdown_signal().await;
    tracing::info!("shutting down");
    stack.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_table_and_the_emulator_agree_on_api_gateways_defaults() {
        let config = Config::load(None, &|_| None).expect("defaults");
        let from_settings = gateway_options(&config);
        let emulator = GatewayOptions::default();
        assert_eq!(
            format!("{from_settings:?}"),
            format!("{emulator:?}"),
            "one set of defaults"
        );
    }
}
