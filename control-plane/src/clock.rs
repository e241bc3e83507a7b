//! The one clock of the control plane: wall-clock milliseconds that advance
//! with tokio's clock. Registry TTLs, leases, retries, throttles and history
//! retention all read it, so a test that pauses tokio time drives every one
//! of them, and production reads the real time.

use tokio::time::Instant;

/// Wall-clock milliseconds since the epoch, following tokio's (pausable)
/// clock from the moment the clock was made. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_ms: i64,
}

impl Clock {
    /// A clock that reads the current wall time now and follows tokio's
    /// clock from here on.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            base_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// A clock that reads `ms` now (tests that need a fixed start).
    pub fn starting_at(ms: i64) -> Self {
        Self {
            base: Instant::now(),
            base_ms: ms,
        }
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX / 2)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration in whole milliseconds, saturating.
pub fn ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_paused_time() {
        let clock = Clock::new();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(clock.now_ms() - before, 31_000);
        let fixed = Clock::starting_at(1_000);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(fixed.now_ms(), 1_005);
    }
}
