//! A small circuit breaker: after repeated failures the store is skipped for a
//! back-off period, then one probe call decides whether it is healthy again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of the circuit breaker in front of a remote store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 disables it).
    pub failures: u32,
    /// How long the breaker stays open the first time.
    pub open_for: Duration,
    /// Upper bound of the doubling back-off while probes keep failing.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    origin: Instant,
    failures: AtomicU32,
    trips: AtomicU32,
    /// Milliseconds since `origin` until which calls are skipped; 0 = closed.
    open_until: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// May a call go to the store now? While open, no; once the back-off has
    /// passed, exactly one caller wins the probe and the others keep skipping.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        // Half-open: hold others off for one more back-off while the probe runs.
        let probe_until = now + self.config.open_for.as_millis() as u64;
        self.open_until
            .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            self.trips.store(0, Ordering::Relaxed);
            tracing::warn!("store circuit breaker closed: the store answers again");
        }
    }

    pub(crate) fn record_failure(&self) {
        if self.config.failures == 0 {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.config.failures {
            return;
        }
        let trips = self.trips.fetch_add(1, Ordering::AcqRel).min(16);
        let back_off = self
            .config
            .open_for
            .saturating_mul(1 << trips)
            .min(self.config.max_open_for);
        let until = self.now_ms() + back_off.as_millis() as u64;
        let previous = self.open_until.swap(until, Ordering::AcqRel);
        if previous == 0 {
            tracing::warn!(
                failures,
                back_off_ms = back_off.as_millis() as u64,
                "store circuit breaker opened: skipping the store"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_probe_through() {
        let b = Breaker::new(BreakerConfig {
            failures: 3,
            open_for: Duration::from_millis(20),
            max_open_for: Duration::from_millis(40),
        });
        for _ in 0..2 {
            b.record_failure();
            assert!(b.allow());
        }
        b.record_failure();
        assert!(!b.allow(), "open after 3 failures");
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.allow(), "one probe after the back-off");
        assert!(!b.allow(), "only one probe");
        b.record_success();
        assert!(b.allow());
        assert!(b.allow());
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = Breaker::new(BreakerConfig {
            failures: 0,
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            b.record_failure();
        }
        assert!(b.allow());
    }
}
