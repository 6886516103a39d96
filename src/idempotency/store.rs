//! The idempotency store boundary: reserve, complete, release and renew one
//! record, each one atomic step in either home ([`memory`] in process,
//! [`redis`] one Lua script per step).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::fingerprint::{Fingerprint, RecordKey, Token};
use crate::error::StoreError;

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// A store that can keep idempotency records: [`MemoryStore`](crate::MemoryStore)
/// and [`RedisStore`](crate::RedisStore). Sealed: the two implementations
/// must make the same decisions, which the crate's conformance tests prove.
pub trait IdempotencyStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    /// This store's home of idempotency records, resolved once when a layer is built.
    #[doc(hidden)]
    fn idempotency_home(&self) -> Arc<dyn IdempotencyHome>;
}

crate::store::any_store!(IdempotencyStore, idempotency_home -> Arc<dyn IdempotencyHome>);

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn idempotency_home(&self) -> Arc<dyn IdempotencyHome> {
        (**self).idempotency_home()
    }
}

/// Where a layer's records live: resolved from its store at `build()`.
#[doc(hidden)]
#[allow(unreachable_pub)]
pub trait IdempotencyHome: Send + Sync + std::fmt::Debug {
    /// Reserves the record for a first execution, or reports its state.
    fn reserve(&self, r: &Reserve) -> BoxFuture<'static, Result<Reservation, StoreError>>;

    /// Stores the response for `ttl` while `hold` holds the lease, then
    /// (Redis) waits for `replicas` to have it.
    fn complete(
        &self,
        hold: &Hold,
        record: Bytes,
        ttl: Duration,
        replicas: Option<Replicas>,
    ) -> BoxFuture<'static, Result<Written, StoreError>>;

    /// Deletes the reservation while `hold` holds it.
    fn release(&self, hold: &Hold) -> Flag;

    /// Extends the lease while `hold` holds it.
    fn renew(&self, hold: &Hold, lease: Duration) -> Flag;
}

/// What a completion did.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub enum Written {
    /// Stored (and, if asked, confirmed on the replicas).
    Stored,
    /// Stored on the master, but `WAIT` did not confirm the replicas asked
    /// for: `acked` of them did (`None`: `WAIT` itself failed).
    Unconfirmed { acked: Option<u32> },
    /// Not stored: the lease was lost (expired, perhaps taken).
    Lost,
}

/// How many replicas must have a record before its response goes out
/// (Redis `WAIT n timeout`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Replicas {
    pub(crate) n: u32,
    pub(crate) timeout: Duration,
}

/// A step on a held reservation: `true` done, `false` the lease was lost.
pub(crate) type Flag = BoxFuture<'static, Result<bool, StoreError>>;

/// A reservation: its record and the lease token that holds it (fencing).
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Hold {
    pub(crate) key: RecordKey,
    pub(crate) token: Token,
    /// The request's fingerprint (what the record's response answers).
    pub(crate) fingerprint: Fingerprint,
}

/// One reservation attempt.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Reserve {
    pub(crate) hold: Hold,
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
