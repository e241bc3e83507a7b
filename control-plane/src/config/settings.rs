//! Every setting, declared once: its environment variable, its file key, its
//! default (parsed by the same parser as a configured value) and what it
//! means. The loader reads settings through this table, and
//! `docs/configuration.md` is checked against it by a test, so the three
//! cannot drift apart.

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable, if the setting has one.
    pub env: Option<&'static str>,
    /// The key in the TOML file (dotted: `gateway.addr`), if it has one.
    pub key: Option<&'static str>,
    /// The default as text, parsed like a configured value; empty when the
    /// setting is unset by default.
    pub default: &'static str,
    /// What the default means when it is not a value (`"none"`, `"dev makes one"`).
    pub default_doc: Option<&'static str>,
    /// What the setting does.
    pub doc: &'static str,
}

impl Setting {
    /// How error messages name the setting.
    pub fn name(&self) -> &'static str {
        self.env.or(self.key).unwrap_or("setting")
    }
}

macro_rules! settings {
    ($($(#[$meta:meta])* $name:ident = ($env:expr, $key:expr, $default:expr, $default_doc:expr, $doc:expr);)*) => {
        $(
            $(#[$meta])*
            pub const $name: Setting = Setting {
                env: $env,
                key: $key,
                default: $default,
                default_doc: $default_doc,
                doc: $doc,
            };
        )*
        /// Every setting, in the order the documentation lists them.
        pub const ALL: &[Setting] = &[$($name),*];
    };
}

settings! {
    CONFIG = (Some("STREAMER_CONFIG"), None, "", Some("none"), "path of the TOML config file (also `--config`)");
    GRPC_ADDR = (Some("STREAMER_GRPC_ADDR"), Some("grpc_addr"), "127.0.0.1:50051", None, "gRPC listen address");
    GRPC_HANDSHAKE_TIMEOUT_MS = (Some("STREAMER_GRPC_HANDSHAKE_TIMEOUT_MS"), Some("grpc.handshake_timeout_ms"), "10000", None, "a gRPC connection that has not sent its HTTP/2 preface and SETTINGS within this long is closed");
    GRPC_IDLE_TIMEOUT_SECS = (Some("STREAMER_GRPC_IDLE_TIMEOUT_SECS"), Some("grpc.idle_timeout_secs"), "300", None, "a gRPC connection with no call in flight for this long is closed; `0` keeps idle connections");
    GRPC_KEEPALIVE_INTERVAL_SECS = (Some("STREAMER_GRPC_KEEPALIVE_INTERVAL_SECS"), Some("grpc.keepalive_interval_secs"), "30", None, "HTTP/2 PING sent to a quiet connection this often; `0` turns keepalive off");
    GRPC_KEEPALIVE_TIMEOUT_SECS = (Some("STREAMER_GRPC_KEEPALIVE_TIMEOUT_SECS"), Some("grpc.keepalive_timeout_secs"), "10", None, "a connection whose PING is not answered within this long is closed");
    GRPC_MAX_CONCURRENT_STREAMS = (Some("STREAMER_GRPC_MAX_CONCURRENT_STREAMS"), Some("grpc.max_concurrent_streams"), "1000", None, "calls in flight on one gRPC connection; a client queues the rest (unbounded, a burst of small calls on one connection trips HTTP/2's flood protection and the whole connection is closed)");
    DRAIN_TIMEOUT_SECS = (Some("STREAMER_DRAIN_TIMEOUT_SECS"), Some("grpc.drain_timeout_secs"), "10", None, "on SIGTERM, calls in flight (broadcasts, edge calls, processor streams) get this long to finish before the process exits");
    GRPC_MAX_CONNECTION_AGE_SECS = (Some("STREAMER_GRPC_MAX_CONNECTION_AGE_SECS"), Some("grpc.max_connection_age_secs"), "0", Some("`0` (no limit)"), "connections are asked to go away (GOAWAY) after this long, so clients spread over new replicas");
    METRICS_ADDR = (Some("STREAMER_METRICS_ADDR"), Some("metrics_addr"), "", Some("off"), "serve Prometheus `/metrics` on this address");
    METRICS_TENANT_LABELS = (Some("STREAMER_METRICS_TENANT_LABELS"), Some("metrics_tenant_labels"), "false", None, "label per-tenant series (`streamer_connections_active{tenant}`) with tenant ids; off, they are one series labelled `_all`, so whoever reaches `/metrics` learns no tenant's name");
    METRICS_TOKEN = (Some("STREAMER_METRICS_TOKEN"), Some("metrics_token"), "", Some("none"), "when set, `/metrics` answers only `Authorization: Bearer <token>` (at least 16 characters); others get 401");
    HTTP_MAX_CONNECTIONS = (Some("STREAMER_HTTP_MAX_CONNECTIONS"), Some("http.max_connections"), "256", None, "the console's and `/metrics`' ports: connections at once (more wait in the backlog)");
    HTTP_MAX_CONNECTIONS_PER_IP = (Some("STREAMER_HTTP_MAX_CONNECTIONS_PER_IP"), Some("http.max_connections_per_ip"), "16", None, "the console's and `/metrics`' ports: connections at once from one address (more are closed at once), so one address cannot take every slot");
    HTTP_HEADER_TIMEOUT_MS = (Some("STREAMER_HTTP_HEADER_TIMEOUT_MS"), Some("http.header_timeout_ms"), "10000", None, "the console's and `/metrics`' ports: the TLS handshake and each request head must arrive within this long");
    HTTP_BODY_MIN_BYTES_PER_SEC = (Some("STREAMER_HTTP_BODY_MIN_BYTES_PER_SEC"), Some("http.body_min_bytes_per_sec"), "1024", None, "the console's and `/metrics`' ports: after the grace, a request body must average this many bytes a second or it is cut");
    HTTP_BODY_GRACE_MS = (Some("STREAMER_HTTP_BODY_GRACE_MS"), Some("http.body_grace_ms"), "10000", None, "the console's and `/metrics`' ports: how long a request body may take before the floor rate applies");
    HTTP_IDLE_TIMEOUT_SECS = (Some("STREAMER_HTTP_IDLE_TIMEOUT_SECS"), Some("http.idle_timeout_secs"), "60", None, "the console's and `/metrics`' ports: a connection (HTTP/1.1 keep-alive or HTTP/2) with no request in flight for this long is closed (HTTP/2: GOAWAY); HTTP/2 PINGs every 30 s, answered within 10 s, find dead peers");
    TLS_CERT = (Some("STREAMER_TLS_CERT"), Some("tls.cert"), "", Some("none (plain TCP)"), "PEM certificate chain: with `STREAMER_TLS_KEY`, the gRPC port, the console and `/metrics` serve TLS only; re-read when the file changes. `self-signed`: a certificate made at start (no key setting), for a load balancer that re-encrypts to the task without checking it (the template's NLB)");
    TLS_KEY = (Some("STREAMER_TLS_KEY"), Some("tls.key"), "", Some("none"), "PEM private key of `STREAMER_TLS_CERT`");
    TLS_CLIENT_CA = (Some("STREAMER_TLS_CLIENT_CA"), Some("tls.client_ca"), "", Some("none"), "PEM CA certificates: the gRPC port then requires a client certificate chaining to them (mutual TLS); one with a DNS SAN naming `STREAMER_TLS_EDGE_IDENTITY` is the edge");
    TLS_EDGE_IDENTITY = (Some("STREAMER_TLS_EDGE_IDENTITY"), Some("tls.edge_identity"), "streamer-edge", None, "with mutual TLS: the DNS SAN that makes a client certificate the edge role, with no edge token");
    CONSOLE_ADDR = (Some("STREAMER_CONSOLE_ADDR"), Some("console_addr"), "", Some("off (`dev`: `127.0.0.1:8081`)"), "serve the web console (and gRPC-Web for it) on this address; `off` turns it off, also under `dev`. Every call needs an admin or service token, as on the gRPC port");
    LOG_FORMAT = (Some("STREAMER_LOG_FORMAT"), Some("log_format"), "pretty", None, "`pretty` or `json`");
    PAGE_TOKEN_SECRET = (Some("STREAMER_PAGE_TOKEN_SECRET"), Some("page_token_secret"), "", Some("random per process"), "signs list page tokens (set it when several replicas serve one API)");
    GATEWAY_ADDR = (Some("STREAMER_GATEWAY_ADDR"), Some("gateway.addr"), "127.0.0.1:8080", None, "`dev`: WebSocket + Management API address");
    STAGE = (Some("STREAMER_STAGE"), Some("gateway.stage"), "local", None, "`dev`: stage (first path segment)");
    GATEWAY_MAX_MESSAGE_BYTES = (Some("STREAMER_GATEWAY_MAX_MESSAGE_BYTES"), Some("gateway.max_message_bytes"), "131072", None, "`dev`: gateway message limit (close 1009 above)");
    GATEWAY_MAX_FRAME_BYTES = (Some("STREAMER_GATEWAY_MAX_FRAME_BYTES"), Some("gateway.max_frame_bytes"), "32768", None, "`dev`: gateway frame limit, API Gateway's 32 KB (close 1009 above)");
    GATEWAY_HEADER_TIMEOUT_MS = (Some("STREAMER_GATEWAY_HEADER_TIMEOUT_MS"), Some("gateway.header_timeout_ms"), "10000", None, "`dev`: a client whose upgrade request head has not arrived in this long is dropped");
    GATEWAY_CONNECTS_PER_SECOND = (Some("STREAMER_GATEWAY_CONNECTS_PER_SECOND"), Some("gateway.connects_per_second"), "500", None, "`dev`: new connections per second (API Gateway's account default); 429 above; `0` unlimited");
    GATEWAY_MANAGEMENT_RPS = (Some("STREAMER_GATEWAY_MANAGEMENT_RPS"), Some("gateway.management_rps"), "10000", None, "`dev`: Management API requests per second (API Gateway's account default); 429 `LimitExceededException` above; `0` unlimited");
    GATEWAY_MANAGEMENT_BURST = (Some("STREAMER_GATEWAY_MANAGEMENT_BURST"), Some("gateway.management_burst"), "5000", None, "`dev`: Management API requests allowed at once (API Gateway's account default)");
    GATEWAY_BATCH = (Some("STREAMER_GATEWAY_BATCH"), Some("gateway.batch"), "false", Some("`false` (API Gateway has no batch call)"), "`dev`: serve Streamer's batch call (`POST /{stage}/@batch`, announced at `@capabilities`) beside the Management API, as `streamer-gateway` does by default; off, the emulator answers those paths 404 as API Gateway would");
    GATEWAY_MANAGEMENT_ENDPOINT = (Some("STREAMER_GATEWAY_MANAGEMENT_ENDPOINT"), Some("gateway.management_endpoint"), "", Some("the gateway itself"), "`dev`: the Management API URL (with the stage) the gateway reports in connect events, e.g. a fault-injecting proxy in front of it");
    GATEWAY_CONTROL_PLANE_URL = (Some("STREAMER_GATEWAY_CONTROL_PLANE_URL"), Some("gateway.control_plane_url"), "", Some("the control plane `dev` runs"), "`dev`: where the gateway's edge handlers call the control plane, e.g. through a fault-injecting proxy");
    CONTROL_PLANE_CA = (Some("STREAMER_CONTROL_PLANE_CA"), Some("gateway.control_plane_ca"), "", Some("the platform's roots"), "`dev` (and the edge Lambdas, `streamer-gateway`): the CA (PEM file or text) the edge trusts for an `https://` control plane");
    EDGE_TLS_CERT = (Some("STREAMER_EDGE_TLS_CERT"), Some("gateway.edge_tls_cert"), "", Some("none"), "`dev` (and the edge Lambdas, `streamer-gateway`): the client certificate (PEM) the edge presents under mutual TLS; with `STREAMER_EDGE_TLS_KEY`");
    EDGE_TLS_KEY = (Some("STREAMER_EDGE_TLS_KEY"), Some("gateway.edge_tls_key"), "", Some("none"), "the private key of `STREAMER_EDGE_TLS_CERT`");
    GATEWAY_EDGE_TIMEOUT_MS = (Some("STREAMER_GATEWAY_EDGE_TIMEOUT_MS"), Some("gateway.edge_timeout_ms"), "10000", None, "`dev`: how long one edge call may take (the edge Lambdas' call timeout)");
    GATEWAY_IDLE_TIMEOUT_SECS = (Some("STREAMER_GATEWAY_IDLE_TIMEOUT_SECS"), Some("gateway.idle_timeout_secs"), "600", None, "`dev`: idle connections are closed (1001)");
    GATEWAY_MAX_DURATION_SECS = (Some("STREAMER_GATEWAY_MAX_DURATION_SECS"), Some("gateway.max_duration_secs"), "7200", None, "`dev`: maximum connection duration (1001)");
    JWT_PUBLIC_KEY = (Some("STREAMER_JWT_PUBLIC_KEY"), Some("jwt.public_key"), "", Some("none (`dev` makes one)"), "PEM public key (RSA, EC or Ed25519); `\\n` escapes allowed");
    JWT_PUBLIC_KEY_FILE = (Some("STREAMER_JWT_PUBLIC_KEY_FILE"), Some("jwt.public_key_file"), "", Some("none"), "the same, from a file");
    JWT_ALGORITHMS = (Some("STREAMER_JWT_ALGORITHMS"), Some("jwt.algorithms"), "RS256", None, "accepted algorithms (comma list; one key family)");
    JWT_ISSUER = (Some("STREAMER_JWT_ISSUER"), Some("jwt.issuer"), "", Some("none (`serve` refuses to start without it)"), "required `iss`; `any` accepts every issuer (say so on purpose: a token minted for another service is then accepted)");
    JWT_AUDIENCE = (Some("STREAMER_JWT_AUDIENCE"), Some("jwt.audience"), "", Some("none (`serve` refuses to start without it)"), "required `aud`; `any` accepts every audience");
    JWT_JWKS_URL = (Some("STREAMER_JWT_JWKS_URL"), Some("jwt.jwks_url"), "", Some("none"), "a JWKS document of client keys: tokens pick their key by `kid`, several keys at once; `https://` only (`http://` to loopback); fetched at start, every `STREAMER_JWT_JWKS_REFRESH_SECS` and, at most once a minute, for an unknown `kid`; a failed or refused fetch keeps the last good set. With it, `STREAMER_JWT_PUBLIC_KEY` is optional (both: either may verify)");
    JWT_JWKS_REFRESH_SECS = (Some("STREAMER_JWT_JWKS_REFRESH_SECS"), Some("jwt.jwks_refresh_secs"), "300", None, "how often the JWKS document is fetched again");
    JWT_MAX_LIFETIME_SECS = (Some("STREAMER_JWT_MAX_LIFETIME_SECS"), Some("jwt.max_lifetime_secs"), "86400", None, "refuse client tokens valid for longer than this (`exp` − `iat`, or `exp` − now without `iat`); `0`: no limit");
    JWT_LEEWAY_SECS = (Some("STREAMER_JWT_LEEWAY_SECS"), Some("jwt.leeway_secs"), "5", None, "clock skew allowed on `exp` / `nbf`");
    EDGE_TOKEN = (Some("STREAMER_EDGE_TOKEN"), Some("tokens.edge"), "", Some("none (`dev` makes one)"), "edge role token (at least 16 characters)");
    ADMIN_TOKEN = (Some("STREAMER_ADMIN_TOKEN"), Some("tokens.admin"), "", Some("none (`dev` makes one)"), "admin role token (at least 16 characters)");
    EDGE_TOKEN_PREVIOUS = (Some("STREAMER_EDGE_TOKEN_PREVIOUS"), Some("tokens.edge_previous"), "", Some("none"), "the edge token being rotated out, still accepted alongside the current one (see docs/operations.md, rotating credentials)");
    EDGE_TOKEN_SECRET_ARN = (Some("STREAMER_EDGE_TOKEN_SECRET_ARN"), Some("tokens.edge_secret_arn"), "", Some("none"), "read the edge token from this Secrets Manager secret instead: its AWSCURRENT value, and its AWSPREVIOUS value as the previous token; at start and on SIGHUP");
    ADMIN_TOKEN_SECRET_ARN = (Some("STREAMER_ADMIN_TOKEN_SECRET_ARN"), Some("tokens.admin_secret_arn"), "", Some("none"), "read the admin token from this Secrets Manager secret instead (AWSCURRENT); at start and on SIGHUP");
    SERVICE_TOKENS = (None, Some("tokens.services"), "", Some("none"), "`[[tokens.services]]` tables: `name`, `token` (or `token_secret_arn`, a Secrets Manager secret read at start and on SIGHUP), optional `tenant_id` (a service token bound to that tenant)");
    OPERATORS = (None, Some("tokens.operators"), "", Some("none"), "`[[tokens.operators]]` tables: `name`, `token` (or `token_secret_arn`), `role` = `admin` (the whole server API) or `read` (list, count, get, history, stats; everything else is `PERMISSION_DENIED`). Each is a named principal in the audit trail; `STREAMER_ADMIN_TOKEN` is the admin operator named `admin`");
    MAX_MESSAGE_BYTES = (Some("STREAMER_MAX_MESSAGE_BYTES"), Some("limits.max_message_bytes"), "131072", None, "largest client message (`PAYLOAD_TOO_LARGE`)");
    MESSAGES_PER_MINUTE = (Some("STREAMER_MESSAGES_PER_MINUTE"), Some("limits.messages_per_minute"), "100", None, "per-connection message rate");
    MESSAGE_BURST = (Some("STREAMER_MESSAGE_BURST"), Some("limits.message_burst"), "20", None, "per-connection burst");
    CHUNKED_MESSAGE_MAX_BYTES = (Some("STREAMER_CHUNKED_MESSAGE_MAX_BYTES"), Some("limits.chunked_message_max_bytes"), "1048576", None, "largest client message sent as `chunk` frames, joined");
    CHUNKED_MESSAGE_MAX_CHUNKS = (Some("STREAMER_CHUNKED_MESSAGE_MAX_CHUNKS"), Some("limits.chunked_message_max_chunks"), "64", None, "most `chunk` frames one client message may have");
    CHUNKED_MESSAGE_TIMEOUT_SECS = (Some("STREAMER_CHUNKED_MESSAGE_TIMEOUT_SECS"), Some("limits.chunked_message_timeout_secs"), "30", None, "a chunked client message not complete this long after its first chunk is dropped");
    CHUNKED_MESSAGES_HELD_MAX_BYTES = (Some("STREAMER_CHUNKED_MESSAGES_HELD_MAX_BYTES"), Some("limits.chunked_messages_held_max_bytes"), "268435456", None, "embedded store: most bytes of unfinished chunked messages held at once, every connection together (past it, new pieces get `SERVICE_UNAVAILABLE`)");
    CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_TENANT = (Some("STREAMER_CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_TENANT"), Some("limits.chunked_messages_held_max_bytes_per_tenant"), "", Some("a quarter of the server's"), "embedded store: most bytes of unfinished chunked messages one tenant's connections hold together, so one tenant cannot take the whole server budget (past it, that tenant's new pieces get `SERVICE_UNAVAILABLE` naming its share)");
    CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_CONNECTION = (Some("STREAMER_CHUNKED_MESSAGES_HELD_MAX_BYTES_PER_CONNECTION"), Some("limits.chunked_messages_held_max_bytes_per_connection"), "", Some("STREAMER_CHUNKED_MESSAGE_MAX_BYTES"), "embedded store: most bytes of an unfinished chunked message one connection holds");
    CONNECTS_PER_MINUTE_PER_IP = (Some("STREAMER_CONNECTS_PER_MINUTE_PER_IP"), Some("limits.connects_per_minute_per_ip"), "10", None, "connection attempts per source IP (also the burst)");
    LOOPBACK_CONNECTS_UNLIMITED = (Some("STREAMER_LOOPBACK_CONNECTS_UNLIMITED"), Some("limits.loopback_connects_unlimited"), "", Some("`false` (`dev`: `true`)"), "connects from 127.0.0.0/8 and ::1 skip the per-IP connect limit");
    MAX_CONNECTIONS_PER_TENANT = (Some("STREAMER_MAX_CONNECTIONS_PER_TENANT"), Some("limits.max_connections_per_tenant"), "0", Some("`0` (none)"), "tenant connection quota");
    DELIVERY_CONCURRENCY = (Some("STREAMER_DELIVERY_CONCURRENCY"), Some("delivery.concurrency"), "256", None, "`PostToConnection` calls in flight per broadcast");
    DELIVERY_MAX_ATTEMPTS = (Some("STREAMER_DELIVERY_MAX_ATTEMPTS"), Some("delivery.max_attempts"), "3", None, "attempts per recipient for 5xx, timeouts and refused connections (429s retry until the deadline)");
    DELIVERY_BASE_BACKOFF_MS = (Some("STREAMER_DELIVERY_BASE_BACKOFF_MS"), Some("delivery.base_backoff_ms"), "25", None, "first retry delay of a delivery (doubled per attempt, full jitter)");
    DELIVERY_MAX_BACKOFF_MS = (Some("STREAMER_DELIVERY_MAX_BACKOFF_MS"), Some("delivery.max_backoff_ms"), "1000", None, "longest retry delay of a delivery");
    TOKEN_EXPIRY_WARNING_SECS = (Some("STREAMER_TOKEN_EXPIRY_WARNING_SECS"), Some("delivery.token_expiry_warning_secs"), "60", None, "this long before a client token's `exp` its connection gets `{\"type\":\"token_expiring\",\"expires_at\":…}`; at `exp` the connection is closed unless the client sent `refresh` with a new token");
    IDEMPOTENCY_WINDOW_SECS = (Some("STREAMER_IDEMPOTENCY_WINDOW_SECS"), Some("delivery.idempotency_window_secs"), "300", None, "how long a Send's `idempotency_key` is remembered (per tenant): a retry within it answers the first Send's response and delivers nothing again");
    DELIVERY_MAX_RPS = (Some("STREAMER_DELIVERY_MAX_RPS"), Some("delivery.max_rps"), "0", Some("`0` (no budget)"), "Management API calls per second, shared by every send of this replica (broadcasts, relays, presence); set it below the account's quota (AWS: 10,000/s per account and region, shared with every API)");
    DELIVERY_BURST = (Some("STREAMER_DELIVERY_BURST"), Some("delivery.burst"), "0", Some("`0` (the rate)"), "calls the budget may spend at once");
    DELIVERY_DEADLINE_MS = (Some("STREAMER_DELIVERY_DEADLINE_MS"), Some("delivery.deadline_ms"), "60000", None, "a send retries throttled calls until this long after it started; what is still undelivered then is reported");
    DELIVERY_CALL_TIMEOUT_MS = (Some("STREAMER_DELIVERY_CALL_TIMEOUT_MS"), Some("delivery.call_timeout_ms"), "5000", None, "timeout of one Management API call");
    DELIVERY_CONNECTING_GRACE_MS = (Some("STREAMER_DELIVERY_CONNECTING_GRACE_MS"), Some("delivery.connecting_grace_ms"), "10000", None, "a 410 for a connection younger than this does not remove it: API Gateway answers 410 while a connection's `$connect` is still running");
    MANAGEMENT_ENDPOINTS = (Some("STREAMER_MANAGEMENT_ENDPOINTS"), Some("delivery.management_endpoints"), "", Some("none (`serve` on DynamoDB and `migrate` refuse to start; `dev` sets its emulator's)"), "the Management API endpoints this deployment may call, `https://{host}/{stage}`, comma separated (the stack's API and its custom domain; `https://*.zone/stage` admits one DNS label, for self-hosted gateways each under its own name), or `any`: a `$connect` naming another endpoint is refused 403, `migrate legacy-connections` skips such rows, and no delivery ever calls one");
    DELIVERY_BATCH_SIZE = (Some("STREAMER_DELIVERY_BATCH_SIZE"), Some("delivery.batch_size"), "1000", None, "most connections one delivery call names where the endpoint is Streamer's own gateway (`streamer-gateway`, which announces its batch call at `@capabilities`): recipients are grouped by endpoint and sent one frame per batch call instead of one `PostToConnection` each; `0` never batches. API Gateway endpoints (`*.amazonaws.com`) are never asked");
    GATEWAY_SIGNING_ACCESS_KEY_ID = (Some("STREAMER_GATEWAY_SIGNING_ACCESS_KEY_ID"), Some("delivery.gateway_signing_access_key_id"), "", Some("none (the AWS credential chain)"), "the key id the control plane signs calls to Streamer's own gateways with (every endpoint that is not `*.amazonaws.com`); the gateways verify it (`STREAMER_GATEWAY_ACCESS_KEY_ID`). On ECS inject it and the secret from Secrets Manager (the task definition's `Secrets`)");
    GATEWAY_CA = (Some("STREAMER_GATEWAY_CA"), Some("delivery.gateway_ca"), "", Some("the platform's roots only"), "CA certificates (PEM: a file's path, or the PEM itself as ECS injects a secret) trusted beside the platform's roots for `https://` Management endpoints: the private CA of Streamer's own gateways' management listeners (`STREAMER_GATEWAY_MANAGEMENT_TLS_CERT`)");
    GATEWAY_SIGNING_SECRET_ACCESS_KEY = (Some("STREAMER_GATEWAY_SIGNING_SECRET_ACCESS_KEY"), None, "", Some("none"), "its secret (at least 32 characters); environment only, never in a file of settings");
    DELIVERY_MAX_FRAME_BYTES = (Some("STREAMER_DELIVERY_MAX_FRAME_BYTES"), Some("delivery.max_frame_bytes"), "128000", None, "largest frame posted whole (API Gateway's message limit is 128 KB); a larger one goes out as `chunk` frames, or as a `PAYLOAD_TOO_LARGE` error to a client that connected with `chunks=false`");
    STORE = (Some("STREAMER_STORE"), Some("store.kind"), "memory", None, "`memory` (embedded) or `dynamodb`");
    CONNECTIONS_TABLE = (Some("STREAMER_CONNECTIONS_TABLE"), Some("store.connections_table"), "streamer-connections", None, "DynamoDB connections table");
    REQUESTS_TABLE = (Some("STREAMER_REQUESTS_TABLE"), Some("store.requests_table"), "streamer-requests", None, "DynamoDB requests table");
    RATE_LIMITS_TABLE = (Some("STREAMER_RATE_LIMITS_TABLE"), Some("store.rate_limits_table"), "streamer-rate-limits", None, "DynamoDB table of the shared rate limits");
    SHARED_RATE_LIMITS = (Some("STREAMER_SHARED_RATE_LIMITS"), Some("store.shared_rate_limits"), "", Some("`true` on DynamoDB, `false` on memory"), "keep the message and connect limits in the store, shared by every replica");
    CONNECTION_TTL_SECS = (Some("STREAMER_CONNECTION_TTL_SECS"), Some("store.connection_ttl_secs"), "7500", None, "a row expires this long after its last refresh and after connect (API Gateway's 2 h + 5 min)");
    TOUCH_INTERVAL_SECS = (Some("STREAMER_TOUCH_INTERVAL_SECS"), Some("store.touch_interval_secs"), "60", None, "refresh `last_seen` at most this often per connection");
    RECONCILE_INTERVAL_SECS = (Some("STREAMER_RECONCILE_INTERVAL_SECS"), Some("reconcile.interval_secs"), "300", None, "stale-connection reconcile period; `0` turns it off");
    RECONCILE_IDLE_SECS = (Some("STREAMER_RECONCILE_IDLE_SECS"), Some("reconcile.idle_secs"), "900", None, "rows idle longer than this are checked with the gateway");
    RECONCILE_UNREACHABLE_SECS = (Some("STREAMER_RECONCILE_UNREACHABLE_SECS"), Some("reconcile.unreachable_secs"), "900", None, "rows whose Management API endpoint failed every reconcile check (refused, hung, 5xx) for this long are removed, their departure announced");
    MAX_GROUPS_PER_CONNECTION = (Some("STREAMER_MAX_GROUPS_PER_CONNECTION"), Some("groups.max_per_connection"), "128", None, "most groups one connection may be in");
    GROUP_JOIN_PERMISSION = (Some("STREAMER_GROUP_JOIN_PERMISSION"), Some("groups.join_permission"), "group:join:{group}", None, "permission a token needs to `join` (`{group}` is the name; a granted `prefix*` matches)");
    PRESENCE_INTERVAL_MS = (Some("STREAMER_PRESENCE_INTERVAL_MS"), Some("groups.presence_interval_ms"), "500", None, "joins and leaves of one group are delivered together, at most once per group per this interval (a join/leave flood costs deliveries per interval, not per event)");
    PRESENCE_GROUPS = (Some("STREAMER_PRESENCE_GROUPS"), Some("groups.presence"), "", Some("none"), "groups (names or `prefix*`, comma separated) whose members get presence frames");
    HISTORY = (Some("STREAMER_HISTORY"), Some("history.streams"), "", Some("none"), "streams that keep history: names or `prefix*` patterns, comma separated (`tenant`, `user:*`, `group:room-*`)");
    HISTORY_SIZE = (Some("STREAMER_HISTORY_SIZE"), Some("history.size"), "1000", None, "messages kept per stream");
    HISTORY_TTL_SECS = (Some("STREAMER_HISTORY_TTL_SECS"), Some("history.ttl_secs"), "600", None, "how long a message is kept (the smaller of the two limits wins)");
    HISTORY_RECOVER_MAX_INFLIGHT_BYTES = (Some("STREAMER_HISTORY_RECOVER_MAX_INFLIGHT_BYTES"), Some("history.recover_max_inflight_bytes"), "33554432", None, "most bytes of history being sent to clients at once (recoveries, `join` with `since`, `ReadHistory`), every connection together; past it a recovery waits its turn (up to 10 s), then is refused `RATE_LIMITED`");
    HISTORY_RECOVER_MAX = (Some("STREAMER_HISTORY_RECOVER_MAX"), Some("history.recover_max"), "1000", None, "most messages one `recover` returns (past that: `recovered: false`)");
    HISTORY_TABLE = (Some("STREAMER_HISTORY_TABLE"), Some("store.history_table"), "streamer-history", None, "DynamoDB table of stream history");
    CHUNKS_TABLE = (Some("STREAMER_CHUNKS_TABLE"), Some("store.chunks_table"), "streamer-chunks", None, "DynamoDB table of chunked client messages being joined (any replica may receive a chunk)");
    LEGACY_MIRROR_TABLE = (Some("STREAMER_LEGACY_MIRROR_TABLE"), Some("store.legacy_mirror_table"), "", Some("none (off)"), "migration from the Go system: mirror every connection write into its connections table (the dual write), in `STREAMER_LEGACY_SHAPE`");
    LEGACY_SHAPE = (Some("STREAMER_LEGACY_SHAPE"), Some("store.legacy_shape"), "classic", None, "the Go system's connection items: `classic` (`ConnectionID`, `TenantID`, ...) or `dynamorm` (`pk` = `CONN#<id>`, `sk` = `METADATA`)");
    QUEUE_MAX_PER_USER = (Some("STREAMER_QUEUE_MAX_PER_USER"), Some("jobs.queue_max_per_user"), "1000", None, "most long-running requests one user of a tenant may have waiting or running; past it a request is refused `RATE_LIMITED` (0: no bound)");
    QUEUE_MAX_PER_TENANT = (Some("STREAMER_QUEUE_MAX_PER_TENANT"), Some("jobs.queue_max_per_tenant"), "10000", None, "most long-running requests one tenant may have waiting or running; past it a request is refused `RATE_LIMITED` (0: no bound)");
    QUEUE_WAIT_TTL_SECS = (Some("STREAMER_QUEUE_WAIT_TTL_SECS"), Some("jobs.queue_wait_ttl_secs"), "3600", None, "a request no processor leased within this long of becoming ready ends `expired` (its subscribers get a `TIMEOUT` error frame)");
    RETRY_BASE_MS = (Some("STREAMER_RETRY_BASE_MS"), Some("jobs.retry_base_ms"), "1000", None, "first retry delay of a failed attempt (doubled per attempt, jittered)");
    RETRY_MAX_MS = (Some("STREAMER_RETRY_MAX_MS"), Some("jobs.retry_max_ms"), "60000", None, "longest retry delay");
    PROGRESS_INTERVAL_MS = (Some("STREAMER_PROGRESS_INTERVAL_MS"), Some("jobs.progress_interval_ms"), "100", None, "at most one progress frame per request per interval (10/s)");
    ACTIONS = (None, Some("actions"), "", Some("none"), "`[[actions]]` tables: `name`, `mode` (`sync` / `async`), `handler`, `permission`, `schema`, `lease_timeout_ms`, `max_attempts`");
    STATE_DIR = (Some("STREAMER_STATE_DIR"), Some("dev.state_dir"), ".build/dev", None, "`dev`: where the signing key, its private half (for `streamerctl token`) and the gRPC tokens are kept across restarts");
    DEMO_PROCESSOR = (Some("STREAMER_DEMO_PROCESSOR"), Some("dev.demo_processor"), "true", None, "`dev`: run the in-process demo processor (`echo_async`, `generate_report`)");
    DEV_TLS = (Some("STREAMER_DEV_TLS"), Some("dev.tls"), "false", None, "`dev`: make a local CA and certificates in the state folder and serve gRPC with TLS and mutual TLS, the console and `/metrics` with TLS (also `dev --tls`); set `STREAMER_TLS_*` instead to bring your own");
    DEV_REPLICAS = (Some("STREAMER_DEV_REPLICAS"), Some("dev.replicas"), "1", None, "`dev`: control-plane replicas behind the one gateway, each event to the next (also `dev --replicas N`); more than one needs `STREAMER_STORE=dynamodb`");
    DEMO_DURATION_MS = (Some("STREAMER_DEMO_DURATION_MS"), Some("dev.demo_duration_ms"), "3000", None, "`dev`: how long a demo request takes");
}

/// The settings as the Markdown table `docs/configuration.md` holds.
pub fn markdown_table() -> String {
    let cell = |s: Option<&str>| s.map_or_else(|| "—".to_owned(), |s| format!("`{s}`"));
    let mut out =
        String::from("| variable | file key | default | meaning |\n| --- | --- | --- | --- |\n");
    for setting in ALL {
        let default = match (setting.default_doc, setting.default) {
            (Some(doc), _) => doc.to_owned(),
            (None, value) => format!("`{value}`"),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(setting.env),
            cell(setting.key),
            default,
            setting.doc
        ));
    }
    out
}
