//! The in-process home of cache entries: the same index / entry / lock /
//! generation model as Redis, in one state per [`MemoryStore`] shared by
//! every cache layer built on it, bounded by the store's cache capacity
//! (least recently used entries evicted first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::{
    CacheHome, CacheStore, Found, LockState, Lookup, Peeked, Tagging, Unpurged, Variants, Write,
    FILL_MAX_MS,
};
use crate::cache::key::Slot;
use crate::cache::l1::Listener;
use crate::error::StoreError;
use crate::store::lru::Lru;
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;
use crate::telemetry::{Count, Level};

mod stored;
mod tags;

use stored::Stored;

type SlotKey = (Arc<str>, Arc<str>);

/// What an entry costs besides its bytes and key: the map and index slots.
const OVERHEAD: usize = 128;

/// Every cache layer's state in one store.
#[derive(Debug, Default)]
struct Entries(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    index: ExpiringMap<Arc<str>, Index>,
    entries: Lru<SlotKey, Stored>,
    locks: ExpiringMap<SlotKey, u64>,
    passes: ExpiringMap<SlotKey, ()>,
    gens: ExpiringMap<Arc<str>, u64>,
    tags: ExpiringMap<Arc<str>, tags::Tagged>,
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
    metrics: Gauges,
}

/// The memory tier's size and evictions, for the metrics.
#[derive(Debug)]
struct Gauges {
    bytes: Level,
    count: Level,
    evictions: Count,
}

impl Gauges {
    fn new() -> Self {
        Self {
            bytes: Level::new("trl_memory_bytes", &[("layer", "response cache")]),
            count: Level::new("trl_memory_entries", &[("layer", "response cache")]),
            evictions: Count::new("trl_cache_evictions_total", &[("tier", "memory")]),
        }
    }
}

impl CacheStore for MemoryStore {
    fn cache_home(&self) -> Arc<dyn CacheHome> {
        let entries: Arc<Entries> = self.state();
        lock(&entries.0).entries.set_capacity(self.cache_capacity());
        Arc::new(MemoryHome {
            store: self.clone(),
            entries,
            metrics: Gauges::new(),
        })
    }
}

fn key_of(s: &Slot) -> SlotKey {
    (s.url.clone(), s.variant.clone())
}

impl State {
    fn gen(&mut self, url: &Arc<str>, now_us: u64) -> u64 {
        self.gens.get_mut(url, now_us).map_or(0, |g| *g)
    }

