//! Prometheus metrics, served as text on `/metrics` of a separate admin
//! port (`STREAMER_METRICS_ADDR`).
//!
//! One process-wide registry. Counters and gauges are per process: with
//! several replicas, sum them (a connection may connect through one replica
//! and disconnect through another, so per-replica active gauges can even go
//! negative while the sum stays right).

use std::{future::Future, sync::OnceLock, time::Instant};

use dashmap::DashSet;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

/// Tenants with a label of their own on per-tenant metrics; the rest are
/// counted under `_other`, so a tenant flood cannot explode cardinality.
pub const MAX_TENANT_LABELS: usize = 100;

/// Label: a tenant (capped).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant id, or `_other`.
    pub tenant: String,
}

/// Label: an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened.
    pub outcome: &'static str,
}

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Labels of routed messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// A declared action, `_unknown` or `_invalid` (never client text).
    pub action: String,
    /// `ok` or the error code, lowercased.
    pub outcome: &'static str,
}

/// Label: a Management API endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// A Management API endpoint (one per API stage: few).
    pub endpoint: String,
}

/// Label: which limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `message`, `connect` or `tenant_quota`.
    pub limit: &'static str,
}

/// Label: an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    /// The operation name.
    pub operation: &'static str,
}

/// Latency buckets from 100 µs to ~3.3 s.
#[derive(Clone, Copy, Debug)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 16))
    }
}

/// A latency histogram kept in atomics: an observation is a few atomic
/// adds and never takes a lock, so the delivery path can record every
/// Management API call without contending on a mutex. Same buckets as
/// [`LatencyBuckets`].
#[derive(Debug, Clone)]
pub struct AtomicHistogram(std::sync::Arc<HistogramCells>);

