//! The cache's store boundary: look a slot up (taking the fill lock when the
//! entry is missing or stale), write an entry, release a lock, purge a URL.
//! The decisions around it (freshness, keys, the codec) live outside the
//! stores, so both homes ([`memory`] in process, [`redis`] one script per
//! step) decide alike.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::entry::Entry;
use super::key::Slot;
use super::l1::Listener;
use crate::error::StoreError;

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// A store that can hold cached responses: [`MemoryStore`](crate::MemoryStore)
/// and [`RedisStore`](crate::RedisStore). Sealed: the two implementations
/// must make the same decisions, which the crate's conformance tests prove.
pub trait CacheStore: Send + Sync + 'static + crate::store::sealed::Sealed {
    /// This store's home of cache entries, resolved once when a layer is built.
    #[doc(hidden)]
    fn cache_home(&self) -> Arc<dyn CacheHome>;
}

crate::store::any_store!(CacheStore, cache_home -> Arc<dyn CacheHome>);

impl<T: CacheStore + ?Sized> CacheStore for Arc<T> {
    fn cache_home(&self) -> Arc<dyn CacheHome> {
        (**self).cache_home()
    }
}

/// Where a layer's entries live: resolved from its store at `build()`.
#[doc(hidden)]
#[allow(unreachable_pub)]
pub trait CacheHome: Send + Sync + std::fmt::Debug {
    /// Reads a slot, taking its fill lock when asked and the entry is
    /// missing or stale.
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>>;
    /// Writes an entry, releasing the writer's lock; `false` when the URL
    /// was purged since the writer's lookup (or the fill is too old), and
    /// nothing was written.
    fn write(&self, w: Write) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Releases the lock; `pass_ms > 0` also marks the slot hit-for-miss.
    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>>;
    /// Drops every variant of a URL and advances its generation, so that
    /// no fill that looked up before lands; the number of entries dropped.
    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// Marks every variant of a URL stale (kept for revalidation) and
    /// advances its generation; the number of variants marked.
    fn soft_purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>>;
    /// Records a URL under its tags, unless one was purged at or after the
    /// fill's lookup: then `false`, and the fill writes nothing.
    fn tag(&self, t: Tagging) -> BoxFuture<'static, Result<bool, StoreError>>;
    /// Starts the purge of `tag`: records it, so that no fill that looked
    /// up before can tag itself with it, and returns the URLs recorded
    /// under it, to purge next. They stay recorded until their entries
    /// would have expired, so a retry after a lost reply finds them again.
    fn tag_urls(&self, tag: &str) -> BoxFuture<'static, Result<Vec<Arc<str>>, StoreError>>;
    /// Purges (or, `soft`, marks stale) `urls`, in batches; the number of
    /// entries, or the URLs whose batch failed.
    fn purge_many(
        &self,
        urls: &[Arc<str>],
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, Unpurged>>;
    /// The live variants of a URL stored with the strong `ETag` `etag`
    /// (RFC 9111 §4.3.4: a `304` freshens those its validator selects); a
    /// store may return more, the caller checks.
    fn variants(&self, url: &str, etag: &[u8]) -> BoxFuture<'static, Result<Variants, StoreError>>;
    /// Starts delivering the fleet's invalidations to `listener`; `false`
    /// when this home cannot (then no in-process tier is kept).
    fn listen(&self, listener: Listener) -> bool;
    /// Lookups are answered in process at once: a hit needs no single-flight
    /// (collapsing only pays where a lookup is a round trip).
    fn is_local(&self) -> bool {
        false
    }
    /// A lookup that takes no lock, answered at once with the entry kept
    /// decoded (a hit parses nothing); `None` where entries are only
    /// bytes (then [`lookup`](Self::lookup)).
    fn peek(&self, _slot: &Slot) -> Option<Peeked> {
        None
    }
}

/// What an in-process home holds for a slot, its entry decoded.
#[doc(hidden)]
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Peeked {
    /// The store's clock, ms since the epoch.
    pub(crate) now_ms: u64,
    /// As [`Found::spec`].
    pub(crate) spec: Arc<str>,
    /// `None` too for an entry that does not decode (a miss).
    pub(crate) entry: Option<Arc<Entry>>,
    pub(crate) gen: u64,
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
    /// The URL's generation: advanced by every purge (0: never purged
    /// within [`FILL_MAX_MS`]). A fill writes only under the one it saw.
    pub(crate) gen: u64,
}

/// A purge of many URLs that did not all land.
#[doc(hidden)]
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Unpurged {
    /// The first failure.
    pub(crate) error: StoreError,
    /// The URLs whose purge may not have landed.
    pub(crate) urls: Vec<Arc<str>>,
}

/// The live variants of a URL, as the store holds them.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
#[allow(unreachable_pub)]
pub struct Variants {
    /// The store's clock, ms since the epoch.
    pub(crate) now_ms: u64,
    /// The spec the URL's variants are keyed on (`None`: nothing stored).
    pub(crate) spec: Option<Arc<str>>,
    /// The URL's generation, as in [`Found::gen`].
    pub(crate) gen: u64,
    /// Each variant and its entry's bytes.
    pub(crate) entries: Vec<(Arc<str>, Bytes)>,
}

/// A URL to record under its tags before its entry is written.
#[doc(hidden)]
#[derive(Debug, Clone)]
#[allow(unreachable_pub)]
pub struct Tagging {
    pub(crate) url: Arc<str>,
    /// The tags' store names.
    pub(crate) tags: Vec<Arc<str>>,
    /// How long the entry may live.
    pub(crate) keep_ms: u64,
    /// The store time of the fill's lookup.
    pub(crate) seen_ms: u64,
}

/// A fill whose lookup is older than this is not stored: the generation
/// of a purged URL is kept this long, so no older fill can slip past it.
pub(crate) const FILL_MAX_MS: u64 = 10 * 60 * 1000;

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
    /// The URL's generation at the writer's lookup, and that lookup's store time.
    pub(crate) gen: u64,
    pub(crate) seen_ms: u64,
    /// The entry's strong `ETag`, if it has one (to find the variants a
    /// `304` freshens).
    pub(crate) etag: Option<Bytes>,
    /// The writer's in-process tier (0: none), so it keeps its own copy.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) writer: u64,
}
