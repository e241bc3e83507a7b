//! The process-level sections: the gRPC server and its transport, the
//! emulator (`dev`), client-token verification, caller tokens and `dev`'s
//! own settings.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;
pub use streamer_telemetry::LogFormat;

use super::{Source, millis, secs, settings as s, socket_addr};

/// The gRPC server and the process around it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether per-tenant series carry tenant ids.
    pub metrics_tenant_labels: bool,
    /// The bearer token `/metrics` asks for, if any.
    pub metrics_token: Option<String>,
    /// Where the web console is served.
    pub console: ConsoleAddr,
    /// Log output format.
    pub log_format: LogFormat,
    /// Key that signs list page tokens; random per process when unset.
    pub page_token_secret: Option<String>,
    /// Transport limits of the gRPC port.
    pub transport: TransportConfig,
    /// Limits of the HTTP ports (console, `/metrics`).
    pub http: HttpConfig,
    /// TLS for every listener, when configured.
    pub tls: Option<TlsConfig>,
}

/// The HTTP ports' limits (`STREAMER_HTTP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_connections_per_ip: usize,
    /// Deadline of the handshake and each request head.
    pub header_timeout: Duration,
    /// Floor rate of a request body after the grace.
    pub body_min_bytes_per_sec: u64,
    /// How long a body may take before the floor applies.
    pub body_grace: Duration,
    /// A connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
}

/// TLS material (`STREAMER_TLS_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Private key (PEM).
    pub key: std::path::PathBuf,
    /// Client CA for mutual TLS on the gRPC port.
    pub client_ca: Option<std::path::PathBuf>,
    /// The certificate name that is the edge role.
    pub edge_identity: String,
}

/// Where the web console listens (`STREAMER_CONSOLE_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleAddr {
    /// Not configured: off for `serve`, [`ConsoleAddr::DEV_DEFAULT`] under `dev`.
    Default,
    /// Turned off (`off`).
    Off,
    /// This address.
    At(SocketAddr),
}

impl ConsoleAddr {
    /// `dev`'s address when none is configured.
    pub const DEV_DEFAULT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

    /// The address to serve on, if any; `dev` serves by default.
    pub fn resolve(self, dev: bool) -> Option<SocketAddr> {
        match self {
            ConsoleAddr::At(addr) => Some(addr),
            ConsoleAddr::Default if dev => Some(Self::DEV_DEFAULT),
            ConsoleAddr::Default | ConsoleAddr::Off => None,
        }
    }
}

/// Limits on the gRPC port's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Close a connection that has not completed its HTTP/2 preface and
    /// first SETTINGS frame within this long.
    pub handshake_timeout: Duration,
    /// Close a connection with no call in flight for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 PING interval (`None`: no keepalive).
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
    /// Calls in flight on one connection (HTTP/2 `MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// GOAWAY after this long (`None`: no limit).
    pub max_connection_age: Option<Duration>,
    /// How long calls in flight may run after a shutdown signal.
    pub drain_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1000,
            max_connection_age: None,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        Self {
            grpc_addr: src
                .parse_with(&s::GRPC_ADDR, socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051))),
            metrics_addr: src.parse_with(&s::METRICS_ADDR, socket_addr),
            metrics_tenant_labels: src.get(&s::METRICS_TENANT_LABELS),
            metrics_token: {
                // Checked by hand: a problem must not print the secret.
                let token: Option<String> = src.opt(&s::METRICS_TOKEN);
                if token.as_ref().is_some_and(|t| t.len() < 16) {
                    src.problem(&s::METRICS_TOKEN, "must be at least 16 characters");
                }
                token.filter(|t| !t.is_empty())
            },
            console: src
                .parse_with(&s::CONSOLE_ADDR, |text| {
                    if text.eq_ignore_ascii_case("off") {
                        Ok(ConsoleAddr::Off)
                    } else {
                        socket_addr(text).map(ConsoleAddr::At)
                    }
                })
                .unwrap_or(ConsoleAddr::Default),
            log_format: src.opt(&s::LOG_FORMAT).unwrap_or(LogFormat::Pretty),
            page_token_secret: src.opt(&s::PAGE_TOKEN_SECRET),
            transport: TransportConfig {
                handshake_timeout: millis(src.at_least(&s::GRPC_HANDSHAKE_TIMEOUT_MS, 100)),
                idle_timeout: nonzero(secs(src.get(&s::GRPC_IDLE_TIMEOUT_SECS))),
                keepalive_interval: nonzero(secs(src.get(&s::GRPC_KEEPALIVE_INTERVAL_SECS))),
                keepalive_timeout: secs(src.at_least(&s::GRPC_KEEPALIVE_TIMEOUT_SECS, 1)),
                max_concurrent_streams: src.at_least(&s::GRPC_MAX_CONCURRENT_STREAMS, 1),
                max_connection_age: nonzero(secs(src.get(&s::GRPC_MAX_CONNECTION_AGE_SECS))),
                drain_timeout: secs(src.get(&s::DRAIN_TIMEOUT_SECS)),
            },
            http: HttpConfig {
                max_connections: src.at_least(&s::HTTP_MAX_CONNECTIONS, 1),
                max_connections_per_ip: src.at_least(&s::HTTP_MAX_CONNECTIONS_PER_IP, 1),
                header_timeout: millis(src.at_least(&s::HTTP_HEADER_TIMEOUT_MS, 100)),
                body_min_bytes_per_sec: src.get(&s::HTTP_BODY_MIN_BYTES_PER_SEC),
                body_grace: millis(src.get(&s::HTTP_BODY_GRACE_MS)),
                idle_timeout: secs(src.at_least(&s::HTTP_IDLE_TIMEOUT_SECS, 1)),
            },
            tls: {
                let cert: Option<std::path::PathBuf> = src.opt(&s::TLS_CERT);
                let key: Option<std::path::PathBuf> = src.opt(&s::TLS_KEY);
                let client_ca: Option<std::path::PathBuf> = src.opt(&s::TLS_CLIENT_CA);
                let edge_identity: String = src.get(&s::TLS_EDGE_IDENTITY);
                match (cert, key) {
                    (Some(cert), Some(key)) => Some(TlsConfig {
                        cert,
                        key,
                        client_ca,
                        edge_identity,
                    }),
                    (None, None) => {
                        if client_ca.is_some() {
                            src.problem(
                                &s::TLS_CLIENT_CA,
                                "mutual TLS needs STREAMER_TLS_CERT and STREAMER_TLS_KEY too",
                            );
                        }
                        None
                    }
                    (Some(_), None) => {
                        src.problem(&s::TLS_KEY, "STREAMER_TLS_CERT is set; set its key too");
                        None
                    }
                    (None, Some(_)) => {
                        src.problem(
                            &s::TLS_CERT,
                            "STREAMER_TLS_KEY is set; set its certificate too",
                        );
                        None
                    }
                }
            },
        }
    }
}

