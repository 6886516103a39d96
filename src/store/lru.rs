//! A map bounded in bytes: each entry carries a charge (its size) and an
//! expiry; past the capacity the least recently used entries go first. The
//! recency is approximated the CLOCK way (a "used" bit per entry and a
//! hand sweeping a ring), so a read costs no reordering.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
struct Node<K, V> {
    key: K,
    value: V,
    charge: usize,
    /// µs since the epoch.
    expires: u64,
    used: bool,
}

#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    map: HashMap<K, usize>,
    ring: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    capacity: usize,
    evictions: u64,
}

impl<K, V> Default for Lru<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            ring: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            capacity: 0,
            evictions: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn set_capacity(&mut self, bytes: usize) {
        self.capacity = bytes;
    }

    /// The sum of the charges held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries evicted to stay within the capacity (expired ones not counted).
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The live value of `key` at `now`, marked as used.
    pub(crate) fn get(&mut self, key: &K, now: u64) -> Option<&V> {
        let i = *self.map.get(key)?;
        if self.ring[i].as_ref().is_some_and(|n| n.expires <= now) {
            self.take(i);
            return None;
        }
        let node = self.ring[i].as_mut()?;
        node.used = true;
        Some(&node.value)
    }

    /// Inserts or replaces `key`. Returns the keys evicted to make room;
    /// a value larger than the whole capacity is not kept (nor the old one).
    pub(crate) fn insert(
        &mut self,
        key: K,
        value: V,
        charge: usize,
        expires: u64,
        now: u64,
    ) -> Vec<K> {
        self.remove(&key);
        if charge > self.capacity {
            return Vec::new();
        }
        let mut evicted = Vec::new();
        while self.bytes + charge > self.capacity {
            match self.evict(now) {
                Some((k, expired)) => {
                    if !expired {
                        self.evictions += 1;
                    }
                    evicted.push(k);
                }
                None => break,
            }
        }
        let node = Node {
            key: key.clone(),
            value,
            charge,
            expires,
            used: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.ring[i] = Some(node);
                i
            }
            None => {
                self.ring.push(Some(node));
                self.ring.len() - 1
            }
        };
        self.map.insert(key, i);
        self.bytes += charge;
        evicted
    }

    /// Removes `key`, returning its value (live or not).
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let i = *self.map.get(key)?;
        self.take(i)
    }

    fn take(&mut self, i: usize) -> Option<V> {
        let node = self.ring[i].take()?;
        self.map.remove(&node.key);
        self.free.push(i);
        self.bytes -= node.charge;
        Some(node.value)
    }

    /// Advances the hand to the next entry to drop: an expired one, or one
    /// not used since the hand last passed. `(key, expired)`.
    fn evict(&mut self, now: u64) -> Option<(K, bool)> {
        // Two turns at most: the first clears every used bit.
        for _ in 0..2 * self.ring.len() {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(node) = self.ring[i].as_mut() else {
                continue;
            };
            let expired = node.expires <= now;
            if node.used && !expired {
                node.used = false;
                continue;
            }
            let key = node.key.clone();
            self.take(i);
            return Some((key, expired));
        }
        None
    }

    /// Every entry held, live or not: what the map really holds.
    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.ring.iter().flatten().map(|n| &n.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_evicts_the_least_recently_used() {
        let mut m = Lru::default();
        m.set_capacity(300);
        for k in 0..3 {
            assert!(m.insert(k, k, 100, 1_000, 0).is_empty());
        }
        assert_eq!(m.get(&0, 1), Some(&0), "0 is used");
        let evicted = m.insert(3, 3, 100, 1_000, 1);
        assert_eq!(evicted, vec![1], "the oldest unused goes");
        assert_eq!(m.bytes(), 300);
        assert_eq!(m.evictions(), 1);
        assert!(m.get(&0, 1).is_some() && m.get(&1, 1).is_none());
        // An expired entry reads as absent; the hand drops it without
        // counting an eviction.
        m.insert(4, 4, 100, 5, 1);
        assert!(m.get(&4, 10).is_none());
        let before = m.evictions();
        m.insert(7, 7, 100, 5, 10);
        for k in 8..11 {
            m.insert(k, k, 100, 1_000, 20);
        }
        assert!(m.evictions() - before <= 2, "the expired one was free");
        assert!(m.bytes() <= 300);
        // Too large for the whole map: not kept.
        assert!(m.insert(6, 6, 301, 1_000, 10).is_empty());
        assert!(m.get(&6, 10).is_none());
        assert_eq!(m.remove(&10), Some(10));
        assert_eq!(m.bytes(), m.values().count() * 100);
    }

    #[test]
    fn a_long_run_never_exceeds_the_capacity() {
        let mut m = Lru::default();
        m.set_capacity(10_000);
        for k in 0..10_000u32 {
            let charge = 50 + (k as usize * 37) % 400;
            m.insert(k, charge, charge, u64::MAX, 0);
            if k % 3 == 0 {
                m.get(&(k / 2), 0);
            }
            let held: usize = m.values().sum();
            assert!(held <= 10_000, "{held}");
            assert_eq!(held, m.bytes());
        }
        assert!(m.evictions() > 9_000);
    }
}
