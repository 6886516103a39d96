//! Cache-aside for HTTP responses, shared by every instance through the
//! store: one origin call per key across the fleet, invalidation on writes,
//! the semantics of an RFC 9111 shared cache where the handler speaks HTTP
//! and an application TTL where it does not.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_redis_layers::cache::ResponseCacheLayer;
//! use tower_redis_layers::MemoryStore;
//!
//! # fn main() -> Result<(), tower_redis_layers::ConfigError> {
//! // A pure HTTP shared cache: responses are stored as their
//! // `Cache-Control` allows (use a RedisStore to share it).
//! let layer = ResponseCacheLayer::builder(MemoryStore::new()).build()?;
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<String>| async {
//!     let res = http::Response::builder()
//!         .header("cache-control", "max-age=60")
//!         .body(http_body_util::Full::new(bytes::Bytes::from("hello")))
//!         .unwrap();
//!     Ok::<_, std::convert::Infallible>(res)
//! });
//! # drop(svc);
//! # Ok(()) }
//! ```
//!
//! Customised: an application TTL for handlers that state none, short
//! negative caching, a normalised query, a header in the key, and a handle
//! for application values (read-through, write-through, tags):
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_layers::cache::{RequestDirectives, ResponseCacheLayer, Stored};
//! use tower_redis_layers::MemoryStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = ResponseCacheLayer::builder(MemoryStore::new())
//!     .default_ttl(Duration::from_secs(30))
//!     .negative_ttl(Duration::from_secs(5))
//!     .sort_query(true)
//!     .ignore_query_param("utm_source")
//!     .key_header(http::header::ACCEPT_LANGUAGE)
//!     .max_body_size(256 * 1024)
//!     .request_directives(RequestDirectives::Honor { min_age: Duration::from_secs(1) })
//!     .scope("api")
//!     .build()?;
//! let cache = layer.handle();
//! let row = cache
//!     .get_or_load("item:42", Duration::from_secs(30), || async {
//!         Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"id\":42}"))
//!     })
//!     .await?;
//! assert_eq!(row, "{\"id\":42}");
//! // Write-through after the row changed, tagged for a later purge_tag("items").
//! let tagged = Stored::ttl(Duration::from_secs(30)).tag("items");
//! cache.put("item:42", bytes::Bytes::from_static(b"{\"id\":42,\"v\":2}"), tagged).await?;
//! cache.invalidate(&"http://api.example/api/items/42".parse()?).await?;
//! cache.purge_tag("items").await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```
//!
//! # What is stored
//!
//! GET responses (HEAD is answered from them) with a final status (not
//! 304) and a freshness lifetime (RFC 9111 §3, §4.2): `s-maxage`,
//! else `max-age`, else `Expires` minus `Date` (any status); without
//! those, for the heuristically cacheable statuses (200, 203, 204, 206,
//! 300, 301, 308, 404, 405, 410, 414, 501) or a response marked `public`, the
//! layer's [`default_ttl`](ResponseCacheLayerBuilder::default_ttl) (with
//! jitter) or, without one, heuristic freshness: 10% of the time since
//! `Last-Modified`, at most a day
//! ([`heuristic_freshness`](ResponseCacheLayerBuilder::heuristic_freshness)).
//! A response with an `ETag` and no lifetime is stored stale, to be
//! revalidated. Not stored: `no-store` (unless `must-understand` and a
//! status this cache knows, §5.2.2.3), `private`, `Set-Cookie`, a response
//! to a request with `Authorization` (§3.5: then only a response that says
//! `public`, `s-maxage` or `must-revalidate`), or to one with `Cookie`
//! (then only a response that explicitly shares itself with `public` or
//! `s-maxage`, never one on the default TTL: it may be about the client
//! whose cookies it saw) — each lifted only by configuration
//! ([`store_set_cookie_responses`](ResponseCacheLayerBuilder::store_set_cookie_responses),
//! [`cache_authorized`](ResponseCacheLayerBuilder::cache_authorized),
//! [`share_cookie_requests`](ResponseCacheLayerBuilder::share_cookie_requests)).
//! A qualified `private="..."` or `no-cache="..."` keeps only the fields it
//! names out of the entry.
//!
//! With a `default_ttl` (application mode) errors (4xx, 5xx) are stored
//! only with a [`negative_ttl`](ResponseCacheLayerBuilder::negative_ttl),
//! and for at most that long; in a pure HTTP cache the `negative_ttl`, if
//! set, caps 404, 405, 410, 414 and 501 and serves as their lifetime when
//! the origin states none.
//!
//! Parsing follows the grammar, on the safe side where a field is broken:
//! a `Cache-Control` directive given twice keeps its first value, an
//! invalid delta-seconds is 0 (stale), one past 2^31 is 2^31; conflicting
//! directives honour the most restrictive (§4.2.1). `Expires` is read in
//! the three HTTP-date formats (RFC 9110 §5.6.7; a two-digit year more
//! than 50 years ahead is in the past century; day, month and `GMT` in any
//! case, as RFC 5322 writes them), anything else is a time in the past
//! (§5.3). An `Age` that is a list keeps its first member, an
//! invalid one is ignored (§5.1); the age on arrival also counts how long
//! ago the response's `Date` was (§4.2.3). `Vary: *` is never stored.
//!
//! With [`targeted_cache_control`](ResponseCacheLayerBuilder::targeted_cache_control)
//! (RFC 9213, e.g. `CDN-Cache-Control`; none by default, since this layer
//! runs inside the application, behind any CDN) the first listed field a
//! response carries with a valid structured-field dictionary replaces its
//! `Cache-Control` and `Expires`; an invalid one is ignored. `Pragma`
//! (§5.4, deprecated) is not `Cache-Control`: without `Cache-Control`, a
//! response's `no-cache` only withholds heuristic freshness, and a
//! request's counts as `Cache-Control: no-cache` where request directives
//! are honoured. `Warning` (§5.5, obsolete) is never generated.
//!
//! A `Range` request is answered from a stored complete `200` (RFC 9110
//! §14): `206` with the byte range, suffix ranges included, several as
//! `multipart/byteranges`, `416` when none is satisfiable, the whole
//! response when `If-Range` does not match (strong comparison) or the
//! field is invalid. Refilling a stored complete response fetches the
//! whole of it and cuts the range; otherwise the `Range` goes to the
//! origin, and its `206` — one byte range of a known length — is stored
//! as an incomplete entry (RFC 9111 §3.3). A later `206` with the same
//! strong `ETag` and length is combined with it (§3.4: the newer fields
//! win, parts up to 16 and within `max_body_size`), and once the parts
//! cover the representation the entry is a complete `200`. An incomplete
//! entry answers only `Range` requests wholly within its parts (never a
//! request without `Range`, a HEAD, or one whose `If-Range` does not
//! match); the others go to the origin. Instances of earlier versions
//! read incomplete entries as misses.
//!
//! A request carrying an *unkeyed input* — a header the key ignores but an
//! app may act on (`Forwarded`, `X-Forwarded-Host`/`-Proto`/`-Scheme`/
//! `-Port`/`-Prefix`, `X-Original-URL`, `X-Rewrite-URL`, method overrides;
//! see [`unkeyed_header`](ResponseCacheLayerBuilder::unkeyed_header)), or a
//! `Host` other than its absolute-form target, can be answered from the
//! cache but never fills it: it cannot poison the entry others read.
//!
//! # Keys
//!
//! GET, the authority (the absolute-form target's, else `Host`, lowercased,
//! default port dropped, as Varnish hashes the host; off with
//! [`key_host`](ResponseCacheLayerBuilder::key_host)), the path, the query
//! (optionally sorted, parameters dropped by name), and the request's
//! values of the configured key headers and of the headers the response
//! `Vary`s on — `Accept-*` values normalised (case, spaces, line breaks),
//! `User-Agent` byte for byte, every other value with its lines combined
//! and the spaces around its commas (outside quoted strings) dropped, case
//! kept (RFC 9111 §4.1); at most
//! [`max_variants`](ResponseCacheLayerBuilder::max_variants) variants per
//! URL. URLs and values are hashed before they reach a store key. On Redis:
//! `{prefix}:cache:{<url digest>}:i` (index: the Vary spec, the URL's
//! generation, and each variant's entry, freshness, expiry and strong
//! `ETag`), `…:h` (the entry of a URL without Vary, as a key of its own, so
//! that a hit is one plain read: one `MGET` per batch), `…:s` (that entry
//! after a soft purge), `…:l:<variant>` (fill lock) and `…:p:<variant>`
//! (hit-for-miss), all with a TTL, one hash tag per URL; a tag's URLs and last purge time
//! are `{prefix}:cache:{t:<tag digest>}:m` and `…:p`. The path is the one the layer
//! sees: inside axum's `Router::nest` the nest prefix is stripped, so caches
//! in different nests sharing a store need [`scope`](ResponseCacheLayerBuilder::scope)s
//! of their own.
//!
//! # Answers
//!
//! Hits carry `Age` and `Cache-Status` (RFC 9211): `trl; hit; ttl=12`,
//! `trl; fwd=miss; fwd-status=200; stored; ttl=30` for the request that
//! filled, `trl; fwd=miss; collapsed` for those that waited for it.
//! Conditional requests are answered from an entry in the order of RFC
//! 9110 §13.2.2: `If-Match` (strong comparison) and `If-Unmodified-Since`
//! with `412`, `If-None-Match` (weak comparison) and `If-Modified-Since`
//! (against `Last-Modified`, else `Date`) with `304` and the fields §15.4.5
//! requires. With no usable entry the client's conditions go to the
//! origin, and its `304` or `412` is that client's alone (the next request
//! fills). A stale entry with a validator is revalidated with a conditional
//! request of the cache's own; a `304` refreshes it and, when it carries a
//! strong `ETag`, every other variant of the URL stored with that `ETag`
//! (§4.3.4; a weak validator cannot tell variants apart, so it freshens
//! only the one revalidated). HEAD is
//! answered from the stored GET; a HEAD that reaches the origin stores
//! nothing, but its `200` freshens the entry when it describes the stored
//! representation (every validator it carries equal to the stored one,
//! and the same length if it states one), and otherwise makes the URL's
//! entries stale on every instance (§4.3.5). Interim (1xx) responses are never stored, and requests with
//! `Upgrade` bypass the cache.
//!
//! # Stale responses
//!
//! Within `stale-while-revalidate` (RFC 5861) every request gets the stale
//! entry at once, the one that takes the fill lock included: its
//! revalidation runs in a task of its own (the inner service's future and
//! response body are `Send + 'static` for that), once across the fleet.
//! `stale-if-error` serves the entry when the origin answers 5xx or fails.
//! When the origin cannot be reached (RFC 9111 §4.2.4) — the inner service
//! fails, a body breaks off, or the service answers with a response marked
//! [`OriginUnreachable`] (a proxy's 502 or 504) — an entry up to
//! [`stale_if_unreachable`](ResponseCacheLayerBuilder::stale_if_unreachable)
//! past its freshness is served (off by default; entries are kept that
//! much longer), unless it said `must-revalidate`, `proxy-revalidate`,
//! `no-cache` or `s-maxage`. `s-maxage` implies `proxy-revalidate`
//! (§5.2.2.10), but an explicit `stale-while-revalidate` or
//! `stale-if-error` beside it still applies: the origin asked for both.
//!
//! # One origin call per key
//!
//! Concurrent misses for one slot collapse in process (one leader, the
//! others follow its outcome — but only outcomes of store calls sent after
//! they came, so none is answered with what the store held before a write
//! it has seen complete), and across instances: a lookup that finds no
//! fresh entry goes on to the lookup script, which takes a short fill lock
//! ([`lock_ttl`](ResponseCacheLayerBuilder::lock_ttl)) as it reads the slot
//! again; instances that find it held poll with back-off (5 to
//! 50 ms) until the entry appears, and after
//! [`max_wait`](ResponseCacheLayerBuilder::max_wait) go to the origin
//! themselves. A response that turns out not storable releases the lock and
//! marks the slot *hit-for-miss* for 30 s (as Varnish does): waiters and
//! later misses of that slot go to the origin at once instead of queueing
//! behind the lock, and a response that is storable again is stored.
//!
//! Request `Cache-Control` is ignored by default so that clients cannot
//! force origin load; honoured (`max-age`, `max-stale`, `min-fresh`,
//! `no-cache`, `no-store`, `only-if-cached`; RFC 9111 §5.2.1) with a floor
//! on revalidation under [`RequestDirectives::Honor`].
//!
//! # Invalidation
//!
//! A successful (2xx, 3xx) unsafe request (POST, PUT, PATCH, DELETE, and
//! any method not known to be safe) drops every variant of
//! the GET of its URI, and of its `Location` / `Content-Location` when they
//! are on the same origin, before the response is returned — on every
//! instance, since entries live in the store. [`CacheHandle`] invalidates by
//! URI or by application key.
//!
//! A `POST` response with explicit freshness and a `Content-Location`
//! naming the `POST`'s own URI (RFC 9110 §9.3.3) then becomes the stored
//! response to `GET`s of that URI, when a `GET` with the `POST`'s fields
//! could have stored it and no other fill holds the URI's lock.
//!
//! Tags (surrogate keys): a response names its tags in `Surrogate-Key`
//! (space- or comma-separated; [`tag_header`](ResponseCacheLayerBuilder::tag_header)
//! to read `Cache-Tag` or another; removed before clients see it unless
//! [`strip_tag_header`](ResponseCacheLayerBuilder::strip_tag_header)`(false)`),
//! and [`CacheHandle::purge_tag`] drops every entry that named one, on
//! every instance. The store keeps per tag the URLs of its live entries
//! (on Redis a sorted set with a TTL, in a cluster slot of its own; the
//! URLs are then purged 64 per call, per slot on a cluster) and the time of its last
//! purge: a fill tags itself before it writes, and stands down if the tag
//! was purged since its lookup, so writes win for tags too (a fill that
//! looked up within the purge's millisecond stands down as well).
//!
//! Soft purge ([`soft_purge_url`](CacheHandle::soft_purge_url),
//! [`soft_purge_tag`](CacheHandle::soft_purge_tag)) keeps the entries but
//! marks them stale from that instant (the URL's generation advances, and
//! entries stored before it read as stale): the next request revalidates
//! with their validators, one request across the fleet, and within
//! `stale-while-revalidate` everyone is served the kept entry meanwhile.
//!
//! Writes win: a purge also advances the URL's generation, and a fill
//! writes only under the generation its lookup saw, so a response fetched
//! before the write can never land after it (a fill whose lookup is more
//! than ten minutes old is not stored either). A purge that fails (breaker
//! open, deadline) is retried in the background, with back-off, until it
//! lands or the entries it targets have expired (at most 10 000 URLs wait);
//! it is logged, the write's response carries `Cache-Status: trl;
//! fwd=method; detail=purge-pending`, and until it lands this instance
//! answers that URL from the origin. Other instances may serve the old
//! entry until the retry lands.
//!
//! # Application values
//!
//! [`CacheHandle`] keeps application values in the same store, under keys
//! of their own: [`get_or_load`](CacheHandle::get_or_load) (read-through,
//! one loader per key across the fleet), [`get`](CacheHandle::get),
//! [`put`](CacheHandle::put) (write-through: it purges the key first, so a
//! load that began before cannot land its older value after it),
//! [`get_or_load_optional`](CacheHandle::get_or_load_optional) (a loader
//! that finds nothing is remembered only with an explicit
//! [`negative_ttl`](Stored::negative_ttl)), tags on values
//! ([`Stored::tag`], purged with `purge_tag` like responses), and with the
//! `serde` feature typed values as JSON (`get_or_load_json`, `get_json`,
//! `put_json`; bytes that are no such value read as a miss and are replaced).
//!
//! # Entries, bodies, failures
//!
//! Entries use our own versioned binary layout with length fields and a
//! checksum; decoding is bounds-checked. A corrupt or foreign entry is a miss
//! and gets overwritten. The request that fills reads the origin's body
//! into the entry before it answers (up to
//! [`max_body_size`](ResponseCacheLayerBuilder::max_body_size), 1 MiB), so
//! the others are served as soon as the origin has answered, never at the
//! speed of a client reading, and a client that stops reading holds no
//! lock; it then gets the bytes from the entry. Past the cap, what was read
//! is sent first and the rest streams through unstored. A body that fails
//! midway is a 502 (or the stale entry, within `stale-if-error`). A hit on
//! Redis is one round trip of plain reads, batched with the lookups in
//! flight into one pipeline per hash slot: the store's clock, one `MGET` of
//! the entries of the URLs without Vary (each a key of its own), and one
//! `HMGET` of the index of each URL with Vary (its spec, generation and the
//! variant's entry and times). Its body is a slice of the reply, not a
//! copy; a miss takes a second round trip, to the lookup script. On a
//! [`MemoryStore`](crate::MemoryStore) entries take at most its
//! [`cache_capacity`](crate::MemoryStoreBuilder::cache_capacity) (64 MiB by
//! default), the least recently used evicted first.
//!
//! Every duration and size is checked by `build()`: TTLs from 1 ms to ten
//! years, `lock_ttl` and `max_wait` up to an hour; `get_or_load` clamps its
//! TTL to that range.
//!
//! When the store fails or misses its deadline, a warning is logged (at
//! most once a second) and the [`FailurePolicy`] decides: `Open` (default)
//! makes the request a miss served by the origin; `Closed` answers 503 with
//! `Retry-After` without calling the origin (problem+json, or a gRPC status
//! for gRPC clients), for origins that must be shielded. `get_or_load` runs
//! its loader either way.
//!
//! Time comes from the store: the Redis server's clock (read by every
//! lookup), so `Age` and freshness agree across instances.
//!
//! # In-process tier
//!
//! With [`l1`](ResponseCacheLayerBuilder::l1) and a `RedisStore`, fresh
//! entries are also kept in process, so a hot hit costs no round trip.
//! Every write and purge publishes the URL on the store's invalidation
//! channel and each instance drops its copies; copies are kept only while
//! the subscription is up, for at most the configured age, within
//! [`l1_capacity`](ResponseCacheLayerBuilder::l1_capacity) bytes, and never
//! when read before an invalidation the tier has seen. The price: an
//! invalidation reaches other instances' copies after the pub/sub delivery
//! delay rather than before the write's response returns.
//!
//! # Limits
//!
//! - An instance learns a URL's `Vary` from the store: its first lookup of a
//!   varying URL takes a second round trip; later ones take one.
//! - Redis Cluster: the keys of one URL share a hash tag, so each script
//!   runs on one slot of a cluster store. All variants of a URL live in
//!   one hash with its Vary spec and generation, so every key a script
//!   touches is declared in its `KEYS`. Hash fields have no TTL of their own
//!   (before Redis 7.4): a variant past its expiry reads as absent and is
//!   dropped by the next lookup or write of the URL; the hash lives as long
//!   as its longest-lived variant, and the variant cap bounds it.
//! - The fill of a client that disconnects before the origin's body is
//!   read is dropped: the next request fills again.
//! - A purge that fails (by URL, key or tag, hard or soft) is returned as an
//!   error and retried in the background until it lands or its entries
//!   have expired, within a bound of 10 000 pending purges; a tag purge
//!   that read its URLs but failed to purge some retries those URLs. The
//!   entries of a tag are found through the store, so an entry whose
//!   tagging failed is not stored at all.

mod app;
mod cache_control;
mod capture;
mod conditional;
mod config;
mod date;
mod decide;
pub(crate) mod entry;
mod fill;
mod flight;
mod freshen;
mod freshness;
mod future;
mod handle;
mod invalidate;
mod key;
mod l1;
mod layer;
mod leader;
mod look;
mod origin;
mod partial;
mod policy;
mod post;
mod purges;
mod range;
mod refresh;
mod resolve;
mod response;
mod route;
mod service;
mod shared;
mod store;
mod tags;
mod targeted;

pub use app::Stored;
pub use config::{FailurePolicy, RequestDirectives};
pub use future::ResponseFuture;
pub use handle::CacheHandle;
pub use layer::{ResponseCacheLayer, ResponseCacheLayerBuilder};
pub use origin::OriginUnreachable;
pub use service::ResponseCache;
pub use store::CacheStore;
