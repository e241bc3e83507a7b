//! The domain's sections: client limits, delivery, actions, the store,
//! reconcile, groups and long-running requests; and name patterns.

use std::{str::FromStr, time::Duration};

use serde::Deserialize;

use super::{Source, millis, secs, settings as s};

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
    /// Largest client message joined from `chunk` frames.
    pub chunked_max_bytes: usize,
    /// Most `chunk` frames of one client message.
    pub chunked_max_chunks: u32,
    /// How long a chunked message may take to complete.
    pub chunked_timeout: Duration,
    /// Most bytes of unfinished chunked messages in memory, all connections.
    pub chunked_held_max_bytes: usize,
    /// ...of them one tenant's connections together.
    pub chunked_held_max_bytes_per_tenant: usize,
    /// ...of them one connection.
    pub chunked_held_max_bytes_per_connection: usize,
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
            chunked_max_bytes: src.at_least(&s::CHUNKED_MESSAGE_MAX_BYTES, 1),
            chunked_max_chunks: src.at_least(&s::CHUNKED_MESSAGE_MAX_CHUNKS, 2),
            chunked_timeout: Duration::from_secs(src.at_least(&s::CHUNKED_MESSAGE_TIMEOUT_SECS, 1)),
            chunked_held_max_bytes: src.at_least(&s::CHUNKED_MESSAGES_HELD_MAX_BYTES, 1),
            chunked_held_max_bytes_per_tenant: 0,
            chunked_held_max_bytes_per_connection: 0,
        }
        .with_chunk_shares(src)
    }

    /// The chunk budget's shares: a tenant's defaults to a quarter of the
    /// server's, a connection's to the largest message; neither above the
    /// budget it is a share of.
    fn with_chunk_shares(mut self, src: &mut Source<'_>) -> Self {
        let server = self.chunked_held_max_bytes;
        self.chunked_held_max_bytes_per_tenant = src
            .opt::<usize>(&s::CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_TENANT)
            .unwrap_or(server / 4)
            .clamp(1, server);
        self.chunked_held_max_bytes_per_connection = src
            .opt::<usize>(&s::CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_CONNECTION)
            .unwrap_or(self.chunked_max_bytes)
            .clamp(1, self.chunked_held_max_bytes_per_tenant);
        self
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
    /// Calls per second of the process-wide budget (0: none).
    pub max_rps: u32,
    /// Calls the budget may spend at once.
    pub burst: u32,
    /// How long one send may keep retrying.
    pub deadline: Duration,
    /// How long after its `$connect` a connection's 410 is not trusted.
    pub connecting_grace: Duration,
    /// Largest frame posted whole; larger ones are cut into `chunk` frames.
    pub max_frame_bytes: usize,
    /// Most ids per batch call to a gateway that offers one (0: never).
    pub batch_size: usize,
    /// What calls to Streamer's own gateways are signed with (else the
    /// AWS credential chain).
    pub gateway_signing: Option<GatewaySigning>,
    /// CAs trusted beside the platform's roots for `https://` endpoints
    /// (Streamer's own gateways' private CA).
    pub gateway_ca: Option<rustls::RootCertStore>,
    /// The Management API endpoints this deployment may call.
    pub endpoints: ManagementEndpoints,
    /// How long a Send's idempotency key is remembered.
    pub idempotency_window: Duration,
    /// How long before a client token's end its connection is told.
    pub token_expiry_warning: Duration,
}

/// Which Management API endpoints may be called
/// (`STREAMER_MANAGEMENT_ENDPOINTS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ManagementEndpoints {
    /// Not configured: `serve` on DynamoDB and `migrate` refuse to start;
    /// elsewhere (one machine, the embedded store) any endpoint.
    #[default]
    Unset,
    /// Explicitly any endpoint.
    Any,
    /// Only these, each normalised (`scheme://host[:port]/stage`, the host
    /// lowercased, no trailing `/`).
    Only(Vec<String>),
}

