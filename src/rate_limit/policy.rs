//! Quota policies: what a client may do, and how it is counted.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;

/// How a [`Policy`] counts requests. See the module docs for the accuracy and
/// memory of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: a steady rate with a burst allowance.
    Gcra,
    /// Exact sliding window: one timestamp per admitted unit.
    SlidingLog,
    /// Approximate sliding window: two counters, the previous one weighted.
    SlidingWindow,
    /// Fixed window: one counter per window, reset at the window's end.
    FixedWindow,
    /// Token bucket refilled at a steady rate, up to a capacity.
    TokenBucket,
}

impl Algorithm {
    pub(crate) fn code(self) -> u8 {
        match self {
            Algorithm::Gcra => 1,
            Algorithm::SlidingLog => 2,
            Algorithm::SlidingWindow => 3,
            Algorithm::FixedWindow => 4,
            Algorithm::TokenBucket => 5,
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingLog => "log",
            Algorithm::SlidingWindow => "sw",
            Algorithm::FixedWindow => "fw",
            Algorithm::TokenBucket => "tb",
        }
    }
}

/// The most timestamps a sliding-log policy keeps per client.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 10_000;

/// One quota: `limit` units per `period`, counted by an [`Algorithm`].
///
/// ```
/// use std::time::Duration;
/// use tower_redis_layers::rate_limit::Policy;
///
/// // 10 per second with bursts of 20, and 1000 per hour, exactly.
/// let per_second = Policy::gcra(10, Duration::from_secs(1)).burst(20).named("burst");
/// let per_hour = Policy::sliding_log(1000, Duration::from_secs(3600)).named("hourly");
/// # drop((per_second, per_hour));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Policy {
    name: Option<String>,
    algorithm: Algorithm,
    limit: u64,
    period: Duration,
    burst: Option<u64>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .field("algorithm", &self.algorithm)
            .field("limit", &self.limit)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .finish()
    }
}

impl Policy {
    fn new(algorithm: Algorithm, limit: u64, period: Duration) -> Self {
        Self {
            name: None,
            algorithm,
            limit,
            period,
            burst: None,
        }
    }

    /// GCRA: `limit` per `period` as a steady rate; bursts up to `limit` (see
    /// [`burst`](Self::burst)). Exact, one integer per client.
    pub fn gcra(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::Gcra, limit, period)
    }

    /// Sliding log: at most `limit` in any `period`. Exact, one timestamp per
    /// admitted unit (limit at most [`MAX_SLIDING_LOG_LIMIT`]).
    pub fn sliding_log(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::SlidingLog, limit, period)
    }

    /// Sliding window counter: the previous window's count weighted by its
    /// overlap. Approximate (assumes even arrivals), three integers per client.
    pub fn sliding_window(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::SlidingWindow, limit, period)
    }

    /// Fixed window: at most `limit` per window aligned to `period`. Exact
    /// per window; up to twice the limit across a window boundary.
    pub fn fixed_window(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::FixedWindow, limit, period)
    }

    /// Token bucket refilled with `limit` tokens per `period`, holding up to
    /// `limit` (see [`burst`](Self::burst)). Exact, two integers per client.
    pub fn token_bucket(limit: u64, period: Duration) -> Self {
        Self::new(Algorithm::TokenBucket, limit, period)
    }

    /// The burst (GCRA) or bucket capacity (token bucket): how many units can
    /// pass at once. Default: `limit`. Other algorithms reject it at build time.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The policy's name in headers and store keys (`[A-Za-z0-9_.-]`, at most
    /// 64). Default: `{limit}-per-{period}s`, e.g. `10-per-1s`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The policy's name.
    pub fn name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => {
                let p = self.period.as_secs_f64();
                format!("{}-per-{}s", self.limit, p)
            }
        }
    }

    /// How requests are counted.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Units per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period (window) of the quota.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most units one request may ever cost under this policy.
    pub fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.limit)
    }

    pub(crate) fn compile(&self) -> Result<Compiled, ConfigError> {
        let name = self.name();
        let bad = |why: String| Err(ConfigError::new(format!("policy {name:?}: {why}")));
        crate::error::check_name("policy name", &name)?;
        if self.limit == 0 {
            return bad("the limit must be at least 1".into());
        }
        let period_us = self.period.as_micros();
        if !(1_000..=366 * 86_400 * 1_000_000).contains(&period_us) {
            return bad("the period must be between 1 ms and 366 days".into());
        }
        let period_us = period_us as u64;
        if self.limit > period_us {
            return bad("more than one unit per microsecond cannot be counted".into());
        }
        if self.burst.is_some()
            && !matches!(self.algorithm, Algorithm::Gcra | Algorithm::TokenBucket)
        {
            return bad("burst applies only to GCRA and token bucket".into());
        }
        let capacity = self.capacity();
        if capacity == 0 || capacity > 1_000_000_000 {
            return bad("the burst must be between 1 and 10^9".into());
        }
        if self.algorithm == Algorithm::SlidingLog && self.limit > MAX_SLIDING_LOG_LIMIT {
            return bad(format!(
                "a sliding log keeps one entry per unit: limit at most {MAX_SLIDING_LOG_LIMIT}; use sliding_window or gcra"
            ));
        }
        // Both homes compute `capacity × interval` (a GCRA or bucket horizon)
        // in µs: keep it within what Lua's doubles hold exactly.
        let interval_us = period_us / self.limit;
        if u128::from(capacity) * u128::from(interval_us.max(1)) > 1 << 52 {
            return bad(
                "burst × (period / limit) is over 142 years: lower the burst or the period".into(),
            );
        }
        Ok(Compiled {
            key_suffix: format!("{name}:{}", self.algorithm.tag()),
            name,
            algorithm: self.algorithm,
            limit: self.limit,
            capacity,
            period_us,
            interval_us,
        })
    }
}

/// A validated policy in the integer form both stores compute with.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) name: String,
    /// `{name}:{algorithm}`: the last part of the policy's store key.
    pub(crate) key_suffix: String,
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: u64,
    /// Most units at once: burst (GCRA, token bucket) or limit.
    pub(crate) capacity: u64,
    pub(crate) period_us: u64,
    /// Emission interval: one unit every `interval_us` (GCRA, token bucket).
    pub(crate) interval_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_and_validation() {
        let p = Policy::gcra(10, Duration::from_secs(1));
        assert_eq!(p.name(), "10-per-1s");
        let c = p.compile().unwrap();
        assert_eq!((c.capacity, c.interval_us), (10, 100_000));
        assert!(Policy::gcra(0, Duration::from_secs(1)).compile().is_err());
        assert!(Policy::fixed_window(1, Duration::from_secs(1))
            .burst(3)
            .compile()
            .is_err());
        assert!(Policy::gcra(1, Duration::from_secs(1))
            .named("a b")
            .compile()
            .is_err());
        assert!(
            Policy::sliding_log(MAX_SLIDING_LOG_LIMIT + 1, Duration::from_secs(1))
                .compile()
                .is_err()
        );
        assert!(Policy::gcra(1, Duration::from_micros(10))
            .compile()
            .is_err());
        let year = Duration::from_secs(365 * 86_400);
        assert!(
            Policy::gcra(1, year)
                .burst(1_000_000_000)
                .compile()
                .is_err(),
            "a horizon past what the stores count exactly"
        );
        assert!(Policy::gcra(1_000, year).burst(100_000).compile().is_ok());
    }
}
