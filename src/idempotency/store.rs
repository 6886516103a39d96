//! The idempotency store boundary: reserve, complete, release and renew one
//! record, each one atomic step in either home.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::fingerprint::{Fingerprint, RecordKey, Token};
use crate::error::StoreError;
use crate::store::memory::lock;
use crate::store::MemoryStore;

/// A store that can keep idempotency records: [`MemoryStore`] and
/// [`RedisStore`](crate::RedisStore). Sealed: the two implementations must
/// make the same decisions, which the crate's conformance tests prove.
pub trait IdempotencyStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    /// Reserves the record for a first execution, or reports its state.
    #[doc(hidden)]
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>>;

    /// Stores the response while `token` holds the lease; `false` if it does not.
    #[doc(hidden)]
    fn complete(
        &self,
        key: &RecordKey,
        token: &Token,
        record: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;

    /// Deletes the reservation while `token` holds it.
    #[doc(hidden)]
    fn release(
        &self,
        key: &RecordKey,
        token: &Token,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;

    /// Extends the lease while `token` holds it.
    #[doc(hidden)]
    fn renew(
        &self,
        key: &RecordKey,
        token: &Token,
        lease: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>>;
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>> {
        (**self).reserve(r)
    }
    fn complete(
        &self,
        key: &RecordKey,
        token: &Token,
        record: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        (**self).complete(key, token, record, ttl)
    }
    fn release(
        &self,
        key: &RecordKey,
        token: &Token,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        (**self).release(key, token)
    }
    fn renew(
        &self,
        key: &RecordKey,
        token: &Token,
        lease: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        (**self).renew(key, token, lease)
    }
}

/// One reservation attempt.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Reserve {
    pub(crate) key: RecordKey,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) token: Token,
    pub(crate) lease: Duration,
}

/// The state a reservation attempt found.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub enum Reservation {
    /// Absent: now in progress under the attempt's token.
    Reserved,
    /// Another request holds it; its lease ends in `lease_left`.
    InProgress { lease_left: Duration },
    /// A request with another fingerprint made it.
    Mismatch,
    /// Completed: the encoded response.
    Completed(Bytes),
}

/// Every record in process (a temporary home until the store split).
#[derive(Debug, Default)]
struct MemoryRecords(std::sync::Mutex<crate::store::memory::ExpiringMap<RecordKey, MemoryRecord>>);

/// One record in process.
#[derive(Debug)]
pub(crate) enum MemoryRecord {
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

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl MemoryStore {
    fn idem_reserve(&self, r: &Reserve) -> Reservation {
        let now = self.now_us();
        let records = self.state::<MemoryRecords>();
        let mut map = lock(&records.0);
        match map.get_mut(&r.key, now) {
            None => {
                let expires = now + micros(r.lease);
                let rec = MemoryRecord::InProgress {
                    token: r.token.clone(),
                    fingerprint: r.fingerprint,
                    expires,
                };
                map.insert(r.key.clone(), rec, expires, now);
                Reservation::Reserved
            }
            Some(MemoryRecord::InProgress {
                fingerprint,
                expires,
                ..
            }) => {
                if *fingerprint != r.fingerprint {
                    return Reservation::Mismatch;
                }
                Reservation::InProgress {
                    lease_left: Duration::from_micros(expires.saturating_sub(now)),
                }
            }
            Some(MemoryRecord::Completed {
                fingerprint,
                record,
            }) => {
                if *fingerprint != r.fingerprint {
                    return Reservation::Mismatch;
                }
                Reservation::Completed(record.clone())
            }
        }
    }

    /// Applies `f` to the in-progress record held by `token`; `false` if none.
    fn idem_with_lease(
        &self,
        key: &RecordKey,
        token: &Token,
        f: impl FnOnce(Fingerprint, u64) -> Option<(MemoryRecord, u64)>,
    ) -> bool {
        let now = self.now_us();
        let records = self.state::<MemoryRecords>();
        let mut map = lock(&records.0);
        let fingerprint = match map.get_mut(key, now) {
            Some(MemoryRecord::InProgress {
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

// The memory store acts when called, not when polled: a release from a
// dropped future takes effect at once, with or without a runtime.
impl IdempotencyStore for MemoryStore {
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>> {
        ready(self.idem_reserve(r))
    }

    fn complete(
        &self,
        key: &RecordKey,
        token: &Token,
        record: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        ready(self.idem_with_lease(key, token, |fingerprint, now| {
            let rec = MemoryRecord::Completed {
                fingerprint,
                record,
            };
            Some((rec, now + micros(ttl)))
        }))
    }

    fn release(
        &self,
        key: &RecordKey,
        token: &Token,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        ready(self.idem_with_lease(key, token, |_, _| None))
    }

    fn renew(
        &self,
        key: &RecordKey,
        token: &Token,
        lease: Duration,
    ) -> BoxFuture<'static, Result<bool, StoreError>> {
        let token2 = token.clone();
        ready(self.idem_with_lease(key, token, move |fingerprint, now| {
            let expires = now + micros(lease);
            let rec = MemoryRecord::InProgress {
                token: token2,
                fingerprint,
                expires,
            };
            Some((rec, expires))
        }))
    }
}
