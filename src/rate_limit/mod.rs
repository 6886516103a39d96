//! A fleet-wide rate limit: every instance of the service shares one quota
//! per client, kept in the store.
//!
//! A request over its quota is answered with `429 Too Many Requests`,
//! `Retry-After`, the `RateLimit-Policy` and `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers and an `application/problem+json`
//! body (type `quota-exceeded`). A gRPC request (`content-type:
//! application/grpc*`) gets HTTP 200 with `grpc-status: 8`
//! (`RESOURCE_EXHAUSTED`) and a `grpc-message`. Admitted responses carry the
//! fields too, and the [`RateLimitDecision`] as a response extension.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! // 5 requests per 10 s per peer IP, in process (use a RedisStore to share it).
//! let layer = RateLimitLayer::builder(MemoryStore::new())
//!     .policy(Policy::gcra(5, Duration::from_secs(10)))
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! # drop(svc);
//! # Ok(()) }
//! ```
//!
//! Customised: two policies decided together, keyed by API key else peer IP,
//! a heavier cost for uploads, fail-closed, legacy headers on:
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_layers::key::{Header, KeyExtractorExt, PeerIp};
//! use tower_redis_layers::rate_limit::{FailurePolicy, Policy, RateLimitLayer};
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! let layer = RateLimitLayer::builder(MemoryStore::new())
//!     .policy(Policy::gcra(10, Duration::from_secs(1)).burst(20).named("burst"))
//!     .policy(Policy::sliding_log(1000, Duration::from_secs(3600)).named("hourly"))
//!     .key(Header::new("x-api-key").or(PeerIp::new()))
//!     .cost(|req| if req.method == http::Method::PUT { 5 } else { 1 })
//!     .on_store_failure(FailurePolicy::Closed)
//!     .legacy_headers(true)
//!     .scope("api")
//!     .build()?;
//! # drop(layer);
//! # Ok(()) }
//! ```
//!
//! # Algorithms
//!
//! | [`Algorithm`] | accuracy | state per client and policy |
//! |---|---|---|
//! | GCRA ([`Policy::gcra`]) | exact: a steady rate plus a burst | one integer (a timestamp) |
//! | sliding log ([`Policy::sliding_log`]) | exact: never more than `limit` in any window | one timestamp per admitted unit (limit ≤ 10 000) |
//! | sliding window counter ([`Policy::sliding_window`]) | approximate: weights the previous window by its overlap, assuming even arrivals | three integers |
//! | fixed window ([`Policy::fixed_window`]) | exact per window, but up to 2 × limit across a boundary | two integers |
//! | token bucket ([`Policy::token_bucket`]) | exact: refills one token per `period / limit` | two integers |
//!
//! On Redis, each decision is one script call (`EVALSHA`, reloaded on
//! `NOSCRIPT`) that reads the time from the Redis server, so instances with
//! skewed clocks share one limit; every key has a TTL and its client part in
//! a hash tag. Concurrent decisions of one process are batched into one call,
//! the requests of one client in a batch decided against one read of its
//! state; under load (the last batch carried more than one decision) the
//! batcher lets a few turns of the runtime pass before it sends, so the
//! requests about to arrive join the batch, and a lone request goes out at
//! once. A denied client is remembered in process until it could pass, so
//! hammering past a limit costs no round trip. Busy clients can be decided in
//! process from slices of their quota leased from the store
//! ([`lease`](RateLimitLayerBuilder::lease), opt-in): one store call per
//! slice, the fleet still within the quota.
//!
//! # Failures and missing keys
//!
//! The store failing or missing its deadline is a [`FailurePolicy`]: let
//! through (default), 503, or an in-process limiter. A request without a
//! client key is a [`MissingKey`] choice: 400 (default), let through, or a
//! fallback key — never a silently shared bucket. An invalid key (an
//! oversized or repeated API key header) is answered 400.
//!
//! # Differences from `tower::limit::RateLimitLayer`
//!
//! tower's own `RateLimit` applies back-pressure: `poll_ready` waits until the
//! next request may go, for all callers of one service instance, in one
//! process. That suits a client calling a server. This layer is for servers:
//! it answers each client over its quota with a 429 at once, counts per client
//! key, and shares the count across every instance through the store. Its
//! `poll_ready` only asks the inner service, so it works under axum, which
//! treats services as always ready.

mod algorithm;
mod config;
mod decision;
mod denials;
mod future;
pub(crate) mod headers;
mod layer;
mod lease;
mod plan;
mod policy;
mod response;
mod service;
mod store;

#[cfg(feature = "__hooks")]
pub(crate) use decision::PolicyMeta;
pub use decision::{DecisionSource, PolicyDecision, RateLimitDecision};
pub use future::ResponseFuture;
pub use headers::{RATELIMIT, RATELIMIT_POLICY};
pub use layer::{
    FailurePolicy, MissingKey, RateLimitLayer, RateLimitLayerBuilder, RejectionResponse,
};
pub use plan::Plan;
pub use policy::{Algorithm, Policy, MAX_SLIDING_LOG_LIMIT};
pub use service::RateLimit;
pub use store::RateLimitStore;
