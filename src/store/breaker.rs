//! A small circuit breaker: after repeated failures the store is skipped for a
//! back-off period, then one probe call decides whether it is healthy again.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Settings of the circuit breaker in front of a remote store.
///
/// While a breaker is open, requests skip the store (their layer's failure
/// policy answers) and one background probe per breaker asks the store every
/// [`probe_every`](Self::probe_every); the first answer closes the breaker,
/// so decisions come from the store again within about one probe interval of
/// it answering, however long the outage was. Requests never probe while the
/// background probe runs.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_layers::BreakerConfig;
///
/// let config = BreakerConfig::default()
///     .failures(3)
///     .probe_every(Duration::from_millis(100));
/// assert_eq!(config.failures, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 disables it).
    pub failures: u32,
    /// How often the background probe asks the store while the breaker is open.
    pub probe_every: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            probe_every: Duration::from_millis(200),
        }
    }
}

impl BreakerConfig {
    /// Consecutive failures that open the breaker (default 5; 0 disables it).
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// How often the background probe asks the store while the breaker is
    /// open (default 200 ms; at least 10 ms).
    pub fn probe_every(mut self, every: Duration) -> Self {
        self.probe_every = every.max(Duration::from_millis(10));
        self
    }
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    origin: Instant,
    failures: AtomicU32,
    /// Milliseconds since `origin` until which calls are skipped; 0 = closed.
    open_until: AtomicU64,
    /// A background probe is running for this breaker.
    probing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            origin: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    pub(crate) fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// May a call go to the store now? While open, no. Should the background
    /// probe be gone (its runtime shut down), the hold it set lapses and
    /// exactly one caller wins a probe, the others keep skipping.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        let probe_until = now + self.hold_ms();
        self.open_until
            .compare_exchange(until, probe_until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// How long requests are held off per probe round: several probe
    /// intervals, so a live probe task always renews it first.
    fn hold_ms(&self) -> u64 {
        (self.config.probe_every.as_millis() as u64).saturating_mul(4) + 1000
    }

    /// The background probe is alive: hold requests off for another round.
    pub(crate) fn hold(&self) {
        let until = self.now_ms() + self.hold_ms();
        let _ = self
            .open_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u != 0).then_some(until)
            });
    }

    /// Counts a success; `true` when it closed the breaker.
    pub(crate) fn record_success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        // Read first: the common case (closed) writes nothing shared.
        if self.open_until.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Counts a failure; `true` when this one opened the breaker.
    pub(crate) fn record_failure(&self) -> bool {
        if self.config.failures == 0 {
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.config.failures {
            return false;
        }
        let until = self.now_ms() + self.hold_ms();
        self.open_until.swap(until, Ordering::AcqRel) == 0
    }

    /// Claims the one background probe of this breaker.
    pub(crate) fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn probe_ended(&self) {
        self.probing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_probe_through() {
        let b = Breaker::new(
            BreakerConfig::default()
                .failures(3)
                .probe_every(Duration::from_millis(10)),
        );
        for _ in 0..2 {
            assert!(!b.record_failure());
            assert!(b.allow());
        }
        assert!(b.record_failure(), "the third failure opens it");
        assert!(!b.allow(), "open after 3 failures");
        b.hold();
        assert!(!b.allow(), "held off while the background probe lives");
        // No probe renews the hold: it lapses and one request probes.
        std::thread::sleep(Duration::from_millis(b.hold_ms() + 5));
        assert!(b.allow(), "one probe after the hold lapsed");
        assert!(!b.allow(), "only one probe");
        b.record_success();
        assert!(b.allow());
        assert!(b.allow());
    }

    #[test]
    fn zero_threshold_never_opens() {
        let b = Breaker::new(BreakerConfig::default().failures(0));
        for _ in 0..100 {
            assert!(!b.record_failure());
        }
        assert!(b.allow());
    }
}