    fn lookup(&mut self, q: &Lookup, now_us: u64) -> Found {
        let now_ms = now_us / 1000;
        let s = &q.slot;
        let gen = self.gen(&s.url, now_us);
        let mut fresh_until = 0;
        if let Some(idx) = self.index.get_mut(&s.url, now_us) {
            if idx.spec != s.spec {
                return Found {
                    now_ms,
                    spec: idx.spec.clone(),
                    entry: None,
                    lock: LockState::NotTried,
                    gen,
                };
            }
            fresh_until = idx.variants.get(&s.variant).map_or(0, |v| v.0);
        }
        let key = key_of(s);
        let entry = self.entries.get(&key, now_us).map(|e| e.raw.clone());
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
            gen,
        }
    }

    fn write(&mut self, w: Write, stored: Stored, now_us: u64) -> bool {
        let now_ms = now_us / 1000;
        let s = &w.slot;
        if self.gen(&s.url, now_us) != w.gen || now_ms.saturating_sub(w.seen_ms) > FILL_MAX_MS {
            // Purged since the writer looked: its response may predate the purge.
            if let Some(token) = w.token {
                self.release(s, token, now_us);
            }
            return false;
        }
        let mut idx = match self.index.remove(&s.url, now_us) {
            Some(idx) if idx.spec == s.spec => idx,
            Some(old) => {
                // The URL's Vary changed: the old variants are keyed on other headers.
                for v in old.variants.keys() {
                    self.entries.remove(&(s.url.clone(), v.clone()));
                }
                Index::new(&s.spec)
            }
            None => Index::new(&s.spec),
        };
        let expires = now_ms + w.keep_ms;
        let charge = stored.size() + s.url.len() + s.variant.len() + OVERHEAD;
        let evicted = self
            .entries
            .insert(key_of(s), stored, charge, expires * 1000, now_us);
        for (url, variant) in evicted {
            if url == s.url {
                idx.variants.remove(&variant);
            } else {
                self.forget(&url, &variant, now_us);
            }
        }
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
                self.entries.remove(&(s.url.clone(), v));
            }
        }
        let idx_expires = idx.variants.values().map(|v| v.1).max().unwrap_or(expires);
        self.index
            .insert(s.url.clone(), idx, idx_expires * 1000, now_us);
        if let Some(token) = w.token {
            self.release(s, token, now_us);
        }
        true
    }

    fn variants(&mut self, url: &str, now_us: u64) -> Variants {
        let url: Arc<str> = url.into();
        let gen = self.gen(&url, now_us);
        let (spec, names) = match self.index.get_mut(&url, now_us) {
            Some(idx) => (
                Some(idx.spec.clone()),
                idx.variants.keys().cloned().collect(),
            ),
            None => (None, Vec::new()),
        };
        let entries = names
            .into_iter()
            .filter_map(|v| {
                let e = self.entries.get(&(url.clone(), v.clone()), now_us)?;
                Some((v, e.raw.clone()))
            })
            .collect();
        Variants {
            now_ms: now_us / 1000,
            spec,
            gen,
            entries,
        }
    }

    /// Drops an evicted variant from its URL's index.
    fn forget(&mut self, url: &Arc<str>, variant: &Arc<str>, now_us: u64) {
        if let Some(idx) = self.index.get_mut(url, now_us) {
            idx.variants.remove(variant);
            if idx.variants.is_empty() {
                self.index.remove(url, now_us);
            }
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

    /// Drops (or, `soft`, marks stale) every variant of `url` and advances
    /// its generation, kept as long as a fill or a marked entry may last.
    fn purge(&mut self, url: &str, now_us: u64, soft: bool) -> u64 {
        let url: Arc<str> = url.into();
        let now_ms = now_us / 1000;
        // Always above the last one, even within one microsecond.
        let gen = now_us.max(self.gen(&url, now_us) + 1);
        let mut keep_ms = now_ms + FILL_MAX_MS;
        let n = if soft {
            let idx = self.index.get_mut(&url, now_us);
            let variants = idx.map(|idx| idx.variants.values_mut());
            let mut n = 0;
            for (fresh_until, expires) in variants.into_iter().flatten() {
                *fresh_until = (*fresh_until).min(now_ms);
                keep_ms = keep_ms.max(*expires);
                n += 1;
            }
            n
        } else {
            match self.index.remove(&url, now_us) {
                Some(idx) => idx
                    .variants
                    .keys()
                    .filter(|v| self.entries.remove(&(url.clone(), (*v).clone())).is_some())
                    .count() as u64,
                None => 0,
            }
        };
        self.gens.insert(url, gen, keep_ms * 1000, now_us);
        n
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

    fn write(&self, w: Write) -> BoxFuture<'static, Result<bool, StoreError>> {
        let m = &self.metrics;
        // Decoded before the lock is taken.
        let stored = Stored::new(w.entry.clone());
        ready(self.with(|st, now| {
            let evicted = st.entries.evictions();
            let written = st.write(w, stored, now);
            m.evictions.add(st.entries.evictions() - evicted);
            m.bytes.set(st.entries.bytes() as f64);
            m.count.set(st.entries.len() as f64);
            written
        }))
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
        ready(self.with(|st, now| st.purge(url, now, false)))
    }

    fn soft_purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        ready(self.with(|st, now| st.purge(url, now, true)))
    }

    fn tag(&self, t: Tagging) -> BoxFuture<'static, Result<bool, StoreError>> {
        ready(self.with(|st, now| st.tag(&t, now)))
    }

    fn tag_urls(&self, tag: &str) -> BoxFuture<'static, Result<Vec<Arc<str>>, StoreError>> {
        ready(self.with(|st, now| st.tag_urls(tag, now)))
    }

    fn purge_many(
        &self,
        urls: &[Arc<str>],
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, Unpurged>> {
        let n = self.with(|st, now| urls.iter().map(|u| st.purge(u, now, soft)).sum());
        Box::pin(std::future::ready(Ok(n)))
    }

    /// Every live variant: entries are in process, the caller checks their `ETag`.
    fn variants(
        &self,
        url: &str,
        _etag: &[u8],
    ) -> BoxFuture<'static, Result<Variants, StoreError>> {
        ready(self.with(|st, now| st.variants(url, now)))
    }

    /// In process already: an in-process tier would add nothing.
    fn listen(&self, _listener: Listener) -> bool {
        false
    }

    fn is_local(&self) -> bool {
        true
    }

    fn peek(&self, slot: &Slot) -> Option<Peeked> {
        Some(self.with(|st, now| st.peek(slot, now)))
    }
}

#[cfg(test)]
mod tests;
