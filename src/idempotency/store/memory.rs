//! The in-process home of the idempotency records: one map per
//! [`MemoryStore`], shared by every idempotency layer built on it, capped
//! at [`DEFAULT_MAX_MEMORY_RECORDS`] (or [`MemoryStore::max_idempotency_records`]).
//! It acts when called, not when polled: a release from a dropped future
//! takes effect at once, with or without a runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{
    Flag, Hold, IdempotencyHome, IdempotencyStore, Replicas, Reservation, Reserve, Written,
};
use crate::error::StoreError;
use crate::idempotency::fingerprint::{Fingerprint, RecordKey, Token};
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;

/// The most idempotency records a [`MemoryStore`] keeps unless
/// [`MemoryStore::max_idempotency_records`] says otherwise: 100 000
/// (about 100 MB with 1 KiB responses).
pub const DEFAULT_MAX_MEMORY_RECORDS: usize = 100_000;

/// Every record of one store, and its cap.
#[derive(Debug)]
struct Records {
    map: Mutex<Map>,
    max: AtomicUsize,
}

impl Default for Records {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            max: AtomicUsize::new(DEFAULT_MAX_MEMORY_RECORDS),
        }
    }
}

#[derive(Debug, Default)]
struct Map {
    records: ExpiringMap<RecordKey, Record>,
    /// Counts the writes: a record's `seq` says how old it is.
    seq: u64,
}

/// One record in process.
#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    seq: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    InProgress {
        token: Token,
        /// When the lease ends (µs since the epoch), as the map's expiry.
        expires: u64,
    },
    Completed(Bytes),
}

impl MemoryStore {
    /// Caps the idempotency records this store (and every clone of it)
    /// keeps in process; default [`DEFAULT_MAX_MEMORY_RECORDS`], at least 1.
    ///
    /// Past the cap, a write evicts the oldest tenth of the records:
    /// completed ones first (oldest first), then, only if every record is
    /// in progress, the oldest reservations. An evicted completed record is
    /// forgotten: a retry with its key runs the handler again. An evicted
    /// reservation is lost to its holder: its response is not stored, and a
    /// retry meanwhile runs too. Size the cap to the keys retried within the
    /// record TTL, or use a [`RedisStore`](crate::RedisStore) (which keeps
    /// every record for its TTL, subject to Redis's own `maxmemory`).
    pub fn max_idempotency_records(self, max: usize) -> Self {
        self.state::<Records>()
            .max
            .store(max.max(1), Ordering::Relaxed);
        self
    }
}

impl Map {
    /// Writes `rec` under `key`, then evicts down to nine tenths of `max`
    /// if the map grew past it.
    fn put(&mut self, key: RecordKey, mut rec: Record, expires: u64, now: u64, max: usize) {
        self.seq += 1;
        rec.seq = self.seq;
        self.records.insert(key, rec, expires, now);
        if self.records.len() > max {
            let rank = |r: &Record| (matches!(r.state, State::InProgress { .. }), r.seq);
            self.records.evict_to(max - max / 10, now, rank);
        }
    }
}

/// The idempotency home of one [`MemoryStore`].
#[derive(Debug)]
pub(crate) struct MemoryHome {
    store: MemoryStore,
    records: Arc<Records>,
}

