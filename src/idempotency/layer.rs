//! [`IdempotencyLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tower_layer::Layer;

use super::config::{Config, Conflict, FailurePolicy};

use super::policy::{
    check_allow_list, default_store_policy, SharedPolicy, StorePolicy, DEFAULT_STORED_HEADERS,
};
use super::service::Idempotency;
use super::store::IdempotencyStore;
use crate::error::ConfigError;
use crate::key::{ClientKey, Header, KeyError, KeyExtractor, KeyExtractorExt, RequestView};

/// Runs a request with an `Idempotency-Key` once and replays its response
/// to retries; see the [module docs](super).
#[derive(Clone, Debug)]
#[must_use]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

/// The default principal: the hashed `Authorization` header, else one
/// anonymous principal shared by every unauthenticated client.
fn default_principal() -> impl KeyExtractor {
    Header::new("authorization")
        .max_len(8192)
        .or(|_: &RequestView<'_>| Ok::<_, KeyError>(ClientKey::new("anonymous", b"")))
}

impl IdempotencyLayer {
    /// Starts building a layer whose records live in `store`.
    pub fn builder(store: impl IdempotencyStore) -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder {
            store: Arc::new(store),
            scope: "default".into(),
            principal: Arc::new(default_principal()),
            methods: vec![Method::POST, Method::PATCH],
            required: false,
            max_body: 1 << 20,
            max_stored_body: 1 << 20,
            record_ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(10),
            conflict: Conflict::default(),
            on_failure: FailurePolicy::default(),
            policy: Arc::new(default_store_policy),
            stored_headers: DEFAULT_STORED_HEADERS.to_vec(),
        }
    }
}

#[cfg(test)]
impl IdempotencyLayer {
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.clone()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self.config.clone())
    }
}

/// Configures an [`IdempotencyLayer`]; [`build`](Self::build) checks it.
#[must_use]
pub struct IdempotencyLayerBuilder {
    store: Arc<dyn IdempotencyStore>,
    scope: String,
    principal: Arc<dyn KeyExtractor>,
    methods: Vec<Method>,
    required: bool,
    max_body: usize,
    max_stored_body: usize,
    record_ttl: Duration,
    lease: Duration,
    conflict: Conflict,
    on_failure: FailurePolicy,
    policy: SharedPolicy,
    stored_headers: Vec<HeaderName>,
}

impl fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayerBuilder {
    /// Separates this layer's records from other idempotency layers on the
    /// same store (default `default`; `[A-Za-z0-9_.-]`). The record of a key
    /// is scoped by the path the layer sees; inside axum's `Router::nest`
    /// that is the path with the nest prefix stripped, so give layers in
    /// different nests scopes of their own.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Whose records a request may see: e.g. [`Header::new("x-api-key")`](Header)
    /// or a closure reading the authenticated user from the extensions.
    /// Default: the hashed `Authorization` header, else one anonymous principal.
    /// A request whose principal is missing or invalid is answered 400.
    pub fn principal(mut self, principal: impl KeyExtractor) -> Self {
        self.principal = Arc::new(principal);
        self
    }

    /// The methods the layer covers (default POST and PATCH); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Answer 400 to a covered request without `Idempotency-Key` (default:
    /// it passes through, unprotected).
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// The largest request body read to fingerprint a request (default
    /// 1 MiB); a larger one is answered 413.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB). A larger response
    /// is sent on, not stored, and its key released.
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.max_stored_body = bytes;
        self
    }

    /// How long a completed record is replayed (default 24 h).
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// How long a reservation outlives a process that died holding it
    /// (default 10 s). Renewed every third of it while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What a request meets while its key is in progress (default 409).
    pub fn on_conflict(mut self, conflict: Conflict) -> Self {
        self.conflict = conflict;
        self
    }

    /// What to do when the store fails (default 503).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Which responses are stored (default [`default_store_policy`]).
    ///
    /// [`default_store_policy`]: super::default_store_policy
    pub fn store_policy(mut self, policy: impl StorePolicy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The response headers stored and replayed (default
    /// [`DEFAULT_STORED_HEADERS`](super::DEFAULT_STORED_HEADERS)).
    /// `Set-Cookie`, hop-by-hop headers and `Content-Length` are refused.
    pub fn stored_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.stored_headers = names.into_iter().collect();
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<IdempotencyLayer, ConfigError> {
        crate::error::check_name("scope", &self.scope)?;
        if self.methods.is_empty() {
            return Err(ConfigError::new(
                "an idempotency layer needs at least one method",
            ));
        }
        if let Some(m) = self.methods.iter().find(|m| m.is_safe()) {
            return Err(ConfigError::new(format!(
                "{m} is a safe method; idempotency keys are for unsafe ones (POST, PATCH, ...)"
            )));
        }
        if self.lease < Duration::from_millis(30) {
            return Err(ConfigError::new("the lease must be at least 30 ms"));
        }
        if self.record_ttl < self.lease {
            return Err(ConfigError::new(
                "the record TTL must be at least the lease",
            ));
        }
        if self.max_stored_body > u32::MAX as usize {
            return Err(ConfigError::new("max_stored_body must fit in 4 GiB"));
        }
        check_allow_list(&self.stored_headers).map_err(ConfigError::new)?;
        Ok(IdempotencyLayer {
            config: Arc::new(Config {
                home: self.store.idempotency_home(),
                scope: self.scope.into(),
                principal: self.principal,
                methods: self.methods,
                required: self.required,
                max_body: self.max_body,
                max_stored_body: self.max_stored_body,
                record_ttl: self.record_ttl,
                lease: self.lease,
                conflict: self.conflict,
                on_failure: self.on_failure,
                policy: self.policy,
                stored_headers: self.stored_headers,
                warned: crate::warn::Throttle::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn builder_refuses_what_cannot_work() {
        let b = || IdempotencyLayer::builder(MemoryStore::new());
        assert!(b().build().is_ok());
        let e = b().methods([Method::GET]).build().unwrap_err();
        assert!(e.to_string().contains("safe method"), "{e}");
        assert!(b().methods([]).build().is_err());
        assert!(b().lease(Duration::from_millis(1)).build().is_err());
        assert!(b().record_ttl(Duration::from_secs(1)).build().is_err());
        let e = b()
            .stored_headers([http::header::SET_COOKIE])
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("set-cookie"), "{e}");
    }
}
