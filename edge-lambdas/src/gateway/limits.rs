//! API Gateway's account-level throttles, as the emulator applies them: a
//! token bucket that answers "now" or "not now" (API Gateway refuses at
//! once with 429, it never queues).

use std::{sync::Mutex, time::Instant};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals() {
        let throttle = Throttle::new(1, 3).expect("limited");
        assert!((0..3).all(|_| throttle.try_take()));
        assert!(!throttle.try_take());
        assert!(Throttle::new(0, 10).is_none(), "0 means unlimited");
    }
}
