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

/// `STREAMER_TLS_CERT=self-signed`: make a certificate at start.
pub const SELF_SIGNED: &str = "self-signed";

impl TlsConfig {
    /// Whether the certificate is to be made at start.
    pub fn self_signed(&self) -> bool {
        self.cert.as_os_str() == SELF_SIGNED
    }
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
                    // A certificate made at start, for a load balancer that
                    // terminates the clients' TLS and encrypts again to the
                    // task without checking its certificate (an NLB).
                    (Some(cert), None) if cert.as_os_str() == SELF_SIGNED => Some(TlsConfig {
                        cert,
                        key: std::path::PathBuf::new(),
                        client_ca,
                        edge_identity,
                    }),
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
    /// Serve the batch call beside the Management API.
    pub batch: bool,
    /// The Management API URL the gateway reports in connect events (a
    /// proxy in front of it, for fault injection); `None`: its own.
    pub management_endpoint: Option<String>,
    /// Where the gateway's edge handlers call the control plane; `None`:
    /// the control plane `dev` runs.
    pub control_plane_url: Option<String>,
    /// How long an edge call may take (a Lambda's call timeout).
    pub edge_timeout: Duration,
    /// What the edge trusts and presents for an `https://` control plane.
    pub edge_tls: streamer_proto::tls::ClientTls,
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
            batch: src.get(&s::GATEWAY_BATCH),
            management_endpoint: src.opt(&s::GATEWAY_MANAGEMENT_ENDPOINT),
            control_plane_url: src.opt(&s::GATEWAY_CONTROL_PLANE_URL),
            edge_timeout: millis(src.at_least(&s::GATEWAY_EDGE_TIMEOUT_MS, 1)),
            edge_tls: {
                let cert: Option<String> = src.opt(&s::EDGE_TLS_CERT);
                let key: Option<String> = src.opt(&s::EDGE_TLS_KEY);
                if cert.is_some() != key.is_some() {
                    src.problem(
                        if cert.is_some() { &s::EDGE_TLS_KEY } else { &s::EDGE_TLS_CERT },
                        "the edge's client certificate needs both STREAMER_EDGE_TLS_CERT and STREAMER_EDGE_TLS_KEY",
                    );
                }
                streamer_proto::tls::ClientTls {
                    ca: src.opt(&s::CONTROL_PLANE_CA),
                    identity: cert.zip(key),
                }
            },
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
    /// Longest token lifetime accepted (`None`: no limit).
    pub max_lifetime: Option<Duration>,
    /// A JWKS document of keys chosen by `kid`.
    pub jwks_url: Option<String>,
    /// How often the JWKS document is fetched again.
    pub jwks_refresh: Duration,
    /// `iss` and `aud` left unchecked on purpose (`any`), so production
    /// may start without them.
    pub any_issuer: bool,
    /// See `any_issuer`.
    pub any_audience: bool,
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
        let issuer: Option<String> = src.opt(&s::JWT_ISSUER);
        let audience: Option<String> = src.opt(&s::JWT_AUDIENCE);
        let any_issuer = issuer.as_deref() == Some("any");
        let any_audience = audience.as_deref() == Some("any");
        let issuer = issuer.filter(|_| !any_issuer);
        let audience = audience.filter(|_| !any_audience);
        let jwks_url: Option<String> = src.opt(&s::JWT_JWKS_URL);
        if let Some(url) = &jwks_url
            && let Err(why) = crate::connections::jwks::check_url(url)
        {
            src.problem(&s::JWT_JWKS_URL, why);
        }
        let jwks_refresh = secs(src.at_least(&s::JWT_JWKS_REFRESH_SECS, 1));
        let max_lifetime = match src.get::<u64>(&s::JWT_MAX_LIFETIME_SECS) {
            0 => None,
            n => Some(Duration::from_secs(n)),
        };
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
            (None, None) if jwks_url.is_some() => String::new(),
            (None, None) => return None,
        };
        Some(Self {
            public_key_pem,
            algorithms,
            issuer,
            audience,
            leeway,
            max_lifetime,
            jwks_url,
            jwks_refresh,
            any_issuer,
            any_audience,
        })
    }
}

/// A service token from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTokenConfig {
    /// A name for logs and the audit trail.
    pub name: String,
    /// The bearer token (empty when read from `token_secret_arn`).
    #[serde(default)]
    pub token: String,
    /// A Secrets Manager secret holding the token (read at start and on
    /// SIGHUP).
    #[serde(default)]
    pub token_secret_arn: Option<String>,
    /// When set, the token reaches only this tenant.
    pub tenant_id: Option<String>,
}

/// What a named operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    /// The whole server API.
    Admin,
    /// Reads only: list, count, get, history, stats.
    Read,
}

impl OperatorRole {
    /// The role's name, as the config file and the audit trail spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Admin => "admin",
            OperatorRole::Read => "read",
        }
    }
}

/// A named operator from the config file (`[[tokens.operators]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// The person or tool, as the audit trail names them.
    pub name: String,
    /// The bearer token (empty when read from `token_secret_arn`).
    #[serde(default)]
    pub token: String,
    /// A Secrets Manager secret holding the token.
    #[serde(default)]
    pub token_secret_arn: Option<String>,
    /// What they may do.
    pub role: OperatorRole,
}

