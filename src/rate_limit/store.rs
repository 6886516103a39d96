//! The rate limiter's store boundary: one question (a client, a cost, the
//! layer's policies), answered by either home of the algorithms
//! ([`memory`] in process, [`redis`] in one script call).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::error::StoreError;
use crate::key::ClientKey;

use super::policy::Compiled;

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// A store that can decide rate limits: [`MemoryStore`](crate::MemoryStore)
/// and [`RedisStore`](crate::RedisStore). Sealed: the two implementations
/// must make the same decisions, which the crate's conformance tests prove.
pub trait RateLimitStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    /// This store's home of rate-limit state, resolved once when a layer is built.
    #[doc(hidden)]
    fn rate_limit_home(&self) -> Arc<dyn RateLimitHome>;
}

/// Where a layer's decisions are made: resolved from its store at `build()`.
#[doc(hidden)]
#[allow(unreachable_pub)]
pub trait RateLimitHome: Send + Sync + std::fmt::Debug {
    /// Decides one question.
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>>;

    /// The same for every home of one store's counters (its clones too).
    fn counters(&self) -> usize;
}

crate::store::any_store!(RateLimitStore, rate_limit_home -> Arc<dyn RateLimitHome>);

impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    fn rate_limit_home(&self) -> Arc<dyn RateLimitHome> {
        (**self).rate_limit_home()
    }
}

/// One rate-limit question.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Question {
    pub(crate) scope: Arc<str>,
    pub(crate) key: ClientKey,
    pub(crate) cost: u64,
    pub(crate) policies: Arc<[Compiled]>,
    pub(crate) ask: Ask,
}

/// What a [`Question`] asks of the store.
#[derive(Debug, Clone)]
pub(crate) enum Ask {
    /// Admit `cost` units, or nothing.
    Check,
    /// Lease up to `want` units (at least `cost`): an admission of as many
    /// as every policy allows now, all or nothing (see `algorithm::lease`).
    Lease { want: u64 },
    /// Give back `unused` units of a lease that left `marks` (one per policy).
    Refund { unused: u64, marks: Arc<[u64]> },
}

/// A store's answer: whether the request passed, and each policy's state.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Answer {
    pub(crate) allowed: bool,
    pub(crate) policies: Vec<PolicyOutcome>,
    /// A lease taken: its units (the request's cost included) and marks.
    pub(crate) lease: Option<Granted>,
    /// Decided in process from a lease, not by the store.
    pub(crate) local: bool,
}

/// The units of a lease and what giving them back needs (per policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) units: u64,
    pub(crate) marks: Arc<[u64]>,
}

/// One policy's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyOutcome {
    pub(crate) remaining: u64,
    pub(crate) reset_us: u64,
    /// Set on the policies that denied the request.
    pub(crate) retry_after_us: Option<u64>,
}
