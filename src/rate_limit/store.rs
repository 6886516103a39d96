//! The rate limiter's store boundary: one question (a client, a cost, the
//! layer's policies), answered by either home of the algorithms.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::algorithm::{peek, AlgState};
use super::policy::Compiled;
use crate::error::StoreError;
use crate::key::ClientKey;
use crate::store::memory::lock;
use crate::store::MemoryStore;

/// A store that can decide rate limits: [`MemoryStore`] and
/// [`RedisStore`](crate::RedisStore). Sealed: the two implementations must
/// make the same decisions, which the crate's conformance tests prove.
pub trait RateLimitStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    #[doc(hidden)]
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>>;
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
}

/// A store's answer: whether the request passed, and each policy's state.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Answer {
    pub(crate) allowed: bool,
    pub(crate) policies: Vec<PolicyOutcome>,
}

/// One policy's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyOutcome {
    pub(crate) remaining: u64,
    pub(crate) reset_us: u64,
    /// Set on the policies that denied the request.
    pub(crate) retry_after_us: Option<u64>,
}

impl<T: RateLimitStore + ?Sized> RateLimitStore for Arc<T> {
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
        (**self).check(q)
    }
}

/// In-process state of one policy for one client.
pub(crate) type MemoryState = AlgState;

impl MemoryStore {
    pub(crate) fn decide(&self, q: &Question) -> Answer {
        let now = self.now_us();
        let mut map = lock(&self.inner.rate_limit);
        let keys: Vec<Vec<u8>> = q
            .policies
            .iter()
            .map(|p| {
                let mut k = Vec::with_capacity(
                    q.scope.len() + p.key_suffix.len() + q.key.as_bytes().len() + 2,
                );
                k.extend_from_slice(q.scope.as_bytes());
                k.push(0);
                k.extend_from_slice(p.key_suffix.as_bytes());
                k.push(0);
                k.extend_from_slice(q.key.as_bytes());
                k
            })
            .collect();
        let peeks: Vec<_> = q
            .policies
            .iter()
            .zip(&keys)
            .map(|(p, k)| peek(p, map.get_mut(k, now).map(|s| &*s), q.cost, now))
            .collect();
        let allowed = peeks.iter().all(|p| p.allowed);
        let policies = peeks.iter().map(|p| p.outcome(allowed, q.cost)).collect();
        if allowed && q.cost > 0 {
            for (peek, key) in peeks.into_iter().zip(keys) {
                let expires = now + peek.expires_in().max(1);
                if let Some(next) = peek.next {
                    map.insert(key, next, expires, now);
                }
            }
        }
        Answer { allowed, policies }
    }
}

impl RateLimitStore for MemoryStore {
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
        let answer = self.decide(q);
        Box::pin(std::future::ready(Ok(answer)))
    }
}

#[cfg(feature = "redis")]
mod redis_home {
    use std::sync::LazyLock;

    use futures_util::future::BoxFuture;

    use super::{Answer, PolicyOutcome, Question, RateLimitStore};
    use crate::error::StoreError;
    use crate::store::batch::Item;
    use crate::RedisStore;

    pub(crate) static SCRIPT: LazyLock<redis::Script> =
        LazyLock::new(|| redis::Script::new(include_str!("scripts/check.lua")));

    impl RedisStore {
        /// `{prefix}:rl:{scope:client}:{policy}:{algorithm}`: the hash tag
        /// keeps one client's policies in one cluster slot.
        pub(crate) fn rate_limit_keys(&self, q: &Question) -> Vec<String> {
            let digest = q.key.digest();
            q.policies
                .iter()
                .map(|p| {
                    format!(
                        "{}:rl:{{{}:{}}}:{}",
                        self.prefix(),
                        q.scope,
                        digest,
                        p.key_suffix
                    )
                })
                .collect()
        }
    }

    impl RateLimitStore for RedisStore {
        fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
            let keys = self.rate_limit_keys(q);
            #[cfg(feature = "cluster")]
            debug_assert!(
                keys.windows(2).all(|w| {
                    use redis::cluster_routing::Slot;
                    Slot::for_key(&w[0]) == Slot::for_key(&w[1])
                }),
                "one client's policy keys must share a hash slot: {keys:?}"
            );
            let mut args = Vec::with_capacity(2 + 5 * q.policies.len());
            args.push(q.cost as i64);
            args.push(q.policies.len() as i64);
            for p in q.policies.iter() {
                args.extend([
                    i64::from(p.algorithm.code()),
                    p.capacity as i64,
                    p.limit as i64,
                    p.period_us as i64,
                    p.interval_us as i64,
                ]);
            }
            let n = q.policies.len();
            let item = Item::new(keys, args, 1 + 3 * n);
            let store = self.clone();
            Box::pin(async move {
                let values = store.rate_limit_batcher().submit(&store, item).await?;
                parse(&values, n)
            })
        }
    }

    fn parse(values: &[i64], n: usize) -> Result<Answer, StoreError> {
        if values.len() != 1 + 3 * n {
            return Err(StoreError::protocol(format!(
                "rate-limit script returned {} values for {n} policies",
                values.len()
            )));
        }
        let policies = values[1..]
            .chunks_exact(3)
            .map(|c| PolicyOutcome {
                remaining: c[0].max(0) as u64,
                reset_us: c[1].max(0) as u64,
                retry_after_us: (c[2] >= 0).then_some(c[2] as u64),
            })
            .collect();
        Ok(Answer {
            allowed: values[0] == 1,
            policies,
        })
    }
}

#[cfg(feature = "redis")]
pub(crate) use redis_home::SCRIPT;