/// API Gateway's message payload limit.
pub const API_GATEWAY_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// The local gateway emulator's address and API Gateway's limits.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// WebSocket and Management API address.
    pub addr: SocketAddr,
    /// Stage name, the first path segment.
    pub stage: String,
    /// Largest client message the gateway accepts (close 1009 above).
    pub max_message_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A connection is closed after this long, whatever it does.
    pub max_duration: Duration,
    /// Largest WebSocket frame (close 1009 above).
    pub max_frame_bytes: usize,
    /// How long a client may take to send its upgrade request head.
    pub header_timeout: Duration,
    /// New connections per second (0: unlimited).
    pub connects_per_second: u32,
    /// Management API requests per second (0: unlimited).
    pub management_rps: u32,
    /// Management API requests allowed at once.
    pub management_burst: u32,
    /// The Management API URL the gateway reports in connect events (a
    /// proxy in front of it, for fault injection); `None`: its own.
    pub management_endpoint: Option<String>,
    /// Where the gateway's edge handlers call the control plane; `None`:
    /// the control plane `dev` runs.
    pub control_plane_url: Option<String>,
    /// How long an edge call may take (a Lambda's call timeout).
    pub edge_timeout: Duration,
}

impl GatewayConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        let stage: String = src.get(&s::STAGE);
        if stage.is_empty()
            || !stage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            src.problem(&s::STAGE, "use letters, digits, '-' and '_'");
        }
        Self {
            addr: src
                .parse_with(&s::GATEWAY_ADDR, socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            stage,
            max_message_bytes: src.at_least(&s::GATEWAY_MAX_MESSAGE_BYTES, 1),
            idle_timeout: secs(src.at_least(&s::GATEWAY_IDLE_TIMEOUT_SECS, 1)),
            max_duration: secs(src.at_least(&s::GATEWAY_MAX_DURATION_SECS, 1)),
            max_frame_bytes: src.at_least(&s::GATEWAY_MAX_FRAME_BYTES, 1),
            header_timeout: millis(src.at_least(&s::GATEWAY_HEADER_TIMEOUT_MS, 1)),
            connects_per_second: src.get(&s::GATEWAY_CONNECTS_PER_SECOND),
            management_rps: src.get(&s::GATEWAY_MANAGEMENT_RPS),
            management_burst: src.get(&s::GATEWAY_MANAGEMENT_BURST),
            management_endpoint: src.opt(&s::GATEWAY_MANAGEMENT_ENDPOINT),
            control_plane_url: src.opt(&s::GATEWAY_CONTROL_PLANE_URL),
            edge_timeout: millis(src.at_least(&s::GATEWAY_EDGE_TIMEOUT_MS, 1)),
        }
    }
}

/// How client JWTs are verified at `$connect`.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The verification key, PEM text (RSA, EC or Ed25519 public key).
    pub public_key_pem: String,
    /// Accepted algorithms; all must fit the key's type.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway: Duration,
}