impl IdempotencyStore for MemoryStore {
    fn idempotency_home(&self) -> Arc<dyn IdempotencyHome> {
        Arc::new(MemoryHome {
            store: self.clone(),
            records: self.state(),
        })
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl MemoryHome {
    fn max(&self) -> usize {
        self.records.max.load(Ordering::Relaxed)
    }

    fn decide(&self, r: &Reserve) -> Reservation {
        let now = self.store.now_us();
        let mut map = lock(&self.records.map);
        match map.records.get_mut(&r.hold.key, now) {
            None => {
                let expires = now + micros(r.lease);
                let rec = Record {
                    fingerprint: r.hold.fingerprint,
                    seq: 0,
                    state: State::InProgress {
                        token: r.hold.token.clone(),
                        expires,
                    },
                };
                map.put(r.hold.key.clone(), rec, expires, now, self.max());
                Reservation::Reserved
            }
            Some(rec) if rec.fingerprint != r.hold.fingerprint => Reservation::Mismatch,
            Some(Record {
                state: State::InProgress { expires, .. },
                ..
            }) => Reservation::InProgress {
                lease_left: Duration::from_micros(expires.saturating_sub(now)),
            },
            Some(Record {
                state: State::Completed(record),
                ..
            }) => Reservation::Completed(record.clone()),
        }
    }

    /// Replaces the in-progress record `hold` holds with the state `f`
    /// makes of it and its expiry (nothing: removed); `false` if `hold`
    /// does not hold it.
    fn with_lease(&self, hold: &Hold, f: impl FnOnce(u64) -> Option<(State, u64)>) -> bool {
        let now = self.store.now_us();
        let mut map = lock(&self.records.map);
        let fingerprint = match map.records.get_mut(&hold.key, now) {
            Some(Record {
                fingerprint,
                state: State::InProgress { token, .. },
                ..
            }) if *token == hold.token => *fingerprint,
            _ => return false,
        };
        map.records.remove(&hold.key, now);
        if let Some((state, expires)) = f(now) {
            let rec = Record {
                fingerprint,
                seq: 0,
                state,
            };
            map.put(hold.key.clone(), rec, expires, now, self.max());
        }
        true
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(std::future::ready(Ok(v)))
}

impl IdempotencyHome for MemoryHome {
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>> {
        ready(self.decide(r))
    }

    // One process has no replicas: `replicas` is ignored.
    fn complete(
        &self,
        hold: &Hold,
        record: Bytes,
        ttl: Duration,
        _replicas: Option<Replicas>,
    ) -> BoxFuture<'static, Result<Written, StoreError>> {
        let held = self.with_lease(hold, |now| {
            Some((State::Completed(record), now + micros(ttl)))
        });
        ready(if held { Written::Stored } else { Written::Lost })
    }

    fn release(&self, hold: &Hold) -> Flag {
        ready(self.with_lease(hold, |_| None))
    }

    fn renew(&self, hold: &Hold, lease: Duration) -> Flag {
        let token = hold.token.clone();
        ready(self.with_lease(hold, move |now| {
            let expires = now + micros(lease);
            Some((State::InProgress { token, expires }, expires))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(home: &MemoryHome, i: u32) -> (Reservation, Hold) {
        let hold = Hold {
            key: RecordKey(format!("k{i}")),
            token: Token::generate(),
            fingerprint: Fingerprint([0; 32]),
        };
        let r = Reserve {
            hold: hold.clone(),
            lease: Duration::from_secs(10),
        };
        (home.decide(&r), hold)
    }

    fn home(max: usize) -> MemoryHome {
        let store = MemoryStore::new().max_idempotency_records(max);
        MemoryHome {
            records: store.state(),
            store,
        }
    }

    fn len(home: &MemoryHome) -> usize {
        lock(&home.records.map).records.len()
    }

    #[tokio::test]
    async fn ten_times_the_cap_keeps_the_count_within_it() {
        let home = home(100);
        for i in 0..1000 {
            let (r, hold) = reserve(&home, i);
            assert_eq!(r, Reservation::Reserved);
            let written = home.complete(
                &hold,
                Bytes::from_static(b"r"),
                Duration::from_secs(60),
                None,
            );
            assert_eq!(written.await.unwrap(), Written::Stored);
            assert!(len(&home) <= 100, "{} records after {i}", len(&home));
        }
        assert!(len(&home) >= 90, "evicts a tenth at a time, not all");
        // The newest are kept, the oldest forgotten (a retry runs again).
        assert!(matches!(reserve(&home, 999).0, Reservation::Completed(_)));
        assert_eq!(reserve(&home, 0).0, Reservation::Reserved);
    }

    #[tokio::test]
    async fn completed_records_are_evicted_before_reservations() {
        let home = home(10);
        let held: Vec<_> = (0..5).map(|i| reserve(&home, i)).collect();
        for i in 100..130 {
            let (_, hold) = reserve(&home, i);
            let done = home.complete(&hold, Bytes::new(), Duration::from_secs(60), None);
            assert_eq!(done.await.unwrap(), Written::Stored);
        }
        assert!(len(&home) <= 10);
        for (i, (_, hold)) in held.iter().enumerate() {
            assert!(
                matches!(reserve(&home, i as u32).0, Reservation::InProgress { .. }),
                "reservation {i} kept"
            );
            assert!(home.release(hold).await.unwrap());
        }
    }
}
