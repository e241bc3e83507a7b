//! Configuration, parsed once at start into typed structs.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (path from
//! `STREAMER_CONFIG` or `--config`), then `STREAMER_*` environment variables.
//! The environment is passed in as a lookup function so tests never mutate
//! the process environment.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

/// Why a configuration could not be loaded. Every message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Invalid { name: String, message: String },
}

fn invalid(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        message: message.into(),
    }
}

/// The whole control-plane configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gRPC server listens (`STREAMER_GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served, if anywhere (`STREAMER_METRICS_ADDR`).
    pub metrics_addr: Option<SocketAddr>,
    /// The local API Gateway emulator (used by `dev` only).
    pub gateway: GatewayConfig,
    /// Client token verification; `None` means "not configured" (only `dev`
    /// accepts that, and makes an ephemeral key).
    pub jwt: Option<JwtConfig>,
    /// Tokens for gRPC callers.
    pub tokens: TokenConfig,
    /// Message size and rate limits.
    pub limits: LimitsConfig,
    /// Management API fan-out settings.
    pub delivery: DeliveryConfig,
    /// Actions declared in the config file (on top of the built-ins).
    pub actions: Vec<ActionConfig>,
    /// Log output format.
    pub log_format: LogFormat,
    /// Key that signs list page tokens; random per process when unset. Set it
    /// when several replicas serve the same clients.
    pub page_token_secret: Option<String>,
    /// Where state lives.
    pub store: StoreConfig,
    /// Stale-connection cleanup.
    pub reconcile: ReconcileConfig,
    /// Groups (rooms).
    pub groups: GroupsConfig,
    /// Long-running requests.
    pub jobs: crate::jobs::JobsConfig,
    /// `dev`'s built-in demo processor (`echo_async`, `generate_report`):
    /// on unless `STREAMER_DEMO_PROCESSOR=false`.
    pub demo_processor: bool,
    /// How long a demo request takes (`STREAMER_DEMO_DURATION_MS`).
    pub demo_duration: Duration,
}

/// Group (room) settings.
#[derive(Debug, Clone)]
pub struct GroupsConfig {
    /// Most groups one connection may be in (`STREAMER_MAX_GROUPS_PER_CONNECTION`).
    pub max_per_connection: usize,
    /// The permission a token needs to `join` a group; `{group}` is replaced
    /// by the group name, and a granted `prefix*` matches
    /// (`STREAMER_GROUP_JOIN_PERMISSION`, default `group:join:{group}`).
    pub join_permission: String,
    /// Groups whose members get presence notifications: names, or
    /// `prefix*` patterns (`STREAMER_PRESENCE_GROUPS`, comma separated).
    pub presence: Vec<String>,
}

impl GroupsConfig {
    /// Whether `group` announces joins and leaves.
    pub fn presence_enabled(&self, group: &str) -> bool {
        crate::jwt::grants(&self.presence, group)
    }

    /// The permission needed to join `group`.
    pub fn join_permission_for(&self, group: &str) -> String {
        self.join_permission.replace("{group}", group)
    }
}

/// Which registry backend, and its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process maps (the default: nothing to install; one replica).
    Memory,
    /// DynamoDB (production; several replicas share it).
    DynamoDb,
}

/// State storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The backend (`STREAMER_STORE`).
    pub kind: StoreKind,
    /// Connections table (`STREAMER_CONNECTIONS_TABLE`).
    pub connections_table: String,
    /// Requests table (`STREAMER_REQUESTS_TABLE`).
    pub requests_table: String,
    /// Rate-limit table, used when `shared_rate_limits` is on
    /// (`STREAMER_RATE_LIMITS_TABLE`).
    pub rate_limits_table: String,
    /// Share the per-connection message limit across replicas through
    /// DynamoDB (`STREAMER_SHARED_RATE_LIMITS`).
    pub shared_rate_limits: bool,
    /// Row expiry: a connection row lives this long after its last refresh,
    /// and never longer than this after connect (`STREAMER_CONNECTION_TTL_SECS`).
    pub connection_ttl: Duration,
    /// Refresh `last_seen` at most this often per connection
    /// (`STREAMER_TOUCH_INTERVAL_SECS`).
    pub touch_interval: Duration,
}

