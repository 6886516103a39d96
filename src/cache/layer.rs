//! [`ResponseCacheLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use super::handle::CacheHandle;
use super::key::KeyRules;
use super::policy::Rules;
use super::service::ResponseCache;
use super::shared::{Settings, Shared};
use super::store::CacheStore;
use crate::error::ConfigError;

/// How request `Cache-Control` directives are treated.
///
/// A client must not be able to force origin load: by default they are
/// ignored, as most CDNs do. With [`Honor`](Self::Honor), `no-cache` and
/// `max-age=0` revalidate an entry only once it is at least `min_age` old,
/// and concurrent forced requests still collapse into one origin call; so
/// one key costs the origin at most one call per `min_age` however hard
/// clients push. `no-store` then keeps the request's response out of the
/// cache, and `only-if-cached` answers a miss with 504 without asking the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RequestDirectives {
    /// Request directives change nothing (default).
    #[default]
    Ignore,
    /// Honour `no-cache`, `max-age=0` and `no-store`, with a floor on revalidation.
    Honor {
        /// Entries younger than this are served even to a `no-cache` request.
        min_age: Duration,
    },
}

/// What the layer does when the store fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// A failed lookup is a miss: the origin serves (default). An outage of
    /// the cache is not an outage of the service.
    #[default]
    Open,
    /// A failed lookup is answered 503 with `Retry-After`, without calling
    /// the origin: for origins that must be shielded from uncached load.
    Closed,
}

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
            rules: Rules {
                default_ttl: None,
                negative_ttl: None,
                jitter: 0.1,
                keep_stale: Duration::from_secs(60),
                strip_set_cookie: false,
                cache_authorized: false,
            },
            key: KeyRules {
                scope: "default".into(),
                ..KeyRules::default()
            },
            max_body: 1 << 20,
            max_variants: 16,
            lock_ttl: Duration::from_secs(5),
            wait: Duration::from_secs(3),
            name: "trl".into(),
            unkeyed: [
                "x-forwarded-host",
                "x-forwarded-server",
                "x-forwarded-prefix",
                "x-host",
                "x-original-url",
                "x-rewrite-url",
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .into_iter()
            .map(HeaderName::from_static)
            .collect(),
            directives: RequestDirectives::default(),
            invalidate_unsafe: true,
            on_failure: FailurePolicy::default(),
            l1: None,
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
    rules: Rules,
    key: KeyRules,
    max_body: usize,
    max_variants: u32,
    lock_ttl: Duration,
    wait: Duration,
    name: String,
    unkeyed: Vec<HeaderName>,
    directives: RequestDirectives,
    invalidate_unsafe: bool,
    on_failure: FailurePolicy,
    l1: Option<(usize, Duration)>,
}

