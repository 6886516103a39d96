//! Idempotency keys: a retried `POST` runs the handler once, across every
//! instance of the service, and the retry gets the original answer.
//!
//! Follows draft-ietf-httpapi-idempotency-key-header and Stripe's
//! semantics. A covered request (POST and PATCH by default) carrying an
//! `Idempotency-Key` is reserved in the store before the handler runs; its
//! response is stored when it completes; a retry with the same key gets the
//! stored status, headers and body byte for byte, plus
//! `Idempotent-Replayed: true`. Every response carries an
//! [`IdempotencyOutcome`] extension saying what the layer did.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_redis_layers::idempotency::{IdempotencyLayer, RequestBody};
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! // In process; use a RedisStore to share the records across instances.
//! let layer = IdempotencyLayer::builder(MemoryStore::new()).build()?;
//! let svc = ServiceBuilder::new().layer(layer).service_fn(
//!     |_req: http::Request<RequestBody<http_body_util::Full<bytes::Bytes>>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
//!             bytes::Bytes::from_static(b"{\"order\":1}"),
//!         )))
//!     },
//! );
//! # drop(svc);
//! # Ok(()) }
//! ```
//!
//! Customised: records scoped by API key, a key required, waiting for the
//! first request instead of answering 409, a shorter record life, and
//! running unprotected when the store is down:
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use tower_redis_layers::idempotency::{Conflict, FailurePolicy, IdempotencyLayer};
//! use tower_redis_layers::key::Header;
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! let layer = IdempotencyLayer::builder(MemoryStore::new())
//!     .principal(Header::new("x-api-key"))
//!     .methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
//!     .required(true)
//!     .on_conflict(Conflict::Wait(Duration::from_secs(5)))
//!     .record_ttl(Duration::from_secs(3600))
//!     .lease(Duration::from_secs(30))
//!     .max_body(64 * 1024)
//!     .on_store_failure(FailurePolicy::Open)
//!     .store_policy(|status: http::StatusCode| status.is_success())
//!     .build()?;
//! # drop(layer);
//! # Ok(()) }
//! ```
//!
//! # With axum
//!
//! The inner service receives `Request<`[`RequestBody<B>`]`>`: the client's
//! body passed through, or the bytes the layer read (it reads covered
//! bodies whole to fingerprint them). axum's `Router` accepts it like any
//! body: `Router::new().route(...).layer(layer)` works as is.
//!
//! # Semantics
//!
//! | request | answer |
//! |---|---|
//! | other method, or no key | passes through (400 when [`required`](IdempotencyLayerBuilder::required)) |
//! | invalid key: empty, over 255 characters, not visible ASCII, a list, sent twice | 400 |
//! | body over [`max_body`](IdempotencyLayerBuilder::max_body) (1 MiB) | 413 |
//! | first with its key | runs; the response is stored if the [`StorePolicy`] says so |
//! | same key while the first runs | 409 + `Retry-After: 1`, or [`Conflict::Wait`] and replay |
//! | same key, different method/target/content type/body | 422 |
//! | same key after completion | the stored response + `Idempotent-Replayed: true` |
//! | store failure, deadline or corrupt record | 503 + `Retry-After` ([`FailurePolicy`]) |
//!
//! Problem responses are `application/problem+json`.
//!
//! **Scope.** A record belongs to principal + method + path + key: one
//! principal never sees another's response, whatever key it sends, and a
//! key reused on another path is a record of its own. The default
//! principal is the hashed `Authorization` header, else ONE anonymous
//! principal shared by every unauthenticated client: clients that send
//! random keys (UUIDs, as the draft asks) never meet, but an anonymous
//! client that guesses another's key could get its replay. Behind
//! authentication, set [`principal`](IdempotencyLayerBuilder::principal)
//! (an API-key header, or a closure reading the user from the extensions).
//!
//! **Stored.** By default ([`default_store_policy`]) 2xx-4xx except 408,
//! 409 and 429. Other outcomes, 5xx and handler errors release the key, so a
//! retry runs again. Stored headers are an allow-list
//! ([`DEFAULT_STORED_HEADERS`]); `Set-Cookie` and hop-by-hop headers never
//! are. The first response goes to its client as the handler made it.
//!
//! **Reading the response.** The layer reads the handler's response body
//! (up to [`max_stored_body`](IdempotencyLayerBuilder::max_stored_body),
//! 1 MiB) and stores it *before* answering, so a client that got the
//! answer and retries always finds it stored, and a client that stops
//! reading cannot keep it from being stored. A larger body is sent on as
//! it streams, not stored, its key released, with a warning. A body that
//! fails while being read is answered 500 and its key released. Responses
//! with trailers are sent, not stored.
//!
//! **Leases.** The reservation holds a lease (10 s), renewed every third
//! of it while the handler runs. When the response future is dropped (the
//! client went away, the handler panicked) the reservation is released at
//! once and a retry runs; when the process dies the lease lapses and a
//! retry runs after it. Completion is fenced by the lease token: a holder
//! whose lease lapsed cannot overwrite a newer execution. If the
//! completion write itself fails, the key stays reserved until its lease
//! lapses (a retry gets 409 meanwhile, then runs).
//!
//! **Waiting.** With [`Conflict::Wait`] a request that meets its key in
//! progress asks the store again after 10, 20, 40, 80 ms, then every
//! 160 ms, until it finds the response (replayed), finds the key released
//! (it runs itself) or its wait ends (409). Each question is one round trip.
//!
//! **Round trips.** On Redis, a replay, a conflict or a mismatch is ONE
//! script call; a first execution is two (reserve, then complete or
//! release), plus one renewal per third of the lease for slow handlers.
//! Each step is one Lua script on one key, `{prefix}:idem:{<sha256>}`, with
//! a TTL (the lease, then the record TTL, from Redis's clock); keys,
//! principals and paths are hashed before they enter it. The stored
//! response is our own versioned binary record; a corrupt one is a store
//! failure, never a panic.

mod admit;
mod body;
mod capture;
mod config;
mod execute;
mod fingerprint;
mod future;
pub(crate) mod key;
mod layer;
mod lease;
mod policy;
pub(crate) mod record;
mod response;
mod service;
mod steps;
mod store;

pub use body::RequestBody;
pub use config::{Conflict, FailurePolicy};
pub use future::ResponseFuture;
pub use key::IDEMPOTENCY_KEY;
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder};
pub use policy::{default_store_policy, StorePolicy, DEFAULT_STORED_HEADERS};
pub use response::{IdempotencyOutcome, IDEMPOTENT_REPLAYED};
pub use service::Idempotency;
pub use store::IdempotencyStore;

#[cfg(feature = "__hooks")]
pub(crate) use fingerprint::Fingerprint;
