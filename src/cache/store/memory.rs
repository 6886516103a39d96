//! The in-process home of cache entries: the same index / entry / lock
//! model as Redis, in one map per [`MemoryStore`], shared by every cache
//! layer built on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{CacheHome, CacheStore, Found, LockState, Lookup, Write};
use crate::cache::key::Slot;
use crate::cache::l1::Listener;
use crate::error::StoreError;
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;

type SlotKey = (Arc<str>, Arc<str>);

/// Every cache layer's state in one store.
#[derive(Debug, Default)]
struct Entries(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    index: ExpiringMap<Arc<str>, Index>,
    entries: ExpiringMap<SlotKey, Bytes>,
    locks: ExpiringMap<SlotKey, u64>,
    passes: ExpiringMap<SlotKey, ()>,
}

#[derive(Debug)]
struct Index {
    spec: Arc<str>,
    /// variant → (fresh until, expires at), ms.
    variants: HashMap<Arc<str>, (u64, u64)>,
}

impl Index {
    fn new(spec: &Arc<str>) -> Self {
        Self {
            spec: spec.clone(),
            variants: HashMap::new(),
        }
    }
}

/// The cache home of one [`MemoryStore`].
#[derive(Debug)]
pub(crate) struct MemoryHome {
    store: MemoryStore,
    entries: Arc<Entries>,
}

impl CacheStore for MemoryStore {
    fn cache_home(&self) -> Arc<dyn CacheHome> {
        Arc::new(MemoryHome {
            store: self.clone(),
            entries: self.state(),
        })
    }
}

fn key_of(s: &Slot) -> SlotKey {
    (s.url.clone(), s.variant.clone())
}

impl State {
    fn lookup(&mut self, q: &Lookup, now_us: u64) -> Found {
        let now_ms = now_us / 1000;
        let s = &q.slot;
        let mut fresh_until = 0;
        if let Some(idx) = self.index.get_mut(&s.url, now_us) {
            if idx.spec != s.spec {
                return Found {
                    now_ms,
                    spec: idx.spec.clone(),
                    entry: None,
                    lock: LockState::NotTried,
                };
            }
            fresh_until = idx.variants.get(&s.variant).map_or(0, |v| v.0);
        }
        let key = key_of(s);
        let entry = self.entries.get_mut(&key, now_us).cloned();
        let mut lock_state = LockState::NotTried;
        if let Some((token, ttl_ms)) = q.lock {
            let fresh = entry.is_some() && now_ms < fresh_until && !q.force;
            if !fresh {
                lock_state = if self.passes.get_mut(&key, now_us).is_some() {
                    LockState::HitForMiss
                } else if self.locks.get_mut(&key, now_us).is_some() {
                    LockState::Held
                } else {
                    self.locks
                        .insert(key, token, now_us + ttl_ms * 1000, now_us);
                    LockState::Acquired
                };
            }
        }
        Found {
            now_ms,
            spec: s.spec.clone(),
            entry,
            lock: lock_state,
        }
    }

    fn write(&mut self, w: Write, now_us: u64) {
        let now_ms = now_us / 1000;
        let s = &w.slot;
        let mut idx = match self.index.remove(&s.url, now_us) {
            Some(idx) if idx.spec == s.spec => idx,
            Some(old) => {
                // The URL's Vary changed: the old variants are keyed on other headers.
                for v in old.variants.keys() {
                    self.entries.remove(&(s.url.clone(), v.clone()), now_us);
                }
                Index::new(&s.spec)
            }
            None => Index::new(&s.spec),
        };
        let expires = now_ms + w.keep_ms;
        self.entries
            .insert(key_of(s), w.entry, expires * 1000, now_us);
        idx.variants
            .insert(s.variant.clone(), (w.fresh_until_ms, expires));
        idx.variants.retain(|_, (_, exp)| *exp > now_ms);
        let over = idx.variants.len().saturating_sub(w.max_variants as usize);
        if over > 0 {
            let mut by_expiry: Vec<(u64, Arc<str>)> = idx
                .variants
                .iter()
                .filter(|(v, _)| **v != s.variant)
                .map(|(v, (_, exp))| (*exp, v.clone()))
                .collect();
            by_expiry.sort_unstable();
            for (_, v) in by_expiry.into_iter().take(over) {
                idx.variants.remove(&v);
                self.entries.remove(&(s.url.clone(), v), now_us);
            }
        }
        let idx_expires = idx.variants.values().map(|v| v.1).max().unwrap_or(expires);
        self.index
            .insert(s.url.clone(), idx, idx_expires * 1000, now_us);
        if let Some(token) = w.token {
            self.release(s, token, now_us);
        }
    }

    fn release(&mut self, s: &Slot, token: u64, now_us: u64) {
        let key = key_of(s);
        if self
            .locks
            .get_mut(&key, now_us)
            .is_some_and(|t| *t == token)
        {
            self.locks.remove(&key, now_us);
        }
    }

    fn purge(&mut self, url: &str, now_us: u64) -> u64 {
        let url: Arc<str> = url.into();
        let Some(idx) = self.index.remove(&url, now_us) else {
            return 0;
        };
        idx.variants
            .keys()
            .filter(|v| {
                self.entries
                    .remove(&(url.clone(), (*v).clone()), now_us)
                    .is_some()
            })
            .count() as u64
    }
}

impl MemoryHome {
    fn with<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> T {
        let now_us = self.store.now_us();
        f(&mut lock(&self.entries.0), now_us)
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl CacheHome for MemoryHome {
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>> {
        ready(self.with(|st, now| st.lookup(q, now)))
    }

    fn write(&self, w: Write) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(|st, now| st.write(w, now));
        ready(())
    }

    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.with(|st, now| {
            if pass_ms > 0 {
                st.passes
                    .insert(key_of(slot), (), now + pass_ms * 1000, now);
            }
            st.release(slot, token, now);
        });
        ready(())
    }

    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        ready(self.with(|st, now| st.purge(url, now)))
    }

    /// In process already: an in-process tier would add nothing.
    fn listen(&self, _listener: Listener) -> bool {
        false
    }

    fn is_local(&self) -> bool {
        true
    }
}