/// The cells of an [`AtomicHistogram`].
#[derive(Debug)]
pub struct HistogramCells {
    buckets: Vec<(f64, std::sync::atomic::AtomicU64)>,
    sum_ns: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for AtomicHistogram {
    type Target = HistogramCells;

    fn deref(&self) -> &HistogramCells {
        &self.0
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self(std::sync::Arc::new(HistogramCells {
            buckets: exponential_buckets(0.0001, 2.0, 16)
                .chain(std::iter::once(f64::INFINITY))
                .map(|upper| (upper, std::sync::atomic::AtomicU64::new(0)))
                .collect(),
            sum_ns: std::sync::atomic::AtomicU64::new(0),
            count: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}

impl AtomicHistogram {
    /// Records one duration.
    pub fn observe(&self, duration: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = duration.as_secs_f64();
        if let Some((_, bucket)) = self.buckets.iter().find(|(upper, _)| secs <= *upper) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum_ns.fetch_add(
            u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
            Relaxed,
        );
        self.count.fetch_add(1, Relaxed);
    }

    /// Observations so far (for tests and the console).
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds this histogram's cells into `into` (buckets cumulative, as
    /// Prometheus reports them), for `AdminService.GetStats`.
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        use std::sync::atomic::Ordering::Relaxed;
        if into.buckets.is_empty() {
            into.buckets = self.buckets.iter().map(|(upper, _)| (*upper, 0)).collect();
        }
        let mut running = 0;
        for ((_, cell), (_, total)) in self.buckets.iter().zip(into.buckets.iter_mut()) {
            running += cell.load(Relaxed);
            *total += running;
        }
        into.sum_ns += self.sum_ns.load(Relaxed);
        into.count += self.count.load(Relaxed);
    }
}

/// A reading of one or more [`AtomicHistogram`]s added together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or under it), the last
    /// bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in nanoseconds.
    pub sum_ns: u64,
    /// Number of observations.
    pub count: u64,
}

impl prometheus_client::metrics::TypedMetric for AtomicHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for AtomicHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|(upper, count)| (*upper, count.load(Relaxed)))
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum_ns.load(Relaxed) as f64 / 1e9,
            self.count.load(Relaxed),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Every metric the control plane exports.
pub struct Metrics {
    registry: Registry,
    /// When the process made its metrics (its start, near enough).
    pub started: Instant,
    /// Client messages routed, every action and outcome together (what
    /// the console charts; not exported, `streamer_messages_total` has the
    /// detail).
    pub messages_routed: Counter,
    tenants: DashSet<String>,
    /// `streamer_connections_active{tenant}`
    pub connections_active: Family<TenantLabel, Gauge>,
    /// `streamer_connects_total{outcome}`
    pub connects: Family<OutcomeLabel, Counter>,
    /// `streamer_disconnects_total`
    pub disconnects: Counter,
    /// `streamer_chunked_frames_total`: frames over the delivery limit sent
    /// as `chunk` frames
    pub chunked_frames: Counter,
    /// `streamer_legacy_mirror_failures_total`: dual writes into the Go
    /// system's table that failed
    pub legacy_mirror_failures: Counter,
    /// `streamer_auth_failures_total{reason}`
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// `streamer_jwks_fetches_total{reason}`: client key set fetches by
    /// outcome (`ok`, `refused`, `timeout`).
    pub jwks_fetches: Family<ReasonLabel, Counter>,
    /// `streamer_messages_total{action,outcome}`
    pub messages: Family<MessageLabels, Counter>,
    /// `streamer_rate_limited_total{limit}`
    pub rate_limited: Family<LimitLabel, Counter>,
    /// `streamer_broadcasts_total`
    pub broadcasts: Counter,
    /// `streamer_broadcast_recipients_total{outcome}`
    pub broadcast_recipients: Family<OutcomeLabel, Counter>,
    /// `streamer_management_api_request_duration_seconds{operation}`
    pub management_api_duration: Family<OperationLabel, AtomicHistogram>,
    /// `streamer_store_request_duration_seconds{operation}`
    pub store_duration: Family<OperationLabel, Histogram, LatencyBuckets>,
    /// `streamer_store_errors_total{operation}`
    pub store_errors: Family<OperationLabel, Counter>,
    /// `streamer_reconcile_removed_total`
    pub reconcile_removed: Counter,
    /// `streamer_endpoint_failures_total{endpoint}`: Management API calls
    /// and reconcile checks that could not reach their endpoint
    pub endpoint_failures: Family<EndpointLabel, Counter>,
    /// `streamer_foreign_endpoints_total{operation}`: connects refused,
    /// calls not made and imported rows skipped because their Management
    /// API endpoint is not in `STREAMER_MANAGEMENT_ENDPOINTS`
    pub foreign_endpoints: Family<OperationLabel, Counter>,
    /// `streamer_requests_total{outcome}`: accepted, completed, failed, cancelled, retried
    pub requests: Family<OutcomeLabel, Counter>,
    /// `streamer_delivery_concurrency`: Management API calls allowed in flight
    /// now (adapts to 429s)
    pub delivery_concurrency: Gauge,
    /// `streamer_heap_bytes`: heap bytes in use, when the binary counts them
    pub heap_bytes: Gauge,
    /// `streamer_runtime_tasks`: tokio tasks alive
    pub runtime_tasks: Gauge,
    /// `streamer_processors`: connected processor sessions
    pub processors: Gauge,
    /// `streamer_requests_queued`: requests waiting for a processor
    pub requests_queued: Gauge,
    /// `streamer_requests_queued_oldest_age_seconds`: how long the oldest has waited
    pub requests_queued_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            started: Instant::now(),
            messages_routed: Counter::default(),
            tenants: DashSet::new(),
            connections_active: Family::default(),
            connects: Family::default(),
            disconnects: Counter::default(),
            chunked_frames: Counter::default(),
            legacy_mirror_failures: Counter::default(),
            auth_failures: Family::default(),
            jwks_fetches: Family::default(),
            messages: Family::default(),
            rate_limited: Family::default(),
            broadcasts: Counter::default(),
            broadcast_recipients: Family::default(),
            management_api_duration: Family::default(),
            store_duration: Family::new_with_constructor(LatencyBuckets),
            store_errors: Family::default(),
            reconcile_removed: Counter::default(),
            endpoint_failures: Family::default(),
            foreign_endpoints: Family::default(),
            requests: Family::default(),
            processors: Gauge::default(),
            delivery_concurrency: Gauge::default(),
            heap_bytes: Gauge::default(),
            runtime_tasks: Gauge::default(),
            requests_queued: Gauge::default(),
            requests_queued_oldest_age: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "streamer_connections_active",
            "Registered connections by tenant (the first 100 tenants by name; the rest as _other)",
            m.connections_active.clone(),
        );
        registry.register(
            "streamer_connects",
            "Connection attempts by outcome",
            m.connects.clone(),
        );
        registry.register(
            "streamer_disconnects",
            "Connections removed on $disconnect",
            m.disconnects.clone(),
        );
        registry.register(
            "streamer_chunked_frames",
            "Frames over the delivery limit sent as chunk frames",
            m.chunked_frames.clone(),
        );
        registry.register(
            "streamer_legacy_mirror_failures",
            "Dual writes into the Go system's connection table that failed",
            m.legacy_mirror_failures.clone(),
        );
        registry.register(
            "streamer_auth_failures",
            "Refused client tokens by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "streamer_jwks_fetches",
            "Client key set (JWKS) fetches by outcome; a refused or failed one keeps the last good set",
            m.jwks_fetches.clone(),
        );
        registry.register(
            "streamer_messages",
            "Client messages routed, by action and outcome",
            m.messages.clone(),
        );
        registry.register(
            "streamer_rate_limited",
            "Requests refused by a rate limit or quota",
            m.rate_limited.clone(),
        );
        registry.register(
            "streamer_broadcasts",
            "Broadcast calls",
            m.broadcasts.clone(),
        );
        registry.register(
            "streamer_broadcast_recipients",
            "Broadcast recipients by outcome (delivered, gone, throttled, too_large, failed)",
            m.broadcast_recipients.clone(),
        );
        registry.register(
            "streamer_management_api_request_duration_seconds",
            "API Gateway Management API call latency, one observation per HTTP attempt",
            m.management_api_duration.clone(),
        );
        registry.register(
            "streamer_store_request_duration_seconds",
            "Registry store call latency",
            m.store_duration.clone(),
        );
        registry.register(
            "streamer_store_errors",
            "Registry store calls that failed",
            m.store_errors.clone(),
        );
        registry.register(
            "streamer_reconcile_removed",
            "Stale connection rows removed by the reconcile job",
            m.reconcile_removed.clone(),
        );
        registry.register(
            "streamer_requests",
            "Long-running requests by outcome (accepted, completed, failed, cancelled, retried)",
            m.requests.clone(),
        );
        registry.register(
            "streamer_requests_queued",
            "Requests waiting for a processor (sampled every 15 s)",
            m.requests_queued.clone(),
        );
        registry.register(
            "streamer_requests_queued_oldest_age_seconds",
            "How long the oldest queued request has waited",
            m.requests_queued_oldest_age.clone(),
        );
        registry.register(
            "streamer_heap_bytes",
            "Heap bytes in use (counted by the binary's allocator; absent when it does not count)",
            m.heap_bytes.clone(),
        );
        registry.register(
            "streamer_runtime_tasks",
            "Tokio tasks alive in this process",
            m.runtime_tasks.clone(),
        );
        registry.register(
            "streamer_delivery_concurrency",
            "Management API calls allowed in flight now (halves on 429, grows back one per window of successes)",
            m.delivery_concurrency.clone(),
        );
        registry.register(
            "streamer_endpoint_failures",
            "Management API calls and reconcile checks that could not reach their endpoint (timeouts, refused connections, 5xx)",
            m.endpoint_failures.clone(),
        );
        registry.register(
            "streamer_foreign_endpoints",
            "Connects refused, calls not made and imported rows skipped: their Management API endpoint is not this deployment's",
            m.foreign_endpoints.clone(),
        );
        registry.register(
            "streamer_processors",
            "Connected processor sessions",
            m.processors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The label for `tenant`: itself for the first [`MAX_TENANT_LABELS`]
    /// tenants seen, `_other` after that.
    pub fn tenant_label(&self, tenant: &str) -> TenantLabel {
        if !TENANT_LABELS.load(std::sync::atomic::Ordering::Relaxed) {
            return TenantLabel {
                tenant: "_all".to_owned(),
            };
        }
        if self.tenants.contains(tenant) {
            return TenantLabel {
                tenant: tenant.to_owned(),
            };
        }
        if self.tenants.len() < MAX_TENANT_LABELS {
            self.tenants.insert(tenant.to_owned());
            return TenantLabel {
                tenant: tenant.to_owned(),
            };
        }
        TenantLabel {
            tenant: "_other".to_owned(),
        }
    }

    /// The text exposition of every metric (sampled gauges read now).
    pub fn encode(&self) -> String {
        if let Some(meter) = HEAP_METER.get() {
            self.heap_bytes
                .set(i64::try_from(meter()).unwrap_or(i64::MAX));
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

static HEAP_METER: OnceLock<fn() -> u64> = OnceLock::new();

/// Whether per-tenant series carry tenant ids (`STREAMER_METRICS_TENANT_LABELS`).
static TENANT_LABELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Labels per-tenant series with tenant ids from now on (off by default:
/// `/metrics` then names no tenant).
pub fn set_tenant_labels(on: bool) {
    TENANT_LABELS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Lets `streamer_heap_bytes` report what the binary's counting allocator
/// says (set once, at start).
pub fn set_heap_meter(meter: fn() -> u64) {
    let _ = HEAP_METER.set(meter);
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Observes how long `future` takes into `histogram`.
pub async fn timed<T>(histogram: &Histogram, future: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = future.await;
    histogram.observe(started.elapsed().as_secs_f64());
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    limits: streamer_listener::Limits,
    tls: Option<streamer_listener::tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{
        Router,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
        routing::get,
    };
    let token = token.map(|t| std::sync::Arc::<str>::from(format!("Bearer {t}")));
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let token = token.clone();
            async move {
                if let Some(expected) = token {
                    let given = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.as_bytes())
                        .unwrap_or_default();
                    if !constant_time_eq(given, expected.as_bytes()) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "a bearer token is required\n",
                        )
                            .into_response();
                    }
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().encode(),
                )
                    .into_response()
            }
        }),
    );
    let app = streamer_listener::limit_body(app, 0);
    streamer_listener::serve(listener, app, limits, tls, shutdown).await
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