impl std::fmt::Debug for ResponseCacheLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCacheLayerBuilder")
            .field("rules", &self.rules)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResponseCacheLayerBuilder {
    /// Freshness of a storable response that states none (no `s-maxage`,
    /// `max-age` or `Expires`): the application's TTL. Default: none, such
    /// responses are not stored (a pure HTTP cache).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.rules.default_ttl = Some(ttl);
        self
    }

    /// Store 404, 405, 410, 414 and 501 for at most this long (default: never).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.rules.negative_ttl = Some(ttl);
        self
    }

    /// Shortens the layer's own TTLs by a random fraction up to this (default
    /// 0.1), so entries filled together do not expire together. Lifetimes
    /// the origin states are kept exactly.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.rules.jitter = fraction;
        self
    }

    /// How long an entry with a validator (`ETag`, `Last-Modified`) is kept
    /// once stale, to be revalidated with a conditional request (default 60 s).
    pub fn keep_stale(mut self, d: Duration) -> Self {
        self.rules.keep_stale = d;
        self
    }

    /// Store responses carrying `Set-Cookie`, without that field (default:
    /// such responses are not stored). The client that caused the fill still
    /// gets its cookie; no other client ever does.
    pub fn store_set_cookie_responses(mut self, on: bool) -> Self {
        self.rules.strip_set_cookie = on;
        self
    }

    /// Look up requests with `Authorization` and store their responses when
    /// the response allows it (`public`, `s-maxage`, `must-revalidate`; RFC
    /// 9111 §3.5). Default: such requests bypass the cache.
    pub fn cache_authorized(mut self, on: bool) -> Self {
        self.rules.cache_authorized = on;
        self
    }

    /// Put the host in the key (default: off, one origin per layer).
    pub fn key_host(mut self, on: bool) -> Self {
        self.key.host = on;
        self
    }

    /// Sort query parameters before keying (default off).
    pub fn sort_query(mut self, on: bool) -> Self {
        self.key.sort_query = on;
        self
    }

    /// Leave this query parameter out of the key (`utm_source`, ...).
    pub fn ignore_query_param(mut self, name: impl Into<String>) -> Self {
        self.key.ignore_params.push(name.into());
        self
    }

    /// Key every response on this request header, as if it always `Vary`d on it.
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.key.headers.push(name);
        self
    }

    /// A request header the key ignores but an origin might reflect: a
    /// request carrying it may be answered from the cache, but its response
    /// is never stored (default list: `X-Forwarded-Host`, `X-Host`,
    /// `X-Original-URL`, method overrides, ...). Keying on the header with
    /// [`key_header`](Self::key_header) lifts this.
    pub fn unkeyed_header(mut self, name: HeaderName) -> Self {
        self.unkeyed.push(name);
        self
    }

    /// Separates this layer's entries from other layers on the same store
    /// (default `default`; `[A-Za-z0-9_.-]`).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.key.scope = scope.into();
        self
    }

    /// Largest body stored (default 1 MiB); larger responses stream through unstored.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Most variants (`Vary`) kept per URL (default 16); the soonest to
    /// expire are dropped first.
    pub fn max_variants(mut self, n: u32) -> Self {
        self.max_variants = n;
        self
    }

    /// How long a fill lock is held at most (default 5 s).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long a request waits for another's fill before it asks the
    /// origin itself (default 3 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The cache's name in `Cache-Status` (default `trl`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How request `Cache-Control` directives are treated (default: ignored).
    pub fn request_directives(mut self, policy: RequestDirectives) -> Self {
        self.directives = policy;
        self
    }

    /// Invalidate on successful POST, PUT, PATCH and DELETE (default on).
    pub fn invalidate_on_unsafe(mut self, on: bool) -> Self {
        self.invalidate_unsafe = on;
        self
    }

    /// What to do when the store fails or misses its deadline (default
    /// [`FailurePolicy::Open`]: the origin serves).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Keeps up to `max_entries` fresh entries in process as well, each for
    /// at most `max_age`, so a hot hit costs no round trip (default: off).
    ///
    /// Needs a [`RedisStore`](crate::RedisStore) built from a URL, and
    /// `build` to run inside a Tokio runtime: copies are kept only while a
    /// pub/sub subscription to the store's invalidation channel is up, and
    /// every write and purge in the fleet drops them. Invalidation then
    /// reaches other instances' copies after the pub/sub delivery delay, not
    /// before the write's response; `max_age` bounds staleness if a message
    /// is lost.
    pub fn l1(mut self, max_entries: usize, max_age: Duration) -> Self {
        self.l1 = Some((max_entries, max_age));
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(mut self) -> Result<ResponseCacheLayer, ConfigError> {
        crate::error::check_name("scope", &self.key.scope)?;
        if !(0.0..1.0).contains(&self.rules.jitter) {
            return Err(ConfigError::new("jitter must be a fraction in [0, 1)"));
        }
        if self.max_body > u32::MAX as usize {
            return Err(ConfigError::new("max_body_size must be at most 4 GiB"));
        }
        if self.max_variants == 0 {
            return Err(ConfigError::new("max_variants must be at least 1"));
        }
        if self.lock_ttl < Duration::from_millis(1) {
            return Err(ConfigError::new("lock_ttl must be at least 1 ms"));
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-:/".contains(&b))
            || !self.name.as_bytes()[0].is_ascii_alphabetic()
        {
            return Err(ConfigError::new(format!(
                "cache name {:?} must be a structured-field token",
                self.name
            )));
        }
        self.key.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self.key.headers.dedup();
        Ok(ResponseCacheLayer {
            shared: Arc::new(Shared::new(Settings {
                home: self.store.cache_home(),
                rules: self.rules,
                key: self.key,
                max_body: self.max_body,
                max_variants: self.max_variants,
                lock_ttl: self.lock_ttl,
                wait: self.wait,
                name: self.name,
                unkeyed: self.unkeyed,
                directives: self.directives,
                invalidate_unsafe: self.invalidate_unsafe,
                on_failure: self.on_failure,
                l1: self.l1.filter(|(n, age)| *n > 0 && !age.is_zero()),
            })),
        })
    }
}
