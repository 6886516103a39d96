//! The in-process store: the embedded default. Bounded: expired state is
//! swept as the maps grow, so memory follows the live keys, not the history.

use std::any::{Any, TypeId};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// State kept in this process: the embedded default of every layer.
///
/// A single-instance service can use it for real; examples and unit tests run
/// with no Redis. It makes the same decisions as [`RedisStore`](crate::RedisStore)
/// (the conformance tests run every behaviour against both), but instances do
/// not share it. Cheap to clone: clones share the state.
///
/// Time comes from `tokio::time`, so tests can pause and advance it.
///
/// Bounded: cached responses take at most
/// [`cache_capacity`](MemoryStoreBuilder::cache_capacity) bytes (64 MiB by
/// default; the least recently used are evicted first), and expired state
/// is swept as maps grow.
///
/// ```
/// use tower_redis_layers::MemoryStore;
///
/// let store = MemoryStore::new();
/// let same_state = store.clone();
/// let small = MemoryStore::builder().cache_capacity(8 << 20).build();
/// # drop((same_state, small));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub(crate) inner: Arc<MemoryInner>,
}

/// The store knows no layer: each layer registers the type of its state
/// and gets one shared instance of it per store, resolved once when the
/// layer is built, so the request path pays no lookup.
type States = HashMap<TypeId, Arc<dyn Any + Send + Sync>>;

#[derive(Debug)]
pub(crate) struct MemoryInner {
    clock: Clock,
    states: Mutex<States>,
    cache_capacity: usize,
}

impl Default for MemoryInner {
    fn default() -> Self {
        MemoryStoreBuilder::default().inner()
    }
}

/// Builds a [`MemoryStore`] with bounds other than the defaults.
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    cache_capacity: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            cache_capacity: 64 << 20,
        }
    }
}

impl MemoryStoreBuilder {
    /// Bytes of cached responses (bodies, fields and keys) the store holds
    /// at most (default 64 MiB); past it the least recently used entries
    /// are evicted. 0 keeps nothing.
    pub fn cache_capacity(mut self, bytes: usize) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(self.inner()),
        }
    }

    fn inner(self) -> MemoryInner {
        MemoryInner {
            clock: Clock::new(),
            states: Mutex::default(),
            cache_capacity: self.cache_capacity,
        }
    }
}

impl MemoryStore {
    /// An empty store with the default bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts building a store with other bounds.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// Bytes of cached responses this store holds at most.
    pub(crate) fn cache_capacity(&self) -> usize {
        self.inner.cache_capacity
    }

    /// Microseconds since the Unix epoch, advancing with `tokio::time` (so a
    /// paused test clock pauses it), aligned to wall-clock time like Redis's `TIME`.
    pub(crate) fn now_us(&self) -> u64 {
        self.inner.clock.now_us()
    }

    /// The state of type `T` in this store: created on first use, then the
    /// same instance for every caller (every layer built on this store or
    /// its clones).
    pub(crate) fn state<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut states = lock(&self.inner.states);
        let any = states
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        drop(states);
        any.downcast::<T>()
            .unwrap_or_else(|_| unreachable!("the entry of TypeId T holds a T"))
    }
}

#[derive(Debug)]
struct Clock {
    base: Instant,
    base_unix_us: u64,
}

impl Clock {
    fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Self {
            base: Instant::now(),
            base_unix_us: unix,
        }
    }

    fn now_us(&self) -> u64 {
        self.base_unix_us + self.base.elapsed().as_micros() as u64
    }
}

/// Locks a mutex, recovering the data if a panic poisoned it: every update
/// under these locks leaves the map consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A map whose entries carry an expiry (µs since the epoch). Expired entries
/// read as absent and are swept once the map has doubled since the last sweep.
///
/// Bounded: past `cap` live entries, an insert evicts the entry closest to
/// its expiry among a few sampled ones (as Redis's `volatile-ttl` does), in
/// O(1); `evicted` counts them.
#[derive(Debug)]
pub(crate) struct ExpiringMap<K, V> {
    map: HashMap<K, (V, u64)>,
    sweep_at: usize,
    cap: usize,
    evicted: u64,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self::with_cap(usize::MAX)
    }
}

/// Entries sampled per eviction.
const EVICTION_SAMPLES: usize = 8;

impl<K, V> ExpiringMap<K, V> {
    /// A map holding at most `cap` entries.
    pub(crate) fn with_cap(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: 1024,
            cap: cap.max(1),
            evicted: 0,
        }
    }

    /// Entries evicted to stay within the cap so far.
    #[allow(dead_code)]
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }
}

