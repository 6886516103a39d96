//! The in-process store: the embedded default. Bounded: expired state is
//! swept as the maps grow, so memory follows the live keys, not the history.

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
/// ```
/// use tower_redis_layers::MemoryStore;
///
/// let store = MemoryStore::new();
/// let same_state = store.clone();
/// # drop(same_state);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub(crate) inner: Arc<MemoryInner>,
}

#[derive(Debug)]
pub(crate) struct MemoryInner {
    clock: Clock,
    pub(crate) rate_limit: Mutex<ExpiringMap<Vec<u8>, crate::rate_limit::MemoryState>>,
    pub(crate) idempotency:
        Mutex<ExpiringMap<crate::idempotency::RecordKey, crate::idempotency::MemoryRecord>>,
    pub(crate) cache: Mutex<crate::cache::MemoryState>,
}

impl Default for MemoryInner {
    fn default() -> Self {
        Self {
            clock: Clock::new(),
            rate_limit: Mutex::default(),
            idempotency: Mutex::default(),
            cache: Mutex::default(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Microseconds since the Unix epoch, advancing with `tokio::time` (so a
    /// paused test clock pauses it), aligned to wall-clock time like Redis's `TIME`.
    pub(crate) fn now_us(&self) -> u64 {
        self.inner.clock.now_us()
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
#[derive(Debug)]
pub(crate) struct ExpiringMap<K, V> {
    map: HashMap<K, (V, u64)>,
    sweep_at: usize,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

impl<K: Hash + Eq, V> ExpiringMap<K, V> {
    /// The live value of `key` at `now`.
    pub(crate) fn get_mut(&mut self, key: &K, now: u64) -> Option<&mut V> {
        match self.map.get_mut(key) {
            Some((v, exp)) if *exp > now => Some(v),
            _ => None,
        }
    }

    /// Inserts or replaces `key`, live until `expires_at`.
    pub(crate) fn insert(&mut self, key: K, value: V, expires_at: u64, now: u64) {
        self.map.insert(key, (value, expires_at));
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, (_, exp)| *exp > now);
            self.sweep_at = (self.map.len() * 2).max(1024);
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
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
