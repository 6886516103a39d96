//! [`AnyStore`]: a store chosen at run time.

use super::MemoryStore;
#[cfg(feature = "redis")]
use super::RedisStore;

/// Either store, chosen at run time — typically Redis when a URL is
/// configured, else the embedded memory store — usable by all three layers
/// (it implements every layer's store trait).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
/// use tower_redis_layers::{AnyStore, MemoryStore, RedisStore};
///
/// let store: AnyStore = match std::env::var("REDIS_URL") {
///     Ok(url) => RedisStore::open(&url).await?.into(),
///     Err(_) => MemoryStore::new().into(),
/// };
/// let limit = RateLimitLayer::builder(store.clone())
///     .policy(Policy::gcra(100, Duration::from_secs(60)))
///     .build()?;
/// # drop(limit); Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// The in-process store.
    Memory(MemoryStore),
    /// The Redis store (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl From<MemoryStore> for AnyStore {
    fn from(store: MemoryStore) -> Self {
        AnyStore::Memory(store)
    }
}

#[cfg(feature = "redis")]
impl From<RedisStore> for AnyStore {
    fn from(store: RedisStore) -> Self {
        AnyStore::Redis(store)
    }
}

/// Implements a layer's store trait for [`AnyStore`] by asking the store it holds.
macro_rules! any_store {
    ($store:path, $home:ident -> $ret:ty) => {
        impl $store for $crate::store::AnyStore {
            fn $home(&self) -> $ret {
                match self {
                    $crate::store::AnyStore::Memory(s) => s.$home(),
                    #[cfg(feature = "redis")]
                    $crate::store::AnyStore::Redis(s) => s.$home(),
                }
            }
        }
    };
}
pub(crate) use any_store;
