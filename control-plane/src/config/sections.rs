//! The typed sections of the configuration, each read from the settings
//! table by its own `resolve`.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;
pub use streamer_telemetry::LogFormat;

use super::{Source, settings as s};

/// Names or `prefix*` patterns (`*` alone matches everything): permission
/// grants, presence groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// Patterns from a list.
    pub fn new(patterns: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(patterns.into_iter().map(Into::into).collect())
    }

    /// Whether any pattern matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        grants(&self.0, name)
    }

    /// The patterns as written.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Whether `granted` covers `required`: an exact match, `*`, or a granted
/// `prefix*` wildcard.
pub fn grants(granted: &[impl AsRef<str>], required: &str) -> bool {
    granted.iter().any(|p| {
        let p = p.as_ref();
        p == required
            || p == "*"
            || p.strip_suffix('*')
                .is_some_and(|prefix| required.starts_with(prefix))
    })
}

fn secs(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| "not an ip:port address (e.g. 127.0.0.1:50051)".to_owned())
}

/// The gRPC server and the process around it.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC server listens.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Key that signs list page tokens; random per process when unset.
    pub page_token_secret: Option<String>,
    /// Transport limits of the gRPC port.
    pub transport: TransportConfig,
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
    /// GOAWAY after this long (`None`: no limit).
    pub max_connection_age: Option<Duration>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: None,
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
            log_format: src.opt(&s::LOG_FORMAT).unwrap_or(LogFormat::Pretty),
            page_token_secret: src.opt(&s::PAGE_TOKEN_SECRET),
            transport: TransportConfig {
                handshake_timeout: millis(src.at_least(&s::GRPC_HANDSHAKE_TIMEOUT_MS, 100)),
                idle_timeout: nonzero(secs(src.get(&s::GRPC_IDLE_TIMEOUT_SECS))),
                keepalive_interval: nonzero(secs(src.get(&s::GRPC_KEEPALIVE_INTERVAL_SECS))),
                keepalive_timeout: secs(src.at_least(&s::GRPC_KEEPALIVE_TIMEOUT_SECS, 1)),
                max_connection_age: nonzero(secs(src.get(&s::GRPC_MAX_CONNECTION_AGE_SECS))),
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

/// Limits applied to clients.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Largest client message the control plane accepts.
    pub max_message_bytes: usize,
    /// Sustained messages per connection per minute.
    pub messages_per_minute: u32,
    /// Messages a connection may send at once before the rate applies.
    pub message_burst: u32,
    /// Connection attempts per source IP per minute (also the burst).
    pub connects_per_minute_per_ip: u32,
    /// Connects from loopback addresses skip the per-IP limit (unset: off
    /// for `serve`, on for `dev`).
    pub loopback_connects_unlimited: Option<bool>,
    /// Most connections one tenant may hold; 0 means no quota.
    pub max_connections_per_tenant: u64,
}

impl LimitsConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            max_message_bytes: src.at_least(&s::MAX_MESSAGE_BYTES, 1),
            messages_per_minute: src.at_least(&s::MESSAGES_PER_MINUTE, 1),
            message_burst: src.at_least(&s::MESSAGE_BURST, 1),
            connects_per_minute_per_ip: src.at_least(&s::CONNECTS_PER_MINUTE_PER_IP, 1),
            loopback_connects_unlimited: src.opt(&s::LOOPBACK_CONNECTS_UNLIMITED),
            max_connections_per_tenant: src.get(&s::MAX_CONNECTIONS_PER_TENANT),
        }
    }
}

/// Management API fan-out.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Most `PostToConnection` calls in flight per broadcast.
    pub concurrency: usize,
    /// Attempts per recipient for 429 / 5xx / network errors.
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with full jitter.
    pub base_backoff: Duration,
    /// Upper bound of a retry delay.
    pub max_backoff: Duration,
    /// Timeout of one Management API call.
    pub call_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            max_attempts: 3,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(1000),
            call_timeout: Duration::from_millis(5000),
        }
    }
}

impl DeliveryConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            concurrency: src.at_least(&s::DELIVERY_CONCURRENCY, 1),
            max_attempts: src.at_least(&s::DELIVERY_MAX_ATTEMPTS, 1),
            base_backoff: millis(src.get(&s::DELIVERY_BASE_BACKOFF_MS)),
            max_backoff: millis(src.get(&s::DELIVERY_MAX_BACKOFF_MS)),
            call_timeout: millis(src.at_least(&s::DELIVERY_CALL_TIMEOUT_MS, 1)),
        }
    }
}

/// How an action is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionMode {
    /// Answered at once by a built-in handler.
    Sync,
    /// Queued for a processor.
    Async,
}

/// An action declared in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// The action name clients send.
    pub name: String,
    /// sync or async.
    pub mode: ActionMode,
    /// For sync actions, the built-in handler that answers (`echo`, `health`,
    /// `ping`, `whoami`); defaults to the action's own name.
    pub handler: Option<String>,
    /// Permission the token must grant.
    pub permission: Option<String>,
    /// JSON Schema for the payload.
    pub schema: Option<serde_json::Value>,
    /// Async actions: a lease lasts this long without progress (default 30 s).
    pub lease_timeout_ms: Option<u64>,
    /// Async actions: attempts before the request fails (default 3).
    pub max_attempts: Option<u32>,
}

