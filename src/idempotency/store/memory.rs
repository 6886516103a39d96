//! The in-process home of the idempotency records: one map per
//! [`MemoryStore`], shared by every idempotency layer built on it. It acts
//! when called, not when polled: a release from a dropped future takes
//! effect at once, with or without a runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{Flag, Hold, IdempotencyHome, IdempotencyStore, Reservation, Reserve};
use crate::error::StoreError;
use crate::idempotency::fingerprint::{Fingerprint, RecordKey, Token};
use crate::store::memory::{lock, ExpiringMap};
use crate::store::MemoryStore;

/// Every record of one store.
#[derive(Debug, Default)]
struct Records(Mutex<ExpiringMap<RecordKey, Record>>);

/// One record in process.
#[derive(Debug)]
enum Record {
    InProgress {
        token: Token,
        fingerprint: Fingerprint,
        /// When the lease ends (µs since the epoch), as the map's expiry.
        expires: u64,
    },
    Completed {
        fingerprint: Fingerprint,
        record: Bytes,
    },
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
    fn decide(&self, r: &Reserve) -> Reservation {
        let now = self.store.now_us();
        let mut map = lock(&self.records.0);
        match map.get_mut(&r.hold.key, now) {
            None => {
                let expires = now + micros(r.lease);
                let rec = Record::InProgress {
                    token: r.hold.token.clone(),
                    fingerprint: r.fingerprint,
                    expires,
                };
                map.insert(r.hold.key.clone(), rec, expires, now);
                Reservation::Reserved
            }
            Some(
                Record::InProgress { fingerprint, .. } | Record::Completed { fingerprint, .. },
            ) if *fingerprint != r.fingerprint => Reservation::Mismatch,
            Some(Record::InProgress { expires, .. }) => Reservation::InProgress {
                lease_left: Duration::from_micros(expires.saturating_sub(now)),
            },
            Some(Record::Completed { record, .. }) => Reservation::Completed(record.clone()),
        }
    }

    /// Replaces the in-progress record `hold` holds with what `f` makes
    /// of it (nothing: removed); `false` if `hold` does not hold it.
    fn with_lease(
        &self,
        hold: &Hold,
        f: impl FnOnce(Fingerprint, u64) -> Option<(Record, u64)>,
    ) -> bool {
        let (key, token) = (&hold.key, &hold.token);
        let now = self.store.now_us();
        let mut map = lock(&self.records.0);
        let fingerprint = match map.get_mut(key, now) {
            Some(Record::InProgress {
                token: t,
                fingerprint,
                ..
            }) if t == token => *fingerprint,
            _ => return false,
        };
        map.remove(key, now);
        if let Some((rec, expires)) = f(fingerprint, now) {
            map.insert(key.clone(), rec, expires, now);
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

    fn complete(&self, hold: &Hold, record: Bytes, ttl: Duration) -> Flag {
        ready(self.with_lease(hold, |fingerprint, now| {
            let rec = Record::Completed {
                fingerprint,
                record,
            };
            Some((rec, now + micros(ttl)))
        }))
    }

    fn release(&self, hold: &Hold) -> Flag {
        ready(self.with_lease(hold, |_, _| None))
    }

    fn renew(&self, hold: &Hold, lease: Duration) -> Flag {
        let token = hold.token.clone();
        ready(self.with_lease(hold, move |fingerprint, now| {
            let expires = now + micros(lease);
            let rec = Record::InProgress {
                token,
                fingerprint,
                expires,
            };
            Some((rec, expires))
        }))
    }
}