fn algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm::*;
    let algorithm = jsonwebtoken::Algorithm::from_str(name)
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    if matches!(algorithm, HS256 | HS384 | HS512) {
        return Err(format!(
            "{name} is a shared-secret algorithm; only public-key algorithms are accepted"
        ));
    }
    Ok(algorithm)
}

impl JwtConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Option<Self> {
        let inline: Option<String> = src.opt(&s::JWT_PUBLIC_KEY);
        let path: Option<PathBuf> = src.opt(&s::JWT_PUBLIC_KEY_FILE);
        let names = src.list(&s::JWT_ALGORITHMS);
        let mut algorithms = Vec::new();
        for name in &names {
            match algorithm(name) {
                Ok(a) => algorithms.push(a),
                Err(message) => src.problem(&s::JWT_ALGORITHMS, message),
            }
        }
        if names.is_empty() {
            src.problem(&s::JWT_ALGORITHMS, "list at least one algorithm");
        }
        let leeway = secs(src.get(&s::JWT_LEEWAY_SECS));
        let issuer = src.opt(&s::JWT_ISSUER);
        let audience = src.opt(&s::JWT_AUDIENCE);
        let public_key_pem = match (inline, path) {
            (Some(_), Some(_)) => {
                src.problem(
                    &s::JWT_PUBLIC_KEY,
                    "set either the key or STREAMER_JWT_PUBLIC_KEY_FILE, not both",
                );
                return None;
            }
            // Environment variables often carry PEM with literal "\n".
            (Some(pem), None) => pem.replace("\\n", "\n"),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(pem) => pem,
                Err(err) => {
                    src.problem(
                        &s::JWT_PUBLIC_KEY_FILE,
                        format!("cannot read {}: {err}", path.display()),
                    );
                    return None;
                }
            },
            (None, None) => return None,
        };
        Some(Self {
            public_key_pem,
            algorithms,
            issuer,
            audience,
            leeway,
        })
    }
}

/// A service token from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenConfig {
    /// A name for logs.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// When set, the token reaches only this tenant.
    pub tenant_id: Option<String>,
}

/// Tokens gRPC callers present as `authorization: Bearer <token>`.
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// Grants the edge role.
    pub edge: Option<String>,
    /// Grants the admin role.
    pub admin: Option<String>,
    /// Service tokens, each optionally bound to one tenant.
    pub services: Vec<ServiceTokenConfig>,
}

/// Shortest token accepted for any role.
pub const MIN_TOKEN_LEN: usize = 16;

impl TokenConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        let services: Vec<ServiceTokenConfig> = match src.table(&s::SERVICE_TOKENS).cloned() {
            None => Vec::new(),
            Some(value) => value.try_into().unwrap_or_else(|err: toml::de::Error| {
                src.problem(&s::SERVICE_TOKENS, err.message());
                Vec::new()
            }),
        };
        let tokens = Self {
            edge: src.opt(&s::EDGE_TOKEN),
            admin: src.opt(&s::ADMIN_TOKEN),
            services,
        };
        let mut seen: HashSet<&str> = HashSet::new();
        let all = [
            (&s::EDGE_TOKEN, tokens.edge.as_deref()),
            (&s::ADMIN_TOKEN, tokens.admin.as_deref()),
        ]
        .into_iter()
        .filter_map(|(setting, token)| token.map(|t| (setting, t)))
        .chain(
            tokens
                .services
                .iter()
                .map(|svc| (&s::SERVICE_TOKENS, svc.token.as_str())),
        );
        for (setting, token) in all {
            if token.len() < MIN_TOKEN_LEN {
                src.problem(
                    setting,
                    format!("tokens must be at least {MIN_TOKEN_LEN} characters"),
                );
            }
            if !seen.insert(token) {
                src.problem(
                    setting,
                    "the same token is used for another role; each role needs its own",
                );
            }
        }
        for service in &tokens.services {
            if let Some(tenant) = &service.tenant_id
                && !streamer_proto::ids::valid_tenant_id(tenant)
            {
                src.problem(
                    &s::SERVICE_TOKENS,
                    format!("service {:?}: invalid tenant_id", service.name),
                );
            }
        }
        tokens
    }
}

/// `dev`'s own settings.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// Where the key and tokens `dev` makes are kept across restarts.
    pub state_dir: PathBuf,
    /// Run the in-process demo processor (`echo_async`, `generate_report`).
    pub demo_processor: bool,
    /// How long a demo request takes.
    pub demo_duration: Duration,
    /// Control-plane replicas `dev` runs behind its one gateway (more than
    /// one needs the DynamoDB store, which they share).
    pub replicas: usize,
}

impl DevConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            state_dir: src
                .opt(&s::STATE_DIR)
                .unwrap_or_else(|| PathBuf::from(".build/dev")),
            demo_processor: src.opt(&s::DEMO_PROCESSOR).unwrap_or(true),
            demo_duration: millis(src.get(&s::DEMO_DURATION_MS)),
            replicas: src.at_least(&s::DEV_REPLICAS, 1),
        }
    }
}