impl ActionConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Vec<Self> {
        match src.table(&s::ACTIONS).cloned() {
            None => Vec::new(),
            Some(value) => value.try_into().unwrap_or_else(|err: toml::de::Error| {
                src.problem(&s::ACTIONS, err.message());
                Vec::new()
            }),
        }
    }
}

/// Which registry backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process maps (the default: nothing to install; one replica).
    Memory,
    /// DynamoDB (production; several replicas share it).
    DynamoDb,
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" | "embedded" => Ok(StoreKind::Memory),
            "dynamodb" => Ok(StoreKind::DynamoDb),
            other => Err(format!("{other:?}: use memory or dynamodb")),
        }
    }
}

/// State storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The backend.
    pub kind: StoreKind,
    /// Connections table.
    pub connections_table: String,
    /// Requests table.
    pub requests_table: String,
    /// Rate-limit table.
    pub rate_limits_table: String,
    /// Keep the message and connect limits in the store (shared by replicas).
    pub shared_rate_limits: bool,
    /// Row expiry after the last refresh, and after connect.
    pub connection_ttl: Duration,
    /// Refresh `last_seen` at most this often per connection.
    pub touch_interval: Duration,
}

impl StoreConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        let kind = src.opt(&s::STORE).unwrap_or(StoreKind::Memory);
        let shared_rate_limits = src
            .opt(&s::SHARED_RATE_LIMITS)
            .unwrap_or(kind == StoreKind::DynamoDb);
        if shared_rate_limits && kind != StoreKind::DynamoDb {
            src.problem(
                &s::SHARED_RATE_LIMITS,
                "shared rate limits need STREAMER_STORE=dynamodb",
            );
        }
        Self {
            kind,
            connections_table: src.get(&s::CONNECTIONS_TABLE),
            requests_table: src.get(&s::REQUESTS_TABLE),
            rate_limits_table: src.get(&s::RATE_LIMITS_TABLE),
            shared_rate_limits,
            connection_ttl: secs(src.at_least(&s::CONNECTION_TTL_SECS, 60)),
            touch_interval: secs(src.get(&s::TOUCH_INTERVAL_SECS)),
        }
    }
}

/// The periodic job that removes rows of connections the gateway forgot.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How often it runs; zero turns it off.
    pub interval: Duration,
    /// Rows idle longer than this are checked with the gateway.
    pub idle_threshold: Duration,
}

impl ReconcileConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            interval: secs(src.get(&s::RECONCILE_INTERVAL_SECS)),
            idle_threshold: secs(src.get(&s::RECONCILE_IDLE_SECS)),
        }
    }
}

/// Group (room) settings.
#[derive(Debug, Clone)]
pub struct GroupsConfig {
    /// Most groups one connection may be in.
    pub max_per_connection: usize,
    /// The permission a token needs to `join` a group (`{group}` is replaced
    /// by the group name).
    pub join_permission: String,
    /// Groups whose members get presence notifications.
    pub presence: Patterns,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_per_connection: 128,
            join_permission: "group:join:{group}".into(),
            presence: Patterns::default(),
        }
    }
}

impl GroupsConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            max_per_connection: src.at_least(&s::MAX_GROUPS_PER_CONNECTION, 1),
            join_permission: src.get(&s::GROUP_JOIN_PERMISSION),
            presence: Patterns::new(src.list(&s::PRESENCE_GROUPS)),
        }
    }

    /// Whether `group` announces joins and leaves.
    pub fn presence_enabled(&self, group: &str) -> bool {
        self.presence.matches(group)
    }

    /// The permission needed to join `group`.
    pub fn join_permission_for(&self, group: &str) -> String {
        self.join_permission.replace("{group}", group)
    }
}

/// Retry and relay settings of long-running requests.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// First retry delay; doubled per attempt, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// At most one progress frame per request per this interval.
    pub progress_interval: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// How often an idle processor session looks for work anyway (backoffs
    /// ending, work queued through another replica).
    pub poll_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            progress_interval: Duration::from_millis(100),
            sweep_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
        }
    }
}

impl JobsConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            retry_base: millis(src.get(&s::RETRY_BASE_MS)),
            retry_max: millis(src.get(&s::RETRY_MAX_MS)),
            progress_interval: millis(src.get(&s::PROGRESS_INTERVAL_MS)),
            ..Self::default()
        }
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
}

impl DevConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            state_dir: src
                .opt(&s::STATE_DIR)
                .unwrap_or_else(|| PathBuf::from(".build/dev")),
            demo_processor: src.opt(&s::DEMO_PROCESSOR).unwrap_or(true),
            demo_duration: millis(src.get(&s::DEMO_DURATION_MS)),
        }
    }
}