/// The periodic job that removes rows of connections the gateway forgot.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// How often it runs; zero turns it off (`STREAMER_RECONCILE_INTERVAL_SECS`).
    pub interval: Duration,
    /// Rows idle longer than this are checked with the gateway
    /// (`STREAMER_RECONCILE_IDLE_SECS`).
    pub idle_threshold: Duration,
}

/// The local gateway emulator's address and API Gateway's limits.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// WebSocket and Management API address (`STREAMER_GATEWAY_ADDR`).
    pub addr: SocketAddr,
    /// Stage name, the first path segment (`STREAMER_STAGE`).
    pub stage: String,
    /// Largest client message the gateway accepts; larger ones close the
    /// connection with 1009, as API Gateway does.
    pub max_message_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A connection is closed after this long, whatever it does.
    pub max_duration: Duration,
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
    /// Grants the edge role (`STREAMER_EDGE_TOKEN`).
    pub edge: Option<String>,
    /// Grants the admin role (`STREAMER_ADMIN_TOKEN`).
    pub admin: Option<String>,
    /// Service tokens, each optionally bound to one tenant.
    pub services: Vec<ServiceTokenConfig>,
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
    /// Most connections one tenant may hold; 0 means no quota.
    pub max_connections_per_tenant: u64,
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

/// How an action is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionMode {
    /// Answered at once by a built-in handler.
    Sync,
    /// Queued for a processor (not available yet).
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

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    grpc_addr: Option<String>,
    metrics_addr: Option<String>,
    log_format: Option<String>,
    page_token_secret: Option<String>,
    #[serde(default)]
    gateway: FileGateway,
    #[serde(default)]
    jwt: FileJwt,
    #[serde(default)]
    tokens: FileTokens,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    delivery: FileDelivery,
    #[serde(default)]
    actions: Vec<ActionConfig>,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    groups: FileGroups,
    #[serde(default)]
    jobs: FileJobs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJobs {
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    progress_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroups {
    max_per_connection: Option<usize>,
    join_permission: Option<String>,
    presence: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    kind: Option<String>,
    connections_table: Option<String>,
    requests_table: Option<String>,
    rate_limits_table: Option<String>,
    shared_rate_limits: Option<bool>,
    connection_ttl_secs: Option<u64>,
    touch_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconcile {
    interval_secs: Option<u64>,
    idle_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    addr: Option<String>,
    stage: Option<String>,
    max_message_bytes: Option<usize>,
    idle_timeout_secs: Option<u64>,
    max_duration_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    algorithms: Option<Vec<String>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTokens {
    edge: Option<String>,
    admin: Option<String>,
    #[serde(default)]
    services: Vec<ServiceTokenConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_bytes: Option<usize>,
    messages_per_minute: Option<u32>,
    message_burst: Option<u32>,
    connects_per_minute_per_ip: Option<u32>,
    max_connections_per_tenant: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDelivery {
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    base_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
}

/// API Gateway's message payload limit.
pub const API_GATEWAY_MAX_MESSAGE_BYTES: usize = 128 * 1024;

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn string(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.is_empty())
    }

    fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(name) {
            None => Ok(None),
            Some(raw) => raw
                .trim()
                .parse()
                .map(Some)
                .map_err(|err| invalid(name, format!("{raw:?}: {err}"))),
        }
    }
}

impl Config {
    /// Loads the configuration from `config_file` (or `STREAMER_CONFIG`) and
    /// the environment seen through `lookup`.
    pub fn load(
        config_file: Option<PathBuf>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = Env { lookup };
        let path = config_file.or_else(|| env.string("STREAMER_CONFIG").map(PathBuf::from));
        let file = match &path {
            None => FileConfig::default(),
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str(&text).map_err(|err| ConfigError::ParseFile {
                    path: path.clone(),
                    message: err.message().to_owned(),
                })?
            }
        };
        Self::merge(file, &env)
    }

    /// Loads from the real process environment.
    pub fn from_process_env(config_file: Option<PathBuf>) -> Result<Self, ConfigError> {
        Self::load(config_file, &|name| std::env::var(name).ok())
    }

    fn merge(file: FileConfig, env: &Env<'_>) -> Result<Self, ConfigError> {
        let grpc_addr = socket_addr(
            "STREAMER_GRPC_ADDR",
            env.string("STREAMER_GRPC_ADDR")
                .or(file.grpc_addr)
                .as_deref()
                .unwrap_or("127.0.0.1:50051"),
        )?;
        let gateway = GatewayConfig {
            addr: socket_addr(
                "STREAMER_GATEWAY_ADDR",
                env.string("STREAMER_GATEWAY_ADDR")
                    .or(file.gateway.addr)
                    .as_deref()
                    .unwrap_or("127.0.0.1:8080"),
            )?,
            stage: env
                .string("STREAMER_STAGE")
                .or(file.gateway.stage)
                .unwrap_or_else(|| "local".to_owned()),
            max_message_bytes: env
                .parse("STREAMER_GATEWAY_MAX_MESSAGE_BYTES")?
                .or(file.gateway.max_message_bytes)
                .unwrap_or(API_GATEWAY_MAX_MESSAGE_BYTES),
            idle_timeout: Duration::from_secs(
                env.parse("STREAMER_GATEWAY_IDLE_TIMEOUT_SECS")?
                    .or(file.gateway.idle_timeout_secs)
                    .unwrap_or(600),
            ),
            max_duration: Duration::from_secs(
                env.parse("STREAMER_GATEWAY_MAX_DURATION_SECS")?
                    .or(file.gateway.max_duration_secs)
                    .unwrap_or(7200),
            ),
        };
        if gateway.stage.is_empty()
            || !gateway
                .stage
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "STREAMER_STAGE",
                "use letters, digits, '-' and '_'",
            ));
        }

        let jwt = jwt_config(file.jwt, env)?;

        let tokens = TokenConfig {
            edge: env.string("STREAMER_EDGE_TOKEN").or(file.tokens.edge),
            admin: env.string("STREAMER_ADMIN_TOKEN").or(file.tokens.admin),
            services: file.tokens.services,
        };
        validate_tokens(&tokens)?;

        let limits = LimitsConfig {
            max_message_bytes: env
                .parse("STREAMER_MAX_MESSAGE_BYTES")?
                .or(file.limits.max_message_bytes)
                .unwrap_or(API_GATEWAY_MAX_MESSAGE_BYTES),
            messages_per_minute: env
                .parse("STREAMER_MESSAGES_PER_MINUTE")?
                .or(file.limits.messages_per_minute)
                .unwrap_or(100),
            message_burst: env
                .parse("STREAMER_MESSAGE_BURST")?
                .or(file.limits.message_burst)
                .unwrap_or(20),
            connects_per_minute_per_ip: env
                .parse("STREAMER_CONNECTS_PER_MINUTE_PER_IP")?
                .or(file.limits.connects_per_minute_per_ip)
                .unwrap_or(10),
            max_connections_per_tenant: env
                .parse("STREAMER_MAX_CONNECTIONS_PER_TENANT")?
                .or(file.limits.max_connections_per_tenant)
                .unwrap_or(0),
        };
        for (name, value) in [
            ("STREAMER_MESSAGES_PER_MINUTE", limits.messages_per_minute),
            ("STREAMER_MESSAGE_BURST", limits.message_burst),
            (
                "STREAMER_CONNECTS_PER_MINUTE_PER_IP",
                limits.connects_per_minute_per_ip,
            ),
        ] {
            if value == 0 {
                return Err(invalid(name, "must be at least 1"));
            }
        }
        if limits.max_message_bytes == 0 {
            return Err(invalid("STREAMER_MAX_MESSAGE_BYTES", "must be at least 1"));
        }

        let delivery = DeliveryConfig {
            concurrency: env
                .parse("STREAMER_DELIVERY_CONCURRENCY")?
                .or(file.delivery.concurrency)
                .unwrap_or(256),
            max_attempts: env
                .parse("STREAMER_DELIVERY_MAX_ATTEMPTS")?
                .or(file.delivery.max_attempts)
                .unwrap_or(3),
            base_backoff: Duration::from_millis(file.delivery.base_backoff_ms.unwrap_or(25)),
            max_backoff: Duration::from_millis(file.delivery.max_backoff_ms.unwrap_or(1000)),
            call_timeout: Duration::from_millis(file.delivery.call_timeout_ms.unwrap_or(5000)),
        };
        if delivery.concurrency == 0 || delivery.max_attempts == 0 {
            return Err(invalid(
                "delivery",
                "concurrency and max_attempts must be at least 1",
            ));
        }

        let log_format = match env
            .string("STREAMER_LOG_FORMAT")
            .or(file.log_format)
            .as_deref()
        {
            None | Some("pretty") | Some("text") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "STREAMER_LOG_FORMAT",
                    format!("{other:?}: use json or pretty"),
                ));
            }
        };

        let store = StoreConfig {
            kind: match env.string("STREAMER_STORE").or(file.store.kind).as_deref() {
                None | Some("memory") | Some("embedded") => StoreKind::Memory,
                Some("dynamodb") => StoreKind::DynamoDb,
                Some(other) => {
                    return Err(invalid(
                        "STREAMER_STORE",
                        format!("{other:?}: use memory or dynamodb"),
                    ));
                }
            },
            connections_table: env
                .string("STREAMER_CONNECTIONS_TABLE")
                .or(file.store.connections_table)
                .unwrap_or_else(|| "streamer-connections".to_owned()),
            requests_table: env
                .string("STREAMER_REQUESTS_TABLE")
                .or(file.store.requests_table)
                .unwrap_or_else(|| "streamer-requests".to_owned()),
            rate_limits_table: env
                .string("STREAMER_RATE_LIMITS_TABLE")
                .or(file.store.rate_limits_table)
                .unwrap_or_else(|| "streamer-rate-limits".to_owned()),
            shared_rate_limits: env
                .parse("STREAMER_SHARED_RATE_LIMITS")?
                .or(file.store.shared_rate_limits)
                .unwrap_or(false),
            connection_ttl: Duration::from_secs(
                env.parse("STREAMER_CONNECTION_TTL_SECS")?
                    .or(file.store.connection_ttl_secs)
                    .unwrap_or(7500),
            ),
            touch_interval: Duration::from_secs(
                env.parse("STREAMER_TOUCH_INTERVAL_SECS")?
                    .or(file.store.touch_interval_secs)
                    .unwrap_or(60),
            ),
        };
        if store.shared_rate_limits && store.kind != StoreKind::DynamoDb {
            return Err(invalid(
                "STREAMER_SHARED_RATE_LIMITS",
                "shared rate limits need STREAMER_STORE=dynamodb",
            ));
        }
        if store.connection_ttl < Duration::from_secs(60) {
            return Err(invalid(
                "STREAMER_CONNECTION_TTL_SECS",
                "must be at least 60",
            ));
        }
        let reconcile = ReconcileConfig {
            interval: Duration::from_secs(
                env.parse("STREAMER_RECONCILE_INTERVAL_SECS")?
                    .or(file.reconcile.interval_secs)
                    .unwrap_or(300),
            ),
            idle_threshold: Duration::from_secs(
                env.parse("STREAMER_RECONCILE_IDLE_SECS")?
                    .or(file.reconcile.idle_secs)
                    .unwrap_or(900),
            ),
        };

        let metrics_addr = match env.string("STREAMER_METRICS_ADDR").or(file.metrics_addr) {
            Some(raw) => Some(socket_addr("STREAMER_METRICS_ADDR", &raw)?),
            None => None,
        };

        let groups = GroupsConfig {
            max_per_connection: env
                .parse("STREAMER_MAX_GROUPS_PER_CONNECTION")?
                .or(file.groups.max_per_connection)
                .unwrap_or(128),
            join_permission: env
                .string("STREAMER_GROUP_JOIN_PERMISSION")
                .or(file.groups.join_permission)
                .unwrap_or_else(|| "group:join:{group}".to_owned()),
            presence: match env.string("STREAMER_PRESENCE_GROUPS") {
                Some(list) => list
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
                None => file.groups.presence.unwrap_or_default(),
            },
        };
        if groups.max_per_connection == 0 {
            return Err(invalid(
                "STREAMER_MAX_GROUPS_PER_CONNECTION",
                "must be at least 1",
            ));
        }

        let jobs = crate::jobs::JobsConfig {
            retry_base: Duration::from_millis(
                env.parse("STREAMER_RETRY_BASE_MS")?
                    .or(file.jobs.retry_base_ms)
                    .unwrap_or(1000),
            ),
            retry_max: Duration::from_millis(
                env.parse("STREAMER_RETRY_MAX_MS")?
                    .or(file.jobs.retry_max_ms)
                    .unwrap_or(60_000),
            ),
            progress_interval: Duration::from_millis(
                env.parse("STREAMER_PROGRESS_INTERVAL_MS")?
                    .or(file.jobs.progress_interval_ms)
                    .unwrap_or(100),
            ),
            ..crate::jobs::JobsConfig::default()
        };

        Ok(Config {
            demo_processor: env.parse("STREAMER_DEMO_PROCESSOR")?.unwrap_or(true),
            demo_duration: Duration::from_millis(
                env.parse("STREAMER_DEMO_DURATION_MS")?.unwrap_or(3000),
            ),
            jobs,
            groups,
            metrics_addr,
            store,
            reconcile,
            grpc_addr,
            gateway,
            jwt,
            tokens,
            limits,
            delivery,
            actions: file.actions,
            log_format,
            page_token_secret: env
                .string("STREAMER_PAGE_TOKEN_SECRET")
                .or(file.page_token_secret),
        })
    }
}