impl ManagementEndpoints {
    /// `raw` as the list compares it: `scheme://host[:port]/stage` with the
    /// host lowercased and no trailing `/`; `None` when it is no
    /// `http(s)://host/path` URL.
    pub fn normalise(raw: &str) -> Option<String> {
        let (scheme, rest) = if let Some(rest) = raw.strip_prefix("https://") {
            ("https", rest)
        } else {
            ("http", raw.strip_prefix("http://")?)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#', '\\']) {
            return None;
        }
        let path = path.trim_end_matches('/');
        if path.contains(['?', '#', ' ']) {
            return None;
        }
        Some(format!(
            "{scheme}://{}{path}",
            authority.to_ascii_lowercase()
        ))
    }

    /// Whether a connection whose endpoint is `raw` may be called.
    pub fn allows(&self, raw: &str) -> bool {
        match self {
            Self::Unset | Self::Any => true,
            Self::Only(list) => Self::normalise(raw).is_some_and(|e| {
                list.iter()
                    .any(|allowed| allowed == &e || Self::wildcard_matches(allowed, &e))
            }),
        }
    }

    /// `scheme://*.rest` matches `scheme://label.rest` for one DNS label
    /// (letters, digits, `-`): self-hosted gateways, each registered under
    /// its own name in one private zone.
    fn wildcard_matches(allowed: &str, endpoint: &str) -> bool {
        let Some((scheme, rest)) = allowed.split_once("://*.") else {
            return false;
        };
        let Some(candidate) = endpoint
            .strip_prefix(scheme)
            .and_then(|e| e.strip_prefix("://"))
        else {
            return false;
        };
        let Some((label, tail)) = candidate.split_once('.') else {
            return false;
        };
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && tail == rest
    }

    fn resolve(src: &mut Source<'_>) -> Self {
        let list = src.list(&s::MANAGEMENT_ENDPOINTS);
        if list.is_empty() {
            return Self::Unset;
        }
        if list.len() == 1 && list[0].eq_ignore_ascii_case("any") {
            return Self::Any;
        }
        let mut only = Vec::new();
        for raw in &list {
            match Self::normalise(raw) {
                Some(endpoint) if !raw.eq_ignore_ascii_case("any") => only.push(endpoint),
                _ => src.problem(
                    &s::MANAGEMENT_ENDPOINTS,
                    format!(
                        "{raw:?} is not an https://{{host}}/{{stage}} endpoint (or `any` alone)"
                    ),
                ),
            }
        }
        Self::Only(only)
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            max_attempts: 3,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(1000),
            call_timeout: Duration::from_millis(5000),
            max_rps: 0,
            burst: 0,
            deadline: Duration::from_secs(60),
            connecting_grace: Duration::from_secs(10),
            max_frame_bytes: 128_000,
            batch_size: 1000,
            gateway_signing: None,
            gateway_ca: None,
            endpoints: ManagementEndpoints::Unset,
            idempotency_window: Duration::from_secs(300),
            token_expiry_warning: Duration::from_secs(60),
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
            max_rps: src.get(&s::DELIVERY_MAX_RPS),
            burst: match src.get::<u32>(&s::DELIVERY_BURST) {
                0 => src.get(&s::DELIVERY_MAX_RPS),
                burst => burst,
            },
            deadline: millis(src.at_least(&s::DELIVERY_DEADLINE_MS, 1)),
            connecting_grace: millis(src.get(&s::DELIVERY_CONNECTING_GRACE_MS)),
            max_frame_bytes: src.at_least(&s::DELIVERY_MAX_FRAME_BYTES, 512),
            batch_size: src.get(&s::DELIVERY_BATCH_SIZE),
            gateway_signing: GatewaySigning::resolve(src),
            gateway_ca: src.opt::<String>(&s::GATEWAY_CA).and_then(|value| {
                match streamer_listener::tls::roots_from_setting(&value, "STREAMER_GATEWAY_CA") {
                    Ok(roots) => Some(roots),
                    Err(err) => {
                        src.problem(&s::GATEWAY_CA, err);
                        None
                    }
                }
            }),
            endpoints: ManagementEndpoints::resolve(src),
            idempotency_window: secs(src.at_least(&s::IDEMPOTENCY_WINDOW_SECS, 1)),
            token_expiry_warning: secs(src.get(&s::TOKEN_EXPIRY_WARNING_SECS)),
        }
    }
}

