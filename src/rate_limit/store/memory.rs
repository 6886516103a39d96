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
        // Every policy's key in one buffer: a known client's state is
        // looked up and written in place, a key is copied out only when new.
        let keys = Keys::of(q);
        let cost = match &q.ask {
            Ask::Check => q.cost,
            Ask::Lease { want } => {
                // As many units as every policy has, up to `want`; at least
                // the request's cost, or a plain denial of that cost.
                let grant = q
                    .policies
                    .iter()
                    .zip(keys.iter())
                    .map(|(p, k)| available(p, map.get_mut(k, now).map(|s| &*s), now))
                    .fold(*want, u64::min);
                grant.max(q.cost)
            }
            Ask::Refund { unused, marks } => {
                for ((p, k), &m) in q.policies.iter().zip(keys.iter()).zip(marks.iter()) {
                    let s = map.get_mut(k, now).map(|s| &*s);
                    if let Some((next, expires_in)) = refund(p, s, *unused, m, now) {
                        map.set(k, next, now + expires_in.max(1), now);
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
            .zip(keys.iter())
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
            for (peek, key) in peeks.into_iter().zip(keys.iter()) {
                let expires = now + peek.expires_in().max(1);
                if let Some(next) = peek.next {
                    map.set(key, next, expires, now);
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

/// The keys of a question's policies, `scope \0 policy \0 client` each
/// (the Redis key's parts, unambiguous), in one buffer.
struct Keys {
    buf: Vec<u8>,
    /// Where each key but the last ends in `buf` (none for one policy, the
    /// common case: no allocation).
    ends: Vec<usize>,
}

impl Keys {
    fn of(q: &Question) -> Self {
        let client = q.key.as_bytes();
        let fixed = q.scope.len() + client.len() + 2;
        let len = q.policies.iter().map(|p| fixed + p.key_suffix.len()).sum();
        let mut keys = Self {
            buf: Vec::with_capacity(len),
            ends: Vec::new(),
        };
        for (i, p) in q.policies.iter().enumerate() {
            if i > 0 {
                keys.ends.push(keys.buf.len());
            }
            keys.buf.extend_from_slice(q.scope.as_bytes());
            keys.buf.push(0);
            keys.buf.extend_from_slice(p.key_suffix.as_bytes());
            keys.buf.push(0);
            keys.buf.extend_from_slice(client);
        }
        keys
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let ends = self
            .ends
            .iter()
            .copied()
            .chain(std::iter::once(self.buf.len()));
        starts.zip(ends).map(|(s, e)| &self.buf[s..e])
    }
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