fn socket_addr(name: &str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.parse()
        .map_err(|_| invalid(name, format!("{raw:?} is not an ip:port address")))
}

fn jwt_config(file: FileJwt, env: &Env<'_>) -> Result<Option<JwtConfig>, ConfigError> {
    let inline = env.string("STREAMER_JWT_PUBLIC_KEY").or(file.public_key);
    let path = env
        .string("STREAMER_JWT_PUBLIC_KEY_FILE")
        .map(PathBuf::from)
        .or(file.public_key_file);
    let public_key_pem = match (inline, path) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "STREAMER_JWT_PUBLIC_KEY",
                "set either the key or STREAMER_JWT_PUBLIC_KEY_FILE, not both",
            ));
        }
        // Environment variables often carry PEM with literal "\n".
        (Some(pem), None) => pem.replace("\\n", "\n"),
        (None, Some(path)) => std::fs::read_to_string(&path).map_err(|err| {
            invalid(
                "STREAMER_JWT_PUBLIC_KEY_FILE",
                format!("cannot read {}: {err}", path.display()),
            )
        })?,
        (None, None) => return Ok(None),
    };
    let names = match env.string("STREAMER_JWT_ALGORITHMS") {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        None => file.algorithms.unwrap_or_else(|| vec!["RS256".to_owned()]),
    };
    if names.is_empty() {
        return Err(invalid(
            "STREAMER_JWT_ALGORITHMS",
            "list at least one algorithm",
        ));
    }
    let mut algorithms = Vec::new();
    for name in names {
        let algorithm = jsonwebtoken::Algorithm::from_str(&name).map_err(|_| {
            invalid(
                "STREAMER_JWT_ALGORITHMS",
                format!("unknown algorithm {name:?}"),
            )
        })?;
        if matches!(
            algorithm,
            jsonwebtoken::Algorithm::HS256
                | jsonwebtoken::Algorithm::HS384
                | jsonwebtoken::Algorithm::HS512
        ) {
            return Err(invalid(
                "STREAMER_JWT_ALGORITHMS",
                format!(
                    "{name} is a shared-secret algorithm; only public-key algorithms are accepted"
                ),
            ));
        }
        algorithms.push(algorithm);
    }
    let leeway = Duration::from_secs(
        env.parse("STREAMER_JWT_LEEWAY_SECS")?
            .or(file.leeway_secs)
            .unwrap_or(5),
    );
    Ok(Some(JwtConfig {
        public_key_pem,
        algorithms,
        issuer: env.string("STREAMER_JWT_ISSUER").or(file.issuer),
        audience: env.string("STREAMER_JWT_AUDIENCE").or(file.audience),
        leeway,
    }))
}