/// The key pair calls to Streamer's own gateways are signed with (SigV4,
/// as API Gateway's Management API is): the gateways cannot verify an IAM
/// role's signature, so both sides share this pair.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewaySigning {
    /// The key id.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
}

impl std::fmt::Debug for GatewaySigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySigning")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl GatewaySigning {
    fn resolve(src: &mut Source<'_>) -> Option<Self> {
        let id: Option<String> = src.opt(&s::GATEWAY_SIGNING_ACCESS_KEY_ID);
        let secret: Option<String> = src.opt(&s::GATEWAY_SIGNING_SECRET_ACCESS_KEY);
        match (id, secret) {
            (None, None) => None,
            (Some(access_key_id), Some(secret_access_key)) if secret_access_key.len() >= 32 => {
                Some(Self {
                    access_key_id,
                    secret_access_key,
                })
            }
            (Some(_), Some(_)) => {
                src.problem(
                    &s::GATEWAY_SIGNING_SECRET_ACCESS_KEY,
                    "use at least 32 characters",
                );
                None
            }
            (id, _) => {
                src.problem(
                    if id.is_some() {
                        &s::GATEWAY_SIGNING_SECRET_ACCESS_KEY
                    } else {
                        &s::GATEWAY_SIGNING_ACCESS_KEY_ID
                    },
                    "set both STREAMER_GATEWAY_SIGNING_ACCESS_KEY_ID and STREAMER_GATEWAY_SIGNING_SECRET_ACCESS_KEY",
                );
                None
            }
        }
    }
}

/// Bounds on open (waiting or running) requests; 0 is none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Per user of a tenant.
    pub max_per_user: u64,
    /// Per tenant.
    pub max_per_tenant: u64,
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

/// The item shape of the Go system's connection table
/// (`registry::legacy` reads and writes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyShape {
    /// `store.Connection`: PascalCase attributes keyed by `ConnectionID`.
    #[default]
    Classic,
    /// `dynamorm.Connection`: `pk` / `sk` with snake_case attributes.
    DynamOrm,
}

impl FromStr for LegacyShape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(LegacyShape::Classic),
            "dynamorm" => Ok(LegacyShape::DynamOrm),
            other => Err(format!("{other:?}: use classic or dynamorm")),
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
    /// Table of chunked client messages being joined.
    pub chunks_table: String,
    /// The dual write: mirror connection writes into this table of the Go
    /// system (none: off).
    pub legacy_mirror_table: Option<String>,
    /// The shape of the Go system's items.
    pub legacy_shape: LegacyShape,
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
        if src
            .opt::<String>(&s::LEGACY_MIRROR_TABLE)
            .is_some_and(|t| !t.is_empty())
            && kind != StoreKind::DynamoDb
        {
            src.problem(
                &s::LEGACY_MIRROR_TABLE,
                "the dual write needs STREAMER_STORE=dynamodb",
            );
        }
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
            chunks_table: src.get(&s::CHUNKS_TABLE),
            legacy_mirror_table: src
                .opt::<String>(&s::LEGACY_MIRROR_TABLE)
                .filter(|t| !t.is_empty()),
            legacy_shape: src.get(&s::LEGACY_SHAPE),
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
    /// Rows whose endpoint failed every check for this long are removed.
    pub unreachable_after: Duration,
}

