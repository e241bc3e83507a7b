//! The gateway's admission limits. API Gateway's account-level throttles:
//! a token bucket that answers "now" or "not now" (API Gateway refuses at
//! once with 429, it never queues). And, for Streamer's own gateway on the
//! internet, what one client address may do: upgrades per second (GCRA,
//! `governor`) and sockets open at once ([`PerIp`]).

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Instant,
};

use dashmap::DashMap;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

/// A rate with a burst; `None` rate means unlimited.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    /// `rate` per second with `burst` saved up; `None` when `rate` is 0.
    pub fn new(rate: u32, burst: u32) -> Option<Self> {
        (rate > 0).then(|| {
            let burst = f64::from(burst.max(1));
            Self {
                rate: f64::from(rate),
                burst,
                state: Mutex::new((burst, Instant::now())),
            }
        })
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let now = Instant::now();
        state.0 = (state.0 + now.duration_since(state.1).as_secs_f64() * self.rate).min(self.burst);
        state.1 = now;
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why an address may not open another socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over its upgrades per second.
    Rate,
    /// It holds its share of sockets already.
    Open,
}

/// A GCRA limiter per client address on `C`'s time.
type KeyedLimiter<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// What one client address may do: upgrades per second with a burst, and
/// sockets open at once. Both off when 0.
pub struct PerIp<C: Clock = DefaultClock> {
    rate: Option<KeyedLimiter<C>>,
    max_open: usize,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl<C: Clock> std::fmt::Debug for PerIp<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerIp")
            .field("max_open", &self.max_open)
            .field("addresses", &self.open.len())
            .finish_non_exhaustive()
    }
}

/// A socket's place in its address's share, given back on drop.
#[derive(Debug)]
pub struct OpenSlot {
    open: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        // Removed when the last socket of the address ends: the table holds
        // only addresses with sockets open.
        self.open.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

impl PerIp {
    /// `per_second` upgrades with `burst` saved up, and `max_open` sockets,
    /// per address (0: no limit).
    pub fn new(per_second: u32, burst: u32, max_open: usize) -> Self {
        Self::with_clock(per_second, burst, max_open, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> PerIp<C> {
    /// [`PerIp::new`] on `clock`.
    pub fn with_clock(per_second: u32, burst: u32, max_open: usize, clock: &C) -> Self {
        let rate = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::dashmap_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                C::clone(clock),
            )
        });
        Self {
            rate,
            max_open,
            open: Arc::new(DashMap::new()),
        }
    }

    /// Admits one more socket from `ip`: its slot, held while the socket
    /// is open, or why not. A refused upgrade does not spend the rate.
    pub fn admit(&self, ip: IpAddr) -> Result<OpenSlot, Refusal> {
        if self.max_open > 0 && self.open.get(&ip).is_some_and(|n| *n >= self.max_open) {
            return Err(Refusal::Open);
        }
        if let Some(rate) = &self.rate
            && rate.check_key(&ip).is_err()
        {
            return Err(Refusal::Rate);
        }
        let mut count = self.open.entry(ip).or_default();
        if self.max_open > 0 && *count >= self.max_open {
            // Another upgrade of the same address took the last place.
            return Err(Refusal::Open);
        }
        *count += 1;
        drop(count);
        Ok(OpenSlot {
            open: self.open.clone(),
            ip,
        })
    }

    /// Forgets rate state that has fully refilled (run now and then, so an
    /// address seen once does not stay in memory).
    pub fn forget_idle(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    /// Addresses with rate state, and addresses with sockets open.
    pub fn tracked(&self) -> (usize, usize) {
        (
            self.rate.as_ref().map_or(0, RateLimiter::len),
            self.open.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let clock = FakeRelativeClock::default();
        let per_ip = PerIp::with_clock(2, 3, 0, &clock);
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let held: Vec<_> = (0..3)
            .map(|_| per_ip.admit(a).expect("within the burst"))
            .collect();
        assert_eq!(
            per_ip.admit(a).err(),
            Some(Refusal::Rate),
            "the burst is spent"
        );
        assert!(
            per_ip.admit(b).is_ok(),
            "another address has its own budget"
        );
        clock.advance(Duration::from_millis(500));
        assert!(
            per_ip.admit(a).is_ok(),
            "one more after half a second at 2/s"
        );
        assert_eq!(per_ip.admit(a).err(), Some(Refusal::Rate));
        drop(held);
        clock.advance(Duration::from_secs(10));
        per_ip.forget_idle();
        assert_eq!(
            per_ip.tracked(),
            (0, 0),
            "refilled rate state and closed sockets are forgotten"
        );
    }

    #[test]
    fn an_address_holds_at_most_its_share_of_open_sockets() {
        let clock = FakeRelativeClock::default();
        let per_ip = PerIp::with_clock(0, 0, 2, &clock);
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let first = per_ip.admit(a).expect("first");
        let _second = per_ip.admit(a).expect("second");
        assert_eq!(per_ip.admit(a).err(), Some(Refusal::Open));
        drop(first);
        assert!(
            per_ip.admit(a).is_ok(),
            "a closed socket gives its place back"
        );
    }

    #[test]
    fn a_burst_then_refusals() {
        let throttle = Throttle::new(1, 3).expect("limited");
        assert!((0..3).all(|_| throttle.try_take()));
        assert!(!throttle.try_take());
        assert!(Throttle::new(0, 10).is_none(), "0 means unlimited");
    }
}
