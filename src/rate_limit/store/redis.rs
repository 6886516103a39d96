//! The Redis home of the algorithms: every decision is one call of
//! `scripts/check.lua`, batched with the decisions in flight.

use std::sync::{Arc, LazyLock};

use futures_util::future::BoxFuture;

use super::{Answer, PolicyOutcome, Question, RateLimitHome, RateLimitStore};
use crate::error::StoreError;
use crate::store::batch::{Batcher, Item};
use crate::store::lane::Lane;
use crate::RedisStore;

static SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("../scripts/check.lua")));

/// The rate-limit home of one [`RedisStore`]: the layer's own lane (own
/// breakers) and the store's batcher of the check script.
#[derive(Debug)]
pub(crate) struct RedisHome {
    prefix: String,
    lane: Lane,
    batcher: Arc<Batcher>,
}

impl RateLimitStore for RedisStore {
    fn rate_limit_home(&self) -> Arc<dyn RateLimitHome> {
        Arc::new(RedisHome {
            prefix: self.prefix().to_owned(),
            lane: {
                let lane = self.lane("rate limit", false);
                lane.preload(&[&*SCRIPT]);
                lane
            },
            batcher: self.batcher(&SCRIPT),
        })
    }
}

impl RedisHome {
    /// `{prefix}:rl:{scope:client}:{policy}:{algorithm}`: the hash tag
    /// keeps one client's policies in one cluster slot.
    fn keys(&self, q: &Question) -> Vec<String> {
        let digest = q.key.digest();
        q.policies
            .iter()
            .map(|p| {
                format!(
                    "{}:rl:{{{}:{}}}:{}",
                    self.prefix, q.scope, digest, p.key_suffix
                )
            })
            .collect()
    }
}

impl RateLimitHome for RedisHome {
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
        let keys = self.keys(q);
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
        let lane = self.lane.clone();
        let batcher = self.batcher.clone();
        Box::pin(async move {
            let values = batcher.submit(&lane, item).await?;
            parse(&values, n)
        })
    }

    fn counters(&self) -> usize {
        // One batcher of the check script per store, shared by its clones.
        Arc::as_ptr(&self.batcher) as usize
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