fn validate_tokens(tokens: &TokenConfig) -> Result<(), ConfigError> {
    const MIN_LEN: usize = 16;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let all = [
        ("STREAMER_EDGE_TOKEN", tokens.edge.as_deref()),
        ("STREAMER_ADMIN_TOKEN", tokens.admin.as_deref()),
    ]
    .into_iter()
    .filter_map(|(name, token)| token.map(|t| (name, t)))
    .chain(
        tokens
            .services
            .iter()
            .map(|s| ("tokens.services", s.token.as_str())),
    );
    for (name, token) in all {
        if token.len() < MIN_LEN {
            return Err(invalid(
                name,
                format!("tokens must be at least {MIN_LEN} characters"),
            ));
        }
        if let Some(other) = seen.insert(token, name) {
            return Err(invalid(
                name,
                format!("the same token is also used for {other}; each role needs its own"),
            ));
        }
    }
    for service in &tokens.services {
        if let Some(tenant) = &service.tenant_id
            && !streamer_proto::ids::valid_tenant_id(tenant)
        {
            return Err(invalid(
                "tokens.services",
                format!("service {:?}: invalid tenant_id", service.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, &move |name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_api_gateway() {
        let config = load(&[]).expect("defaults load");
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.gateway.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.gateway.stage, "local");
        assert_eq!(config.gateway.max_message_bytes, 128 * 1024);
        assert_eq!(config.gateway.idle_timeout, Duration::from_secs(600));
        assert_eq!(config.gateway.max_duration, Duration::from_secs(7200));
        assert_eq!(config.limits.messages_per_minute, 100);
        assert_eq!(config.limits.message_burst, 20);
        assert_eq!(config.limits.connects_per_minute_per_ip, 10);
        assert!(config.jwt.is_none());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = load(&[("STREAMER_GRPC_ADDR", "nowhere")]).expect_err("bad addr");
        assert!(err.to_string().contains("STREAMER_GRPC_ADDR"), "{err}");
        let err = load(&[("STREAMER_MESSAGES_PER_MINUTE", "many")]).expect_err("bad number");
        assert!(
            err.to_string().contains("STREAMER_MESSAGES_PER_MINUTE"),
            "{err}"
        );
        let err = load(&[
            ("STREAMER_JWT_PUBLIC_KEY", "x"),
            ("STREAMER_JWT_ALGORITHMS", "HS256"),
        ])
        .expect_err("hs");
        assert!(err.to_string().contains("shared-secret"), "{err}");
        let err = load(&[("STREAMER_EDGE_TOKEN", "short")]).expect_err("short token");
        assert!(err.to_string().contains("STREAMER_EDGE_TOKEN"), "{err}");
        let same = "0123456789abcdef0123";
        let err = load(&[
            ("STREAMER_EDGE_TOKEN", same),
            ("STREAMER_ADMIN_TOKEN", same),
        ])
        .expect_err("reuse");
        assert!(err.to_string().contains("each role needs its own"), "{err}");
    }

    #[test]
    fn file_is_read_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("streamer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("streamer.toml");
        std::fs::write(
            &path,
            r#"
grpc_addr = "127.0.0.1:6000"
[limits]
messages_per_minute = 7
[[actions]]
name = "admin.echo"
mode = "sync"
handler = "echo"
permission = "admin"
schema = { type = "object", required = ["text"] }
"#,
        )
        .expect("write config");
        let map: HashMap<String, String> =
            [("STREAMER_GRPC_ADDR".to_owned(), "127.0.0.1:7000".to_owned())]
                .into_iter()
                .collect();
        let config =
            Config::load(Some(path.clone()), &move |name| map.get(name).cloned()).expect("load");
        assert_eq!(config.grpc_addr.port(), 7000);
        assert_eq!(config.limits.messages_per_minute, 7);
        assert_eq!(config.actions.len(), 1);
        assert_eq!(config.actions[0].permission.as_deref(), Some("admin"));

        std::fs::write(&path, "unknown_key = 1\n").expect("write config");
        let err = Config::load(Some(path), &|_| None).expect_err("unknown key");
        assert!(err.to_string().contains("unknown_key"), "{err}");
    }
}
