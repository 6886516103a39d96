//! The cache's store boundary: look a slot up (taking the fill lock when the
//! entry is missing or stale), write an entry, release a lock, purge a URL.
//! The decisions around it (freshness, keys, the codec) live outside the
//! stores, so both homes decide alike.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::key::Slot;
use super::l1::Listener;
use crate::error::StoreError;
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;

/// A store that can hold cached responses: [`MemoryStore`] and
/// [`RedisStore`](crate::RedisStore). Sealed: the two implementations must
/// make the same decisions, which the crate's conformance tests prove.
pub trait CacheStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    #[doc(hidden)]
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>>;
    #[doc(hidden)]
    fn write(&self, w: Write) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Releases the lock; `pass_ms > 0` also marks the slot hit-for-miss.
    #[doc(hidden)]
    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>>;
    #[doc(hidden)]
    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// Starts delivering the fleet's invalidations to `listener`; `false`
    /// when this store cannot (then no in-process tier is kept).
    #[doc(hidden)]
    fn listen(&self, listener: Listener) -> bool;
    /// Lookups are answered in process at once: a hit needs no single-flight
    /// (collapsing only pays where a lookup is a round trip).
    #[doc(hidden)]
    fn is_local(&self) -> bool {
        false
    }
}

impl<T: CacheStore + ?Sized> CacheStore for Arc<T> {
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>> {
        (**self).lookup(q)
    }
    fn write(&self, w: Write) -> BoxFuture<'static, Result<(), StoreError>> {
        (**self).write(w)
    }
    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        (**self).release(slot, token, pass_ms)
    }
    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        (**self).purge(url)
    }
    fn listen(&self, listener: Listener) -> bool {
        (**self).listen(listener)
    }
    fn is_local(&self) -> bool {
        (**self).is_local()
    }
}

/// One lookup: a slot, and the fill lock to take if its entry is missing or stale.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Lookup {
    pub(crate) slot: Slot,
    /// `(token, ttl_ms)` of the lock to take.
    pub(crate) lock: Option<(u64, u64)>,
    /// Take the lock even when the entry is fresh (a forced revalidation).
    pub(crate) force: bool,
}

/// What the store holds for a slot.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Found {
    /// The store's clock, ms since the epoch.
    pub(crate) now_ms: u64,
    /// The spec the URL's variants are keyed on; when it differs from the
    /// slot's, nothing else was read and the caller asks again.
    pub(crate) spec: Arc<str>,
    pub(crate) entry: Option<Bytes>,
    pub(crate) lock: LockState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockState {
    NotTried,
    Acquired,
    Held,
    /// The last response for the slot could not be stored: do not wait.
    HitForMiss,
}

/// One entry to write, releasing the writer's lock.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Write {
    pub(crate) slot: Slot,
    pub(crate) entry: Bytes,
    pub(crate) fresh_until_ms: u64,
    pub(crate) keep_ms: u64,
    pub(crate) token: Option<u64>,
    pub(crate) max_variants: u32,
    /// The writer's in-process tier (0: none), so it keeps its own copy.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) writer: u64,
}

/// In-process cache state: the same index / entry / lock model as Redis.
#[derive(Debug, Default)]
pub(crate) struct MemoryState {
    index: ExpiringMap<Arc<str>, Index>,
    entries: ExpiringMap<(Arc<str>, Arc<str>), Bytes>,
    locks: ExpiringMap<(Arc<str>, Arc<str>), u64>,
    passes: ExpiringMap<(Arc<str>, Arc<str>), ()>,
}

#[derive(Debug)]
struct Index {
    spec: Arc<str>,
    /// variant → (fresh until, expires at), ms.
    variants: HashMap<Arc<str>, (u64, u64)>,
}

