//! The gateway's own Prometheus metrics (`streamer-gateway` serves them on
//! `STREAMER_GATEWAY_METRICS_ADDR`, apart from the public listener): what
//! an operator of self-hosted gateways watches and scales on.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// `outcome` of a WebSocket upgrade.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `refused` (by `$connect`), `throttled` (a connects/s
    /// limit, the gateway's or the address's) or `over_capacity` (the
    /// gateway's cap or the address's share of open sockets).
    pub outcome: &'static str,
}

/// `call` of the Management API (or the batch call).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    /// `post`, `batch`, `get` or `delete`.
    pub call: &'static str,
}

/// Every series, registered once per gateway.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// Upgrades by outcome.
    pub connects: Family<OutcomeLabel, Counter>,
    /// Management API and batch calls answered (refusals included).
    pub calls: Family<CallLabel, Counter>,
    /// Frames queued to sockets by the Management API and batch calls.
    pub frames: Counter,
    /// Requests refused by the throttles (connects and calls).
    pub throttled: Counter,
    /// Open WebSocket connections (read when scraped).
    pub connections: Gauge,
    /// Heap bytes in use, when the binary counts them (read when scraped).
    pub heap_bytes: Gauge,
    /// Client addresses with per-address state (read when scraped).
    pub addresses: Gauge,
    registry: Registry,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut m = Self {
            connects: Family::default(),
            calls: Family::default(),
            frames: Counter::default(),
            throttled: Counter::default(),
            connections: Gauge::default(),
            heap_bytes: Gauge::default(),
            addresses: Gauge::default(),
            registry: Registry::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "streamer_gateway_connects",
            "WebSocket upgrades by outcome",
            m.connects.clone(),
        );
        registry.register(
            "streamer_gateway_management_calls",
            "Management API and batch calls answered, by call",
            m.calls.clone(),
        );
        registry.register(
            "streamer_gateway_frames",
            "Frames queued to sockets by Management API and batch calls",
            m.frames.clone(),
        );
        registry.register(
            "streamer_gateway_throttled",
            "Connects and calls refused by the gateway's throttles",
            m.throttled.clone(),
        );
        registry.register(
            "streamer_gateway_connections",
            "Open WebSocket connections (scale on this per task)",
            m.connections.clone(),
        );
        registry.register(
            "streamer_gateway_heap_bytes",
            "Heap bytes in use (0 when the binary does not count them)",
            m.heap_bytes.clone(),
        );
        registry.register(
            "streamer_gateway_tracked_addresses",
            "Client addresses the per-address limits hold state for",
            m.addresses.clone(),
        );
        m
    }
}

impl GatewayMetrics {
    /// The text exposition, with the sampled gauges set first.
    pub fn encode(&self, connections: usize, heap_bytes: Option<u64>, addresses: usize) -> String {
        self.addresses
            .set(i64::try_from(addresses).unwrap_or(i64::MAX));
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        self.heap_bytes
            .set(heap_bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
