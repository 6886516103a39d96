//! [`ResponseCacheLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use super::config::{Config, FailurePolicy, L1Config, RequestDirectives};
use super::freshness::Heuristic;
use super::handle::CacheHandle;
use super::service::ResponseCache;
use super::shared::Shared;
use super::store::CacheStore;
use crate::error::ConfigError;

/// Caches GET responses in a store shared by every instance; see the
/// [module docs](super).
#[derive(Clone, Debug)]
#[must_use]
pub struct ResponseCacheLayer {
    pub(super) shared: Arc<Shared>,
}

impl ResponseCacheLayer {
    /// Starts building a layer whose entries live in `store`.
    pub fn builder(store: impl CacheStore) -> ResponseCacheLayerBuilder {
        ResponseCacheLayerBuilder {
            store: Arc::new(store),
            cfg: Config::default(),
        }
    }

    /// A handle for application code: `get_or_load` and invalidation, on the
    /// same store, keys and single-flight as the layer.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.clone())
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache::new(inner, self.shared.clone())
    }
}

/// Configures a [`ResponseCacheLayer`]; [`build`](Self::build) checks it.
#[must_use]
pub struct ResponseCacheLayerBuilder {
    store: Arc<dyn CacheStore>,
    cfg: Config,
}

impl std::fmt::Debug for ResponseCacheLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCacheLayerBuilder")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ResponseCacheLayerBuilder {
    /// Freshness of a storable response that states none (no `s-maxage`,
    /// `max-age` or `Expires`): the application's TTL, 1 ms to ten years.
    /// Default: none, such responses are not stored (a pure HTTP cache).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.cfg.rules.default_ttl = Some(ttl);
        self
    }

    /// Store errors for at most this long, 1 ms to ten years. With a
    /// [`default_ttl`](Self::default_ttl) every 4xx and 5xx is stored only
    /// with one (default: never); in a pure HTTP cache it caps 404, 405,
    /// 410, 414 and 501 and is their lifetime when the origin states none.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.cfg.rules.negative_ttl = Some(ttl);
        self
    }

    /// Shortens the layer's own TTLs by a random fraction up to this (default
    /// 0.1), so entries filled together do not expire together. Lifetimes
    /// the origin states are kept exactly.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.cfg.rules.jitter = fraction;
        self
    }

    /// How long an entry with a validator (`ETag`, `Last-Modified`) is kept
    /// once stale, to be revalidated with a conditional request (default 60 s).
    pub fn keep_stale(mut self, d: Duration) -> Self {
        self.cfg.rules.keep_stale = d;
        self
    }

    /// Heuristic freshness (RFC 9111 §4.2.2) for a response without an
    /// explicit lifetime but with `Last-Modified`: `fraction` of the time
    /// since that date, at most `max` (default 10%, at most a day). Only
    /// for heuristically cacheable statuses (200, 203, 204, 300, 301, 308,
    /// 404, 405, 410, 414, 501) or responses marked `public`, and only
    /// without a [`default_ttl`](Self::default_ttl), which takes its
    /// place. A fraction or maximum of zero turns it off; `fraction` is
    /// within 0 and 1, `max` at most ten years.
    pub fn heuristic_freshness(mut self, fraction: f64, max: Duration) -> Self {
        self.cfg.rules.heuristic = Some(Heuristic { fraction, max });
        self
    }

    /// Serve a stored response up to `max` past its freshness when the
    /// origin cannot be reached (RFC 9111 §4.2.4): the inner service
    /// fails, its response carries [`OriginUnreachable`](super::OriginUnreachable)
    /// (a proxy's 502 or 504 for a refused, reset or timed-out connection),
    /// or the body fails midway. Never for a response that says
    /// `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`
    /// (unless its `stale-if-error` allows it). Entries are kept in the
    /// store that much longer. Default: zero (off); at most ten years.
    pub fn stale_if_unreachable(mut self, max: Duration) -> Self {
        self.cfg.rules.stale_if_unreachable = max;
        self
    }

    /// Targeted cache-control fields (RFC 9213) this cache obeys, highest
    /// priority first, e.g. `CDN-Cache-Control`: the first one a response
    /// carries with a valid, non-empty value (a structured-field
    /// dictionary) is used in place of its `Cache-Control` and `Expires`;
    /// an invalid one is ignored. Default: none. This layer runs inside
    /// the application, behind any CDN, so a field addressed to CDNs is
    /// not addressed to it; a layer deployed as a CDN-like shared proxy
    /// (as `examples/caching_proxy` is) names `CDN-Cache-Control`. The
    /// fields are passed on to clients and downstream caches.
    pub fn targeted_cache_control(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.cfg.rules.targeted = fields.into_iter().collect();
        self
    }

    /// Store responses carrying `Set-Cookie`, without that field (default:
    /// such responses are not stored). The client that caused the fill still
    /// gets its cookie; no other client ever does.
    pub fn store_set_cookie_responses(mut self, on: bool) -> Self {
        self.cfg.rules.strip_set_cookie = on;
        self
    }

    /// Look up requests with `Authorization` and store their responses when
    /// the response allows it (`public`, `s-maxage`, `must-revalidate`; RFC
    /// 9111 §3.5). Default: such requests bypass the cache.
    pub fn cache_authorized(mut self, on: bool) -> Self {
        self.cfg.rules.cache_authorized = on;
        self
    }

    /// Store responses to requests carrying `Cookie` like any other
    /// (default off: such a response is stored only when it explicitly
    /// shares itself with `public` or `s-maxage`, never on the
    /// [`default_ttl`](Self::default_ttl), since it may be about the client
    /// whose cookies it saw). Such requests are answered from the cache either way.
    pub fn share_cookie_requests(mut self, on: bool) -> Self {
        self.cfg.rules.share_cookie_requests = on;
        self
    }

    /// Key on the request's authority: the absolute-form URI's, else the
    /// `Host` field's, lowercased, without the default port (default on, as
    /// Varnish's default hash). Off only for a layer that serves one host
    /// whatever `Host` says: otherwise a request with another `Host` could
    /// fill the key others read.
    pub fn key_host(mut self, on: bool) -> Self {
        self.cfg.key.host = on;
        self
    }

    /// Sort query parameters before keying (default off).
    pub fn sort_query(mut self, on: bool) -> Self {
        self.cfg.key.sort_query = on;
        self
    }

    /// Leave this query parameter out of the key (`utm_source`, ...).
    pub fn ignore_query_param(mut self, name: impl Into<String>) -> Self {
        self.cfg.key.ignore_params.push(name.into());
        self
    }

    /// Key every response on this request header, as if it always `Vary`d on it.
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.cfg.key.headers.push(name);
        self
    }

    /// Adds a request header the key ignores but an origin might act on: a
    /// request carrying it may be answered from the cache, but its response
    /// is never stored. The default list: `Forwarded`,
    /// `X-Forwarded-Host`/`-Proto`/`-Scheme`/`-Port`/`-Prefix`/`-Server`,
    /// `X-Host`, `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`,
    /// `X-HTTP-Method`, `X-Method-Override`. Keying on a header with
    /// [`key_header`](Self::key_header) lifts this for it (behind a proxy
    /// that always sets `X-Forwarded-Proto`, key on it).
    pub fn unkeyed_header(mut self, name: HeaderName) -> Self {
        self.cfg.unkeyed.push(name);
        self
    }

    /// Replaces the list of unkeyed request headers (see
    /// [`unkeyed_header`](Self::unkeyed_header)).
    pub fn unkeyed_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.cfg.unkeyed = names.into_iter().collect();
        self
    }

    /// Separates this layer's entries from other layers on the same store
    /// (default `default`; `[A-Za-z0-9_.-]`).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.cfg.key.scope = scope.into();
        self
    }

    /// Largest body stored (default 1 MiB); larger responses stream through unstored.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.cfg.max_body = bytes;
        self
    }

    /// Most variants (`Vary`) kept per URL (default 16); the soonest to
    /// expire are dropped first.
    pub fn max_variants(mut self, n: u32) -> Self {
        self.cfg.max_variants = n;
        self
    }

    /// How long a fill lock is held at most, 1 ms to an hour (default 5 s).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.cfg.lock_ttl = ttl;
        self
    }

    /// How long a request waits for another's fill before it asks the
    /// origin itself, up to an hour (default 3 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.cfg.wait = wait;
        self
    }

    /// The cache's name in `Cache-Status` (default `trl`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// How request `Cache-Control` directives are treated (default: ignored).
    pub fn request_directives(mut self, policy: RequestDirectives) -> Self {
        self.cfg.directives = policy;
        self
    }

    /// Invalidate on successful POST, PUT, PATCH and DELETE (default on).
    pub fn invalidate_on_unsafe(mut self, on: bool) -> Self {
        self.cfg.invalidate_unsafe = on;
        self
    }

    /// What to do when the store fails or misses its deadline (default
    /// [`FailurePolicy::Open`]: the origin serves).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.cfg.on_failure = policy;
        self
    }

    /// Keeps up to `max_entries` fresh entries in process as well, each for
    /// at most `max_age`, so a hot hit costs no round trip (default: off).
    /// The copies also hold at most [`l1_capacity`](Self::l1_capacity)
    /// bytes; a full tier starts over.
    ///
    /// Needs a [`RedisStore`](crate::RedisStore) built from a URL, and
    /// `build` to run inside a Tokio runtime: copies are kept only while a
    /// pub/sub subscription to the store's invalidation channel is up, and
    /// every write and purge in the fleet drops them. Invalidation then
    /// reaches other instances' copies after the pub/sub delivery delay, not
    /// before the write's response; `max_age` bounds staleness if a message
    /// is lost.
    pub fn l1(mut self, max_entries: usize, max_age: Duration) -> Self {
        self.cfg.l1 = Some(L1Config {
            max_entries,
            max_age,
        });
        self
    }

    /// Bytes of entries the in-process tier holds at most (default 16 MiB;
    /// see [`l1`](Self::l1)).
    pub fn l1_capacity(mut self, bytes: usize) -> Self {
        self.cfg.l1_bytes = bytes;
        self
    }

    /// The response header that names a response's tags (surrogate keys),
    /// separated by spaces or commas (default `Surrogate-Key`; `Cache-Tag`
    /// is the other common name). [`CacheHandle::purge_tag`] drops every
    /// entry that named a tag, on every instance.
    pub fn tag_header(mut self, name: HeaderName) -> Self {
        self.cfg.tags.header = name;
        self
    }

    /// Remove the tag header from what clients get (default on: tags are
    /// for the cache, as at a CDN).
    pub fn strip_tag_header(mut self, on: bool) -> Self {
        self.cfg.tags.strip = on;
        self
    }

    /// Checks the configuration and builds the layer: a duration or size
    /// that could overflow at request time is an error here.
    pub fn build(mut self) -> Result<ResponseCacheLayer, ConfigError> {
        self.cfg.check()?;
        Ok(ResponseCacheLayer {
            shared: Arc::new(Shared::new(self.store.cache_home(), self.cfg)),
        })
    }
}