impl MemoryStore {
    fn cache_lookup(&self, q: &Lookup) -> Found {
        let now_us = self.now_us();
        let now_ms = now_us / 1000;
        let state = self.state::<std::sync::Mutex<MemoryState>>();
        let mut st = lock(&state);
        let st = &mut *st;
        let s = &q.slot;
        let mut fresh_until = 0;
        if let Some(idx) = st.index.get_mut(&s.url, now_us) {
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
        let key = (s.url.clone(), s.variant.clone());
        let entry = st.entries.get_mut(&key, now_us).cloned();
        let mut lock_state = LockState::NotTried;
        if let Some((token, ttl_ms)) = q.lock {
            let fresh = entry.is_some() && now_ms < fresh_until && !q.force;
            if !fresh {
                lock_state = if st.passes.get_mut(&key, now_us).is_some() {
                    LockState::HitForMiss
                } else if st.locks.get_mut(&key, now_us).is_some() {
                    LockState::Held
                } else {
                    st.locks.insert(key, token, now_us + ttl_ms * 1000, now_us);
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

    fn cache_write(&self, w: Write) {
        let now_us = self.now_us();
        let now_ms = now_us / 1000;
        let state = self.state::<std::sync::Mutex<MemoryState>>();
        let mut st = lock(&state);
        let st = &mut *st;
        let s = &w.slot;
        let mut idx = match st.index.remove(&s.url, now_us) {
            Some(idx) if idx.spec == s.spec => idx,
            Some(old) => {
                // The URL's Vary changed: the old variants are keyed on other headers.
                for v in old.variants.keys() {
                    st.entries.remove(&(s.url.clone(), v.clone()), now_us);
                }
                Index {
                    spec: s.spec.clone(),
                    variants: HashMap::new(),
                }
            }
            None => Index {
                spec: s.spec.clone(),
                variants: HashMap::new(),
            },
        };
        let expires = now_ms + w.keep_ms;
        st.entries.insert(
            (s.url.clone(), s.variant.clone()),
            w.entry,
            expires * 1000,
            now_us,
        );
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
                st.entries.remove(&(s.url.clone(), v), now_us);
            }
        }
        let idx_expires = idx.variants.values().map(|v| v.1).max().unwrap_or(expires);
        st.index
            .insert(s.url.clone(), idx, idx_expires * 1000, now_us);
        if let Some(token) = w.token {
            release(st, s, token, now_us);
        }
    }

    fn cache_purge(&self, url: &str) -> u64 {
        let now_us = self.now_us();
        let state = self.state::<std::sync::Mutex<MemoryState>>();
        let mut st = lock(&state);
        let st = &mut *st;
        let url: Arc<str> = url.into();
        let Some(idx) = st.index.remove(&url, now_us) else {
            return 0;
        };
        idx.variants
            .keys()
            .filter(|v| {
                st.entries
                    .remove(&(url.clone(), (*v).clone()), now_us)
                    .is_some()
            })
            .count() as u64
    }
}

fn release(st: &mut MemoryState, s: &Slot, token: u64, now_us: u64) {
    let key = (s.url.clone(), s.variant.clone());
    if st.locks.get_mut(&key, now_us).is_some_and(|t| *t == token) {
        st.locks.remove(&key, now_us);
    }
}

impl CacheStore for MemoryStore {
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>> {
        Box::pin(std::future::ready(Ok(self.cache_lookup(q))))
    }

    fn write(&self, w: Write) -> BoxFuture<'static, Result<(), StoreError>> {
        self.cache_write(w);
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let now_us = self.now_us();
        let state = self.state::<std::sync::Mutex<MemoryState>>();
        let mut st = lock(&state);
        if pass_ms > 0 {
            let key = (slot.url.clone(), slot.variant.clone());
            st.passes.insert(key, (), now_us + pass_ms * 1000, now_us);
        }
        release(&mut st, slot, token, now_us);
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Ok(self.cache_purge(url))))
    }

    /// In process already: an in-process tier would add nothing.
    fn listen(&self, _listener: Listener) -> bool {
        false
    }

    fn is_local(&self) -> bool {
        true
    }
}
