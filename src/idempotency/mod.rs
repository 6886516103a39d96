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
//! The answers the layer writes itself are `application/problem+json`
//! (replaceable: [`rejection`](IdempotencyLayerBuilder::rejection)); a
//! gRPC request (`content-type: application/grpc*`) gets a gRPC status
//! instead: 400/413 `INVALID_ARGUMENT`, 409 `ABORTED`, 422
//! `FAILED_PRECONDITION`, 503 `UNAVAILABLE`, 500 `INTERNAL`.
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
//! **Hang-ups never cancel a write.** Once the key is reserved and the
//! handler called, the handler, the reading of its response and the write
//! of the record run to the end in a task of their own (`tokio::spawn`),
//! even if the client goes away (the response future is dropped: closed
//! connection, timeout, cancelled call). A retry meets the key in progress
//! (409, or waits) while it runs, and gets the replay after: a handler
//! that committed a payment and is then abandoned is never run twice.
//! What this means for handlers: they may outlive their connection and
//! their caller's timeouts (bound their own work), they run on the tokio
//! runtime (task-locals of the request's task are not carried; the
//! current `tracing` span is), and their panics still reach the caller
//! while it waits. Hence the service's bounds: the inner service's future
//! and error, and its response body, are `Send + 'static` (true of axum,
//! tonic and hyper services). Without a tokio runtime, or with
//! [`HangUp::Release`] (the old behaviour, opt-in), the handler runs inside
//! the response future and a hang-up cancels it and releases the key at
//! once: a retry runs again, even if the cancelled run had committed.
//!
//! **Leases.** The reservation holds a lease (10 s), renewed every third
//! of it while the handler runs. When the handler fails or panics, the key
//! is released and a retry runs; when the process dies the lease lapses
//! and a retry runs after it. Completion is fenced by the lease token: a
//! holder whose lease lapsed cannot overwrite a newer execution. If the
//! completion write itself fails, the key stays reserved until its lease
//! lapses (a retry gets 409 meanwhile, then runs).
//!
//! **Replicas.** Redis replicates asynchronously: a record acknowledged by
//! the master can be lost if the master fails before a replica has it, and
//! a retry after the failover runs the handler again.
//! [`wait_replicas(n, timeout)`](IdempotencyLayerBuilder::wait_replicas)
//! sends `WAIT n timeout` after each completion (on a cluster, to the
//! master of the record's slot) and answers only once `n` replicas have
//! the record or the timeout passed. It narrows the window, it does not
//! close it: WAIT does not make Redis strongly consistent (a failover can
//! still promote a replica that lacks the record, e.g. one that was not
//! among the `n`, and a master restarted without persistence loses it).
//! When WAIT confirms fewer than `n` replicas in time (or fails), the
//! response is still sent, marked [`Stored`](IdempotencyOutcome::Stored),
//! and a warning (at most one a second) says so: the handler has run, and
//! refusing its answer would not undo it. The timeout adds to the latency
//! of first executions only (replays and conflicts send no WAIT); keep it
//! under the Redis connection's response timeout (redis-rs's default
//! 500 ms; on a cluster the larger of the store's deadline and connect
//! timeout), past which WAIT counts as failed. On a
//! [`MemoryStore`](crate::MemoryStore) it is a no-op: one process has no
//! replicas.
//!
//! **Memory.** A [`MemoryStore`](crate::MemoryStore) keeps at most
//! [`DEFAULT_MAX_MEMORY_RECORDS`] records (set with
//! [`MemoryStore::max_idempotency_records`](crate::MemoryStore::max_idempotency_records)),
//! evicting completed records oldest first, then reservations; a retry
//! whose record was evicted runs again. Expired records are swept.
//!
//! **Configuration.** [`build`](IdempotencyLayerBuilder::build) refuses
//! what could overflow at request time: a record TTL, lease,
//! [`Conflict::Wait`] or replica timeout over 365 days, a stored body over
//! 4 GiB.
//!
//! **Waiting.** With [`Conflict::Wait`] a request that meets its key in
//! progress asks the store again after 10, 20, 40, 80 ms, then every
//! 160 ms, until it finds the response (replayed), finds the key released
//! (it runs itself) or its wait ends (409). Each question is one round trip.
//!
//! **Round trips.** On Redis, a replay, a conflict or a mismatch is ONE
//! script call; a first execution is two (reserve, then complete or
//! release; a `WAIT` more with `wait_replicas`), plus one renewal per third
//! of the lease for slow handlers. Reservations and completions in flight
//! are batched like the rate limiter's decisions: those that arrive while
//! one call is on the wire go out together as one script call (per hash
//! slot on a cluster), decided in order, so a retry racing its original in
//! the same batch still finds it in progress. A replay of a record the
//! instance has seen completed (it stored the response or replayed it, among
//! the latest 8192 such records) is a plain read instead, sent beside the
//! batch's script call: a fraction of a script's cost to Redis; a read that
//! finds the record gone or in progress hands it to the script. The
//! instance that stored a response keeps a copy of it in process until
//! the record expires (at most 8 MiB of responses per layer, the least
//! recently used out first; none over 128 KiB), and answers the retries
//! of the same request that come back to it with no round trip at all: a
//! completed record never changes. Where Redis lost the record (evicted,
//! flushed), that instance still replays it while another would run the
//! request again.
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
pub use config::{Conflict, FailurePolicy, HangUp};
pub use future::ResponseFuture;
pub use key::IDEMPOTENCY_KEY;
pub use layer::{IdempotencyLayer, IdempotencyLayerBuilder};
pub use policy::{default_store_policy, StorePolicy, DEFAULT_STORED_HEADERS};
pub use response::{IdempotencyOutcome, Rejection, RejectionResponse, IDEMPOTENT_REPLAYED};
pub use service::Idempotency;
pub use store::memory::DEFAULT_MAX_MEMORY_RECORDS;
pub use store::IdempotencyStore;

#[cfg(feature = "__hooks")]
pub(crate) use fingerprint::Fingerprint;
