//! The homes of the layers' shared state: [`MemoryStore`] (in process, the
//! embedded default) and [`RedisStore`] (shared by every instance).
//!
//! Each layer talks to a small trait of its own (`RateLimitStore`, ...);
//! both stores implement all of them and make the same decisions.

mod any;
#[cfg(feature = "redis")]
pub(crate) mod batch;
mod breaker;
#[cfg(feature = "redis")]
pub(crate) mod conn;
#[cfg(feature = "redis")]
pub(crate) mod lane;
pub(crate) mod lru;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "redis")]
pub(crate) mod slots;

pub(crate) use any::any_store;
pub use any::AnyStore;
pub use breaker::BreakerConfig;
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

/// The stores the layers' store traits accept: the traits are sealed, since
/// both homes must make the same decisions (the conformance tests prove it).
pub(crate) mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::MemoryStore {}
    impl Sealed for super::AnyStore {}
    #[cfg(feature = "redis")]
    impl Sealed for crate::RedisStore {}
    impl<T: Sealed + ?Sized> Sealed for std::sync::Arc<T> {}
}
