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
//! | `cluster` | no | `RedisStore::cluster_builder` and `RedisStore::from_cluster_connection` (redis-rs `cluster-async`) |
//! | `metrics` | no | counters, histograms and gauges through the `metrics` facade (see [Metrics](#metrics)) |
//! | `axum` | no | [`PeerIp`](key::PeerIp), the default client key, reads axum's `ConnectInfo<SocketAddr>` |
//! | `serde` | no | typed application values in the response cache, as JSON (`CacheHandle::get_or_load_json` and friends) |
//!
//! With no features the crate builds with the memory store alone.
//!
//! # Redis versions
//!
//! Redis 6.2 or later (the scripts use `TIME`, `PSETEX`, `HMGET` and sorted
//! sets; the idempotency layer's `wait_replicas` uses `WAIT`); tested with
//! Redis 7.0, standalone and as a cluster. Every key a script touches is
//! declared in its `KEYS`, so servers and proxies that enforce declared keys
//! accept the scripts too; servers that speak the same Lua scripting
//! (Valkey, KeyDB, Dragonfly) should work.
//!
//! # Metrics
//!
//! With the `metrics` feature every layer reports through the `metrics`
//! facade to whatever recorder the application installs (a Prometheus
//! exporter, say). Install it **before** building the layers: each handle is
//! registered once at `build()`, so a request pays one atomic add per event.
//! Every layer also opens a `debug`-level span per decision (layer, scope,
//! outcome, store latency), and logs breaker transitions and set-up mistakes
//! once, with the fix.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `trl_rate_limit_requests_total` | counter | `scope`, `plan`, `outcome`: allowed, denied, shadow_denied, failed_open, failed_closed, local_allowed, local_denied, remembered_denied, no_key, bad_key, cost_too_high, skipped |
//! | `trl_rate_limit_denials_total` | counter | `scope`, `plan`, `policy`: which policy denied |
//! | `trl_idempotency_requests_total` | counter | `scope`, `outcome`: first_run, first_run_not_stored (5xx, too large: the key was released), replay, conflict (409), mismatch (422), bad_request (400, 413), store_unavailable (503), store_bypassed, passed (not covered) |
//! | `trl_cache_requests_total` | counter | `scope`, `outcome`: hit, hit_l1 (the in-process tier), miss, collapsed (waited for another request's fill), stale (served stale on an origin error), revalidated, bypass, store_error |
//! | `trl_cache_evictions_total` | counter | `tier`: memory (entries the memory store evicted for room) |
//! | `trl_store_call_duration_seconds` | histogram | `layer`, `outcome`: ok, error, timeout |
//! | `trl_store_calls_skipped_total` | counter | `layer`: calls skipped while a breaker was open |
//! | `trl_store_breakers_open` | gauge | `layer`: breakers open now |
//! | `trl_memory_entries` | gauge | `layer`: entries held in process |
//! | `trl_memory_bytes` | gauge | `layer`: bytes held in process (cache) |
//!
//! # Example: all three, in the recommended order
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_redis_layers::cache::ResponseCacheLayer;
//! use tower_redis_layers::idempotency::{IdempotencyLayer, RequestBody};
//! use tower_redis_layers::key::{Header, KeyExtractorExt, PeerIp};
//! use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! let store = MemoryStore::new(); // or RedisStore::open("redis://127.0.0.1").await?
//! let svc = ServiceBuilder::new()
//!     // Outermost: a client over its quota costs nothing else.
//!     .layer(
//!         RateLimitLayer::builder(store.clone())
//!             .policy(Policy::gcra(100, Duration::from_secs(60)))
//!             .key(Header::new("x-api-key").or(PeerIp::new()))
//!             .build()?,
//!     )
//!     // Then idempotency: a replayed POST never reaches the cache or the handler.
//!     .layer(IdempotencyLayer::builder(store.clone()).build()?)
//!     // Innermost: GETs are cached; successful writes invalidate them.
//!     .layer(
//!         ResponseCacheLayer::builder(store)
//!             .default_ttl(Duration::from_secs(30))
//!             .build()?,
//!     )
//!     .service_fn(|_req: http::Request<RequestBody<String>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! # drop(svc);
//! # Ok(()) }
//! ```
//!
//! # Which order, and why
//!
//! Outermost first: **rate limit → idempotency → cache → handler**.
//!
//! - The rate limit goes first so that a client over its quota is answered
//!   before any other work (no body buffering, no record, no lookup), and so
//!   that retries and replays count against the quota, as Stripe counts them.
//!   Put the cache outside the rate limit instead if cache hits should be free.
//! - Idempotency wraps the cache: it acts on POST/PATCH only and the cache
//!   stores GETs only, so they do not compete; a replayed write is answered
//!   from the idempotency record and is never applied again, while a first
//!   execution passing through the cache invalidates the GETs of its URI.
//! - Inside axum's `Router::nest` the layers see the path without the nest
//!   prefix: layers of different nests sharing a store need their own
//!   `scope`.
//!
//! # Layout
//!
//! One folder per layer (`rate_limit/`, `idempotency/`, `cache/`):
//! `layer.rs` (the layer and its builder), `service.rs`, `future.rs` (the
//! response future), `store.rs` (the layer's sealed store trait and the
//! operations it needs from a store), `store/memory.rs` and `store/redis.rs`
//! (those operations on each store) and `scripts/` (the Lua scripts of the
//! Redis side). `store/` holds the two stores, which know no layer:
//! `MemoryStore` keeps one state per layer type, `RedisStore` the connection,
//! deadline, circuit breakers and one batcher per script. `key.rs` extracts
//! client keys; `body.rs` is the response body every layer returns.

#![forbid(unsafe_code)]
// docs.rs (`--cfg docsrs`, nightly): mark items gated by a feature with it.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without Redis, the store plumbing it shares (breaker, errors) is unused.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[macro_use]
mod macros;

#[cfg(feature = "__hooks")]
#[doc(hidden)]
pub mod bench;
mod body;
pub mod cache;
mod decimal;
mod error;
#[cfg(feature = "__hooks")]
#[doc(hidden)]
pub mod fuzz;
pub mod idempotency;
pub mod key;
mod problem;
pub mod rate_limit;
mod store;
mod telemetry;
mod warn;

pub use body::ResponseBody;
pub use error::{ConfigError, StoreError, StoreErrorKind};
/// The redis-rs crate this one is built on, for building a [`RedisStore`]
/// from an application's own connection without a second `redis` dependency.
#[cfg(feature = "redis")]
pub use redis;
pub use store::{AnyStore, BreakerConfig, MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};

// The README's Rust snippets are compiled (and, where they need no Redis
// server, run) as doctests.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
