//! Client rate limits: messages per connection and connection attempts per
//! source IP, behind the [`RateLimiter`] trait. [`LocalLimits`] keeps them in
//! this process (GCRA via `governor`); the shared limits keep them in the
//! store so that every replica spends the same budget. The tenant connection
//! quota lives in the registry, where it is checked atomically with the
//! insert.
//!
//! The local limiters read tokio's clock, so tests drive them with paused
//! time.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use async_trait::async_trait;
use governor::{
    Quota, RateLimiter as Gcra, clock::Clock, middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

use crate::config::LimitsConfig;

/// A governor clock on tokio's time, which tests can pause and advance.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Keyed<K> = Gcra<K, DashMapStateStore<K>, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Admits or refuses client traffic; `Err` says how long to wait.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Admits one message from `connection_id`.
    async fn check_message(&self, connection_id: &str) -> Result<(), Duration>;

    /// Admits one connection attempt from `source_ip`.
    async fn check_connect(&self, source_ip: &str) -> Result<(), Duration>;

    /// Periodic upkeep (forgetting idle keys).
    fn housekeeping(&self);
}

/// The keyed limiters of one control-plane process.
pub struct LocalLimits {
    messages: Keyed<Arc<str>>,
    connects: Keyed<Arc<str>>,
}

impl std::fmt::Debug for LocalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimits").finish_non_exhaustive()
    }
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl LocalLimits {
    /// Limiters with the configured quotas.
    pub fn new(limits: &LimitsConfig) -> Self {
        let messages = Quota::per_minute(non_zero(limits.messages_per_minute))
            .allow_burst(non_zero(limits.message_burst));
        let connects = Quota::per_minute(non_zero(limits.connects_per_minute_per_ip));
        Self {
            messages: Gcra::new(messages, DashMapStateStore::default(), TokioClock),
            connects: Gcra::new(connects, DashMapStateStore::default(), TokioClock),
        }
    }

    /// Admits one message from `connection_id`, or says how long to wait.
    pub fn message(&self, connection_id: &str) -> Result<(), Duration> {
        check(&self.messages, &Arc::from(connection_id))
    }

    /// Admits one connection attempt from `source_ip`, or says how long to wait.
    pub fn connect(&self, source_ip: &str) -> Result<(), Duration> {
        check(&self.connects, &Arc::from(source_ip))
    }

    /// Drops limiter state that is indistinguishable from fresh (called
    /// periodically so that departed connections and IPs cost nothing).
    pub fn retain_recent(&self) {
        for limiter in [&self.messages, &self.connects] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys currently holding state (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.messages.len() + self.connects.len()
    }
}

#[async_trait]
impl RateLimiter for LocalLimits {
    async fn check_message(&self, connection_id: &str) -> Result<(), Duration> {
        self.message(connection_id)
    }

    async fn check_connect(&self, source_ip: &str) -> Result<(), Duration> {
        self.connect(source_ip)
    }

    fn housekeeping(&self) {
        self.retain_recent();
    }
}

fn check(limiter: &Keyed<Arc<str>>, key: &Arc<str>) -> Result<(), Duration> {
    limiter
        .check_key(key)
        .map_err(|not_until| not_until.wait_time_from(TokioClock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::tests::limits;

    #[tokio::test(start_paused = true)]
    async fn message_burst_then_the_rate() {
        let limits = LocalLimits::new(&limits());
        let conn = "c1";
        for _ in 0..5 {
            limits.message(conn).expect("within burst");
        }
        let wait = limits.message(conn).expect_err("burst spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another connection has its own budget.
        limits.message("c2").expect("independent");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(limits.message(conn).is_err());
        tokio::time::advance(Duration::from_millis(2)).await;
        limits.message(conn).expect("one cell replenished after 1s");
        assert!(limits.message(conn).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn connects_per_ip() {
        let limits = LocalLimits::new(&limits());
        limits.connect("198.51.100.1").expect("1");
        limits.connect("198.51.100.1").expect("2");
        let wait = limits
            .connect("198.51.100.1")
            .expect_err("3rd within the minute");
        assert!(wait <= Duration::from_secs(30), "{wait:?}");
        limits.connect("198.51.100.2").expect("other ip");
        tokio::time::advance(Duration::from_secs(30)).await;
        limits.connect("198.51.100.1").expect("replenished");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_state_is_dropped() {
        let limits = LocalLimits::new(&limits());
        limits.message("c1").expect("ok");
        assert_eq!(limits.tracked_keys(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        limits.retain_recent();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
