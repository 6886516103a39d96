//! Tower middleware that keeps its state in Redis, so that every instance of
//! a service shares it:
//!
//! | layer | what it does |
//! |---|---|
//! | [`RateLimitLayer`](rate_limit::RateLimitLayer) | one quota per client across the fleet: 429 with `Retry-After` and `RateLimit` fields (gRPC: `RESOURCE_EXHAUSTED`) |
//! | [`IdempotencyLayer`](idempotency::IdempotencyLayer) | a retried `POST` with the same `Idempotency-Key` runs the handler once, fleet-wide, and the retry gets the original response |
//! | [`ResponseCacheLayer`](cache::ResponseCacheLayer) | cache-aside for GET responses with RFC 9111 semantics: one origin call per key across the fleet, invalidation on writes, `get_or_load` for application values |
//!
//! Each layer wraps any `tower::Service<http::Request<B>>` (axum, tonic,
//! hyper) and keeps its state in a store: [`MemoryStore`] (in process, the
//! embedded default, no Redis needed) or [`RedisStore`] (shared by every
//! instance). Rejections and store failures are answered with responses,
//! never service errors, so no `HandleErrorLayer` is needed.
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `redis` | yes | [`RedisStore`] (redis-rs `ConnectionManager`) |
//!
//! With no features the crate builds with the memory store alone.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! let store = MemoryStore::new(); // or RedisStore::open("redis://127.0.0.1").await?
//! let limit = RateLimitLayer::builder(store)
//!     .policy(Policy::gcra(100, Duration::from_secs(60)))
//!     .build()?;
//! # drop(limit);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
// Without Redis, the store plumbing it shares (breaker, errors) is unused.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[macro_use]
mod macros;

#[doc(hidden)]
pub mod bench;
mod body;
pub mod cache;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod idempotency;
pub mod key;
mod problem;
pub mod rate_limit;
mod store;

pub use body::ResponseBody;
pub use error::{ConfigError, StoreError, StoreErrorKind};
pub use store::{BreakerConfig, MemoryStore};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