impl<K: Hash + Eq, V> ExpiringMap<K, V> {
    /// The live value of `key` at `now`.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q, now: u64) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get_mut(key) {
            Some((v, exp)) if *exp > now => Some(v),
            _ => None,
        }
    }

    /// Replaces the entry of `key` in place, or inserts a copy of `key`:
    /// no key is allocated for an entry that is there.
    pub(crate) fn set<Q>(&mut self, key: &Q, value: V, expires_at: u64, now: u64)
    where
        K: Borrow<Q> + Clone,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        match self.map.get_mut(key) {
            Some(slot) => *slot = (value, expires_at),
            None => self.insert(key.to_owned(), value, expires_at, now),
        }
    }

    /// Inserts or replaces `key`, live until `expires_at`.
    pub(crate) fn insert(&mut self, key: K, value: V, expires_at: u64, now: u64)
    where
        K: Clone,
    {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.evict_one(now);
        }
        self.map.insert(key, (value, expires_at));
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (_, exp)| *exp > now);
            self.sweep_at = (self.map.len() * 2).max(1024);
        }
    }

    fn evict_one(&mut self, now: u64)
    where
        K: Clone,
    {
        let victim = self
            .map
            .iter()
            .take(EVICTION_SAMPLES)
            .min_by_key(|(_, (_, exp))| *exp)
            .map(|(k, (_, exp))| (k.clone(), *exp));
        if let Some((k, exp)) = victim {
            self.map.remove(&k);
            if exp > now {
                self.evicted += 1;
            }
        }
    }

    /// Removes `key`, returning its value if it was live.
    #[allow(dead_code)]
    pub(crate) fn remove(&mut self, key: &K, now: u64) -> Option<V> {
        match self.map.remove(key) {
            Some((v, exp)) if exp > now => Some(v),
            _ => None,
        }
    }

    /// Number of entries held, live or not yet swept.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops the expired entries, then, while more than `target` remain,
    /// those that `rank` puts lowest (ties in no particular order). One
    /// pass over the map: callers evict well below their cap, so the cost
    /// spreads over the inserts in between.
    pub(crate) fn evict_to<R: Ord>(&mut self, target: usize, now: u64, rank: impl Fn(&V) -> R)
    where
        K: Clone,
    {
        self.map.retain(|_, (_, exp)| *exp > now);
        let Some(excess) = self.map.len().checked_sub(target).filter(|n| *n > 0) else {
            return;
        };
        let mut ranked: Vec<(R, K)> = self
            .map
            .iter()
            .map(|(k, (v, _))| (rank(v), k.clone()))
            .collect();
        ranked.select_nth_unstable_by(excess - 1, |a, b| a.0.cmp(&b.0));
        for (_, k) in ranked.drain(..excess) {
            self.map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_one_instance_per_type_and_store() {
        let store = MemoryStore::new();
        let a = store.state::<Mutex<Vec<u8>>>();
        lock(&a).push(1);
        let b = store.clone().state::<Mutex<Vec<u8>>>();
        assert!(Arc::ptr_eq(&a, &b), "clones share the state");
        assert_eq!(*lock(&b), vec![1]);
        let other = store.state::<Mutex<Vec<u16>>>();
        assert!(lock(&other).is_empty(), "another type, another state");
        let fresh = MemoryStore::new().state::<Mutex<Vec<u8>>>();
        assert!(lock(&fresh).is_empty(), "another store, another state");
    }

    #[test]
    fn expired_entries_read_as_absent_and_are_swept() {
        let mut m = ExpiringMap::default();
        for i in 0..1023u32 {
            m.insert(i, i, 10, 0);
        }
        assert_eq!(m.get_mut(&5, 5).copied(), Some(5));
        assert_eq!(m.get_mut(&5, 10), None, "expired at its deadline");
        // The 1024th insert at a later time sweeps the expired ones.
        m.insert(5000, 1, 100, 50);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_capped_map_never_holds_more_than_its_cap() {
        let mut m = ExpiringMap::with_cap(100);
        for i in 0..1000u32 {
            m.insert(i, i, 1_000 + u64::from(i), 0);
            assert!(m.len() <= 100);
        }
        assert_eq!(m.len(), 100);
        assert_eq!(m.evicted(), 900);
        assert_eq!(m.get_mut(&999, 0).copied(), Some(999), "the newest stays");
    }

    #[test]
    fn eviction_drops_the_expired_then_the_lowest_ranked() {
        let mut m = ExpiringMap::default();
        for i in 0..10u32 {
            m.insert(i, i, if i == 9 { 5 } else { 100 }, 0);
        }
        m.evict_to(6, 10, |v| *v);
        assert_eq!(m.len(), 6);
        assert!(
            (0..3).all(|i| m.get_mut(&i, 10).is_none()),
            "the lowest went"
        );
        assert!((3..9).all(|i| m.get_mut(&i, 10).is_some()));
        m.evict_to(6, 10, |v| *v);
        assert_eq!(m.len(), 6, "nothing over the target: nothing evicted");
    }
}
