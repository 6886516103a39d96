//! What the rate limiter decided, for the application (a response extension)
//! and for the rejection builder.

use std::sync::Arc;
use std::time::Duration;

use super::store::{Answer, PolicyOutcome};

/// The rate limiter's decision on one request, inserted into the response's
/// extensions (and given to a custom rejection builder).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RateLimitDecision {
    /// Whether the quota admitted the request. In shadow mode a request can be
    /// passed on although this is `false`.
    pub allowed: bool,
    /// Where the decision came from.
    pub source: DecisionSource,
    /// Each policy's state after the decision (empty when no policy was asked).
    pub policies: Vec<PolicyDecision>,
}

/// Where a [`RateLimitDecision`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecisionSource {
    /// The store decided.
    Store,
    /// A denial remembered in process until its reset: no store call.
    Remembered,
    /// Admitted in process from the client's lease of its quota
    /// ([`lease`](super::RateLimitLayerBuilder::lease)): no store call.
    Lease,
    /// The store failed; the request was let through (fail-open).
    FailOpen,
    /// The store failed; the request was refused (fail-closed, 503).
    FailClosed,
    /// The store failed; the in-process fallback limiter decided.
    LocalFallback,
    /// The request had no client key and the layer lets such requests through.
    NoKey,
    /// The request costs more than a policy can ever admit.
    CostTooHigh,
}

/// One policy's state after a decision.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PolicyDecision {
    /// The policy's name.
    pub name: Arc<str>,
    /// Units per window.
    pub limit: u64,
    /// The policy's window.
    pub window: Duration,
    /// Units left now.
    pub remaining: u64,
    /// Time until the quota is whole again.
    pub reset: Duration,
    /// When this policy denied the request: time until it could pass.
    pub retry_after: Option<Duration>,
}

/// The static half of a [`PolicyDecision`], built once per layer.
#[derive(Debug, Clone)]
pub(crate) struct PolicyMeta {
    pub(crate) name: Arc<str>,
    pub(crate) limit: u64,
    pub(crate) window: Duration,
}

impl RateLimitDecision {
    pub(crate) fn from_answer(
        meta: &[PolicyMeta],
        answer: &Answer,
        source: DecisionSource,
    ) -> Self {
        Self {
            allowed: answer.allowed,
            source,
            policies: meta
                .iter()
                .zip(&answer.policies)
                .map(|(m, o)| PolicyDecision::new(m, o))
                .collect(),
        }
    }

    pub(crate) fn without_policies(allowed: bool, source: DecisionSource) -> Self {
        Self {
            allowed,
            source,
            policies: Vec::new(),
        }
    }

    /// How long the client should wait before retrying: the longest wait of
    /// the policies that denied the request. `None` when it was admitted, or
    /// when waiting can never help (its cost exceeds a policy's capacity).
    pub fn retry_after(&self) -> Option<Duration> {
        self.policies.iter().filter_map(|p| p.retry_after).max()
    }
}

impl PolicyDecision {
    fn new(m: &PolicyMeta, o: &PolicyOutcome) -> Self {
        Self {
            name: m.name.clone(),
            limit: m.limit,
            window: m.window,
            remaining: o.remaining,
            reset: Duration::from_micros(o.reset_us),
            retry_after: o.retry_after_us.map(Duration::from_micros),
        }
    }
}