/// Tokens gRPC callers present as `authorization: Bearer <token>`. Values
/// named by a `…_secret_arn` are read by [`crate::api::auth::resolve`]
/// (at start and on SIGHUP) before the table is built.
#[derive(Debug, Clone, Default)]
pub struct TokenConfig {
    /// Grants the edge role.
    pub edge: Option<String>,
    /// The edge token being rotated out, still accepted.
    pub edge_previous: Option<String>,
    /// Secrets Manager secret of the edge token (AWSCURRENT, AWSPREVIOUS).
    pub edge_secret_arn: Option<String>,
    /// Grants the admin role, as the operator named `admin`.
    pub admin: Option<String>,
    /// Secrets Manager secret of the admin token.
    pub admin_secret_arn: Option<String>,
    /// Service tokens, each optionally bound to one tenant.
    pub services: Vec<ServiceTokenConfig>,
    /// Named operators with roles.
    pub operators: Vec<OperatorConfig>,
}

/// A `[[tokens.*]]` entry names its token or a secret holding it, exactly
/// one: a literal token joins `all` for the length and reuse checks.
fn token_or_secret<'a>(
    what: &str,
    token: &'a str,
    from_secret: bool,
    problems: &mut Vec<String>,
    all: &mut Vec<(String, &'a str)>,
) {
    match (token.is_empty(), from_secret) {
        (true, false) => problems.push(format!("{what}: set token or token_secret_arn")),
        (false, true) => problems.push(format!("{what}: set token or token_secret_arn, not both")),
        (false, false) => all.push((what.to_owned(), token)),
        (true, true) => {}
    }
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
        let operators: Vec<OperatorConfig> = match src.table(&s::OPERATORS).cloned() {
            None => Vec::new(),
            Some(value) => value.try_into().unwrap_or_else(|err: toml::de::Error| {
                src.problem(&s::OPERATORS, err.message());
                Vec::new()
            }),
        };
        let tokens = Self {
            edge: src.opt(&s::EDGE_TOKEN),
            edge_previous: src.opt(&s::EDGE_TOKEN_PREVIOUS),
            edge_secret_arn: src.opt(&s::EDGE_TOKEN_SECRET_ARN),
            admin: src.opt(&s::ADMIN_TOKEN),
            admin_secret_arn: src.opt(&s::ADMIN_TOKEN_SECRET_ARN),
            services,
            operators,
        };
        for problem in tokens.problems() {
            src.problems_push(problem);
        }
        tokens
    }

    /// Whether any token can reach the server API (an admin, an operator
    /// or a service), once secrets are read.
    pub fn has_server_tokens(&self) -> bool {
        self.admin.is_some()
            || self.admin_secret_arn.is_some()
            || !self.services.is_empty()
            || !self.operators.is_empty()
    }

    /// Whether the edge has a token (or a secret holding one).
    pub fn has_edge_token(&self) -> bool {
        self.edge.is_some() || self.edge_secret_arn.is_some()
    }

    /// What is wrong with these tokens: too short, one token for two
    /// principals, a token and a secret both (or neither) for one entry,
    /// a bad tenant id or a name used twice. Checked on the config as
    /// loaded, and again once secrets are read.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let both = |setting: &str, literal: bool, secret: bool, problems: &mut Vec<String>| {
            if literal && secret {
                problems.push(format!("{setting}: set a token or a secret ARN, not both"));
            }
        };
        both(
            s::EDGE_TOKEN.name(),
            self.edge.is_some(),
            self.edge_secret_arn.is_some(),
            &mut problems,
        );
        both(
            s::ADMIN_TOKEN.name(),
            self.admin.is_some(),
            self.admin_secret_arn.is_some(),
            &mut problems,
        );
        let mut all: Vec<(String, &str)> = [
            (s::EDGE_TOKEN.name(), self.edge.as_deref()),
            (s::EDGE_TOKEN_PREVIOUS.name(), self.edge_previous.as_deref()),
            (s::ADMIN_TOKEN.name(), self.admin.as_deref()),
        ]
        .into_iter()
        .filter_map(|(setting, token)| token.map(|t| (setting.to_owned(), t)))
        .collect();
        let mut names = HashSet::new();
        for service in &self.services {
            let what = format!("service {:?}", service.name);
            token_or_secret(
                &what,
                &service.token,
                service.token_secret_arn.is_some(),
                &mut problems,
                &mut all,
            );
            if let Some(tenant) = &service.tenant_id
                && !streamer_proto::ids::valid_tenant_id(tenant)
            {
                problems.push(format!("{what}: invalid tenant_id"));
            }
            if !names.insert(service.name.as_str()) {
                problems.push(format!("{what}: the name is used twice"));
            }
        }
        for operator in &self.operators {
            let what = format!("operator {:?}", operator.name);
            token_or_secret(
                &what,
                &operator.token,
                operator.token_secret_arn.is_some(),
                &mut problems,
                &mut all,
            );
            let reserved = operator.name == "admin" && self.has_admin_token();
            if operator.name.is_empty() || reserved || !names.insert(operator.name.as_str()) {
                problems.push(format!(
                    "{what}: the name is empty, used twice, or `admin` while STREAMER_ADMIN_TOKEN is set"
                ));
            }
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (setting, token) in all {
            if token.len() < MIN_TOKEN_LEN {
                problems.push(format!(
                    "{setting}: tokens must be at least {MIN_TOKEN_LEN} characters"
                ));
            }
            if !seen.insert(token) {
                problems.push(format!(
                    "{setting}: the same token is used for another principal; each needs its own"
                ));
            }
        }
        problems
    }

    fn has_admin_token(&self) -> bool {
        self.admin.is_some() || self.admin_secret_arn.is_some()
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
    /// Make a local CA and certificates and serve with (mutual) TLS.
    pub tls: bool,
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
            tls: src.get(&s::DEV_TLS),
        }
    }
}