impl ReconcileConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            interval: secs(src.get(&s::RECONCILE_INTERVAL_SECS)),
            idle_threshold: secs(src.get(&s::RECONCILE_IDLE_SECS)),
            unreachable_after: secs(src.get(&s::RECONCILE_UNREACHABLE_SECS)),
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
    /// At most one presence delivery per group per this interval.
    pub presence_interval: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            max_per_connection: 128,
            join_permission: "group:join:{group}".into(),
            presence: Patterns::default(),
            presence_interval: Duration::from_millis(500),
        }
    }
}

impl GroupsConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            max_per_connection: src.at_least(&s::MAX_GROUPS_PER_CONNECTION, 1),
            join_permission: src.get(&s::GROUP_JOIN_PERMISSION),
            presence: Patterns::new(src.list(&s::PRESENCE_GROUPS)),
            presence_interval: millis(src.at_least(&s::PRESENCE_INTERVAL_MS, 10)),
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

/// Stream history (see [`crate::streams`]).
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Streams that keep history.
    pub streams: Patterns,
    /// Messages kept per stream.
    pub size: u64,
    /// How long a message is kept.
    pub ttl: Duration,
    /// Most messages one recovery returns.
    pub recover_max: usize,
    /// Most bytes of history being sent to clients at once.
    pub recover_max_inflight_bytes: usize,
    /// The DynamoDB table.
    pub table: String,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            streams: Patterns::default(),
            size: 1000,
            ttl: Duration::from_secs(600),
            recover_max: 1000,
            recover_max_inflight_bytes: 32 << 20,
            table: "streamer-history".into(),
        }
    }
}

/// Whether a `STREAMER_HISTORY` entry can name a stream.
fn stream_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    pattern == "*"
        || pattern == "tenant"
        || ["user:", "group:"].iter().any(|kind| {
            name.starts_with(kind) && (pattern.ends_with('*') || name.len() > kind.len())
        })
}

impl HistoryConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        let streams = src.list(&s::HISTORY);
        for pattern in &streams {
            if !stream_pattern(pattern) {
                src.problem(
                    &s::HISTORY,
                    format!("{pattern:?} names no stream: use tenant, user:<id>, group:<name>, or a prefix ending in *"),
                );
            }
        }
        let size: u64 = src.at_least(&s::HISTORY_SIZE, 1);
        if size > 100_000 {
            src.problem(&s::HISTORY_SIZE, "at most 100000 messages per stream");
        }
        Self {
            streams: Patterns::new(streams),
            size,
            ttl: secs(src.at_least(&s::HISTORY_TTL_SECS, 1)),
            recover_max: src.at_least(&s::HISTORY_RECOVER_MAX, 1),
            recover_max_inflight_bytes: src
                .at_least(&s::HISTORY_RECOVER_MAX_INFLIGHT_BYTES, 1 << 20),
            table: src.get(&s::HISTORY_TABLE),
        }
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
    /// Bounds on open requests per user and per tenant.
    pub queue_limits: QueueLimits,
    /// How long a ready request may wait for a processor.
    pub wait_ttl: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            progress_interval: Duration::from_millis(100),
            sweep_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            queue_limits: QueueLimits {
                max_per_user: 1000,
                max_per_tenant: 10_000,
            },
            wait_ttl: Duration::from_secs(3600),
        }
    }
}

impl JobsConfig {
    pub(super) fn resolve(src: &mut Source<'_>) -> Self {
        Self {
            retry_base: millis(src.get(&s::RETRY_BASE_MS)),
            retry_max: millis(src.get(&s::RETRY_MAX_MS)),
            progress_interval: millis(src.get(&s::PROGRESS_INTERVAL_MS)),
            queue_limits: QueueLimits {
                max_per_user: src.get(&s::QUEUE_MAX_PER_USER),
                max_per_tenant: src.get(&s::QUEUE_MAX_PER_TENANT),
            },
            wait_ttl: Duration::from_secs(src.at_least(&s::QUEUE_WAIT_TTL_SECS, 1)),
            ..Self::default()
        }
    }
}
