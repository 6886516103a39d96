//! The responses this instance stored, kept in process until their records
//! expire: a retry that comes back to the instance that ran its request
//! (a client retrying on the same connection, a sticky balancer) is
//! answered without a round trip. A completed record never changes, so the
//! copy answers what Redis would, with one difference: where Redis lost
//! the record (evicted, flushed), this instance still replays it while
//! another would run the request again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::idempotency::fingerprint::{Fingerprint, RecordKey};
use crate::store::lru::Lru;
use crate::store::memory::lock;

/// The kept responses: bounded in bytes, the least recently used out first.
#[derive(Debug)]
pub(crate) struct Replays {
    lru: Mutex<Lru<String, (Fingerprint, Bytes)>>,
    base: Instant,
}

impl Replays {
    /// Bytes kept at most (responses, keys and bookkeeping).
    pub(super) const CAPACITY: usize = 8 << 20;
    /// The largest response kept: one record never pushes out many.
    const LARGEST: usize = Self::CAPACITY / 64;
    /// Bookkeeping charged per record besides its key and response.
    const OVERHEAD: usize = 160;

    pub(super) fn new() -> Self {
        let mut lru = Lru::default();
        lru.set_capacity(Self::CAPACITY);
        Self {
            lru: Mutex::new(lru),
            base: Instant::now(),
        }
    }

    /// µs on this copy's clock (the LRU's expiry is a time past zero).
    fn now(&self) -> u64 {
        self.base.elapsed().as_micros() as u64 + 1
    }

    /// When a record stored now for `ttl` expires, on this copy's clock:
    /// read before the record is stored, so the copy never outlives it.
    pub(super) fn until(&self, ttl: Duration) -> u64 {
        self.now().saturating_add(ttl.as_micros() as u64)
    }

    /// The response stored for `key`, when kept and made for the request
    /// with fingerprint `f` (another request under the key goes to Redis).
    pub(super) fn get(&self, key: &RecordKey, f: &Fingerprint) -> Option<Bytes> {
        let now = self.now();
        match lock(&self.lru).get(&key.0, now) {
            Some((kept, record)) if kept == f => Some(record.clone()),
            _ => None,
        }
    }

    /// Keeps `record`, the response of the request `f` under `key`, until
    /// `until` (see [`until`](Self::until)).
    pub(super) fn keep(&self, key: &RecordKey, f: Fingerprint, record: Bytes, until: u64) {
        if record.len() > Self::LARGEST {
            return;
        }
        let charge = record.len() + key.0.len() + Self::OVERHEAD;
        let now = self.now();
        lock(&self.lru).insert(key.0.clone(), (f, record), charge, until, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_response_answers_its_request_only_until_its_record_expires() {
        let replays = Replays::new();
        let key = RecordKey("k".into());
        let (f, other) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        replays.keep(
            &key,
            f,
            Bytes::from_static(b"rec"),
            replays.until(Duration::from_millis(30)),
        );
        assert_eq!(replays.get(&key, &f), Some(Bytes::from_static(b"rec")));
        assert_eq!(replays.get(&key, &other), None, "another request");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(replays.get(&key, &f), None, "expired with its record");
    }

    #[test]
    fn it_is_bounded_in_bytes_and_keeps_no_large_response() {
        let replays = Replays::new();
        let f = Fingerprint([1; 32]);
        let until = replays.until(Duration::from_secs(60));
        let large = Bytes::from(vec![0u8; Replays::LARGEST + 1]);
        replays.keep(&RecordKey("large".into()), f, large, until);
        assert_eq!(replays.get(&RecordKey("large".into()), &f), None);
        let record = Bytes::from(vec![0u8; 4096]);
        for i in 0..10_000 {
            replays.keep(&RecordKey(format!("k{i}")), f, record.clone(), until);
        }
        let lru = lock(&replays.lru);
        assert!(lru.bytes() <= Replays::CAPACITY, "{}", lru.bytes());
        assert!(lru.len() < 10_000 && lru.len() > 1_000, "{}", lru.len());
        drop(lru);
        assert!(
            replays.get(&RecordKey("k9999".into()), &f).is_some(),
            "the latest kept"
        );
        assert!(
            replays.get(&RecordKey("k0".into()), &f).is_none(),
            "the oldest out"
        );
    }
}
