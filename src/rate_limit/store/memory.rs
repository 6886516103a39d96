//! The in-process home of the algorithms: one map of policy states per
//! [`MemoryStore`], shared by every rate-limit layer built on it.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::{Answer, Ask, Granted, Question, RateLimitHome, RateLimitStore};
use crate::error::StoreError;
use crate::rate_limit::algorithm::{available, mark, peek, refund, AlgState};
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;
use crate::telemetry::Level;

/// Every client's policy states in one store, keyed by scope, policy and
/// client: at most [`MAX_STATES`]. Past it the state closest to its expiry
/// (the least used quota) is forgotten: that client starts on a whole
/// quota again, as after its window ends.
#[derive(Debug)]
struct States(Mutex<ExpiringMap<Vec<u8>, AlgState>>);

/// Most (client, policy) states one memory store keeps.
pub(crate) const MAX_STATES: usize = 1 << 20;

impl Default for States {
    fn default() -> Self {
        Self(Mutex::new(ExpiringMap::with_cap(MAX_STATES)))
    }
}

/// The rate-limit home of one [`MemoryStore`].
#[derive(Debug)]
pub(crate) struct MemoryHome {
    store: MemoryStore,
    states: Arc<States>,
    entries: Level,
}

impl MemoryHome {
    pub(crate) fn new(store: &MemoryStore) -> Self {
        Self {
            store: store.clone(),
            states: store.state(),
            entries: Level::new("trl_memory_entries", &[("layer", "rate limit")]),
        }
    }

    /// Decides `q` at once: all policies pass, or none is charged.
    pub(crate) fn decide(&self, q: &Question) -> Answer {
        let now = self.store.now_us();
        let mut map = lock(&self.states.0);
        let keys: Vec<Vec<u8>> = q.policies.iter().map(|p| key(q, &p.key_suffix)).collect();
        let cost = match &q.ask {
            Ask::Check => q.cost,
            Ask::Lease { want } => {
                // As many units as every policy has, up to `want`; at least
                // the request's cost, or a plain denial of that cost.
                let grant = q
                    .policies
                    .iter()
                    .zip(&keys)
                    .map(|(p, k)| available(p, map.get_mut(k, now).map(|s| &*s), now))
                    .fold(*want, u64::min);
                grant.max(q.cost)
            }
            Ask::Refund { unused, marks } => {
                for ((p, k), &m) in q.policies.iter().zip(keys).zip(marks.iter()) {
                    let s = map.get_mut(&k, now).map(|s| &*s);
                    if let Some((next, expires_in)) = refund(p, s, *unused, m, now) {
                        map.insert(k, next, now + expires_in.max(1), now);
                    }
                }
                return Answer {
                    allowed: true,
                    policies: Vec::new(),
                    lease: None,
                    local: false,
                };
            }
        };
        let peeks: Vec<_> = q
            .policies
            .iter()
            .zip(&keys)
            .map(|(p, k)| peek(p, map.get_mut(k, now).map(|s| &*s), cost, now))
            .collect();
        let allowed = peeks.iter().all(|p| p.allowed);
        let policies = peeks.iter().map(|p| p.outcome(allowed, cost)).collect();
        let lease = match (&q.ask, allowed) {
            (Ask::Lease { .. }, true) => Some(Granted {
                units: cost,
                marks: q
                    .policies
                    .iter()
                    .zip(&peeks)
                    .map(|(p, pk)| pk.next.as_ref().map_or(0, |s| mark(p, s)))
                    .collect(),
            }),
            _ => None,
        };
        if allowed && cost > 0 {
            for (peek, key) in peeks.into_iter().zip(keys) {
                let expires = now + peek.expires_in().max(1);
                if let Some(next) = peek.next {
                    map.insert(key, next, expires, now);
                }
            }
            self.entries.set(map.len() as f64);
        }
        Answer {
            allowed,
            policies,
            lease,
            local: false,
        }
    }
}

/// `scope \0 policy \0 client`: the Redis key's parts, unambiguous.
fn key(q: &Question, suffix: &str) -> Vec<u8> {
    let client = q.key.as_bytes();
    let mut k = Vec::with_capacity(q.scope.len() + suffix.len() + client.len() + 2);
    k.extend_from_slice(q.scope.as_bytes());
    k.push(0);
    k.extend_from_slice(suffix.as_bytes());
    k.push(0);
    k.extend_from_slice(client);
    k
}

impl RateLimitHome for MemoryHome {
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
        Box::pin(std::future::ready(Ok(self.decide(q))))
    }

    fn counters(&self) -> usize {
        Arc::as_ptr(&self.states) as usize
    }
}

impl RateLimitStore for MemoryStore {
    fn rate_limit_home(&self) -> Arc<dyn RateLimitHome> {
        Arc::new(MemoryHome::new(self))
    }
}
