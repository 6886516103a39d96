//! [`IdempotencyLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tower_layer::Layer;

use super::config::{Config, Conflict, FailurePolicy, HangUp, Settings};
use super::policy::{default_store_policy, StorePolicy, DEFAULT_STORED_HEADERS};
use super::response::RejectionResponse;
use super::service::Idempotency;
use super::store::{IdempotencyStore, Replicas};
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
            settings: Settings {
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
                hang_up: HangUp::default(),
                replicas: None,
                policy: Arc::new(default_store_policy),
                stored_headers: DEFAULT_STORED_HEADERS.to_vec(),
                rejection: None,
            },
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
    settings: Settings,
}

impl fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("settings", &self.settings)
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
        let scope: String = scope.into();
        self.settings.scope = scope.into();
        self
    }

    /// Whose records a request may see: e.g. [`Header::new("x-api-key")`](Header)
    /// or a closure reading the authenticated user from the extensions.
    /// Default: the hashed `Authorization` header, else one anonymous principal.
    /// A request whose principal is missing or invalid is answered 400.
    pub fn principal(mut self, principal: impl KeyExtractor) -> Self {
        self.settings.principal = Arc::new(principal);
        self
    }

    /// The methods the layer covers (default POST and PATCH); others pass through.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// Answer 400 to a covered request without `Idempotency-Key` (default:
    /// it passes through, unprotected).
    pub fn required(mut self, required: bool) -> Self {
        self.settings.required = required;
        self
    }

    /// The largest request body read to fingerprint a request (default
    /// 1 MiB); a larger one is answered 413. The layer holds a covered
    /// request's body whole while it runs, so keep this to what a handler
    /// may really receive; any value is safe (`usize::MAX` means no cap).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.settings.max_body = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB). A larger response
    /// is sent on, not stored, and its key released.
    pub fn max_stored_body(mut self, bytes: usize) -> Self {
        self.settings.max_stored_body = bytes;
        self
    }

    /// How long a completed record is replayed (default 24 h; from the
    /// lease to 365 days).
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.settings.record_ttl = ttl;
        self
    }

    /// How long a reservation outlives a process that died holding it
    /// (default 10 s; from 30 ms to 365 days). Renewed every third of it
    /// while the handler runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// What a request meets while its key is in progress (default 409).
    pub fn on_conflict(mut self, conflict: Conflict) -> Self {
        self.settings.conflict = conflict;
        self
    }

    /// What to do when the store fails (default 503).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.settings.on_failure = policy;
        self
    }

    /// Which responses are stored (default [`default_store_policy`]).
    ///
    /// [`default_store_policy`]: super::default_store_policy
    pub fn store_policy(mut self, policy: impl StorePolicy) -> Self {
        self.settings.policy = Arc::new(policy);
        self
    }

    /// The response headers stored and replayed (default
    /// [`DEFAULT_STORED_HEADERS`](super::DEFAULT_STORED_HEADERS)).
    /// `Set-Cookie`, hop-by-hop headers and `Content-Length` are refused.
    pub fn stored_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings.stored_headers = names.into_iter().collect();
        self
    }

    /// What a first execution does when its client goes away (default
    /// [`HangUp::Finish`]: it runs to the end in a task of its own).
    pub fn on_hang_up(mut self, hang_up: HangUp) -> Self {
        self.settings.hang_up = hang_up;
        self
    }

    /// After storing a response, wait until `n` replicas have it (Redis
    /// `WAIT n timeout`) before answering; see "Replicas" in the
    /// [module docs](super). Default: off. `n` at least 1, `timeout` from
    /// 1 ms to 365 days (and best kept under the connection's response
    /// timeout, 500 ms by default). A no-op on a [`MemoryStore`](crate::MemoryStore).
    pub fn wait_replicas(mut self, n: u32, timeout: Duration) -> Self {
        self.settings.replicas = Some(Replicas { n, timeout });
        self
    }

    /// Replaces the default problem+json answers the layer writes itself
    /// (400, 409, 413, 422, 500, 503); see [`RejectionResponse`]. gRPC
    /// requests still get a gRPC status.
    pub fn rejection(mut self, rejection: impl RejectionResponse) -> Self {
        self.settings.rejection = Some(Arc::new(rejection));
        self
    }

    /// Checks the configuration and builds the layer: a setting that cannot
    /// work, or that could overflow at request time (a duration over 365
    /// days, say), is a [`ConfigError`].
    pub fn build(self) -> Result<IdempotencyLayer, ConfigError> {
        self.settings.check()?;
        let home = self.store.idempotency_home();
        Ok(IdempotencyLayer {
            config: Arc::new(Config::new(home, self.settings)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn b() -> IdempotencyLayerBuilder {
        IdempotencyLayer::builder(MemoryStore::new())
    }

    fn refused(b: IdempotencyLayerBuilder, why: &str) {
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains(why), "{e} (expected {why:?})");
    }

    #[test]
    fn builder_refuses_what_cannot_work() {
        assert!(b().build().is_ok());
        refused(b().methods([Method::GET]), "safe method");
        refused(b().methods([]), "at least one method");
        refused(b().scope("a b"), "scope");
        refused(b().lease(Duration::from_millis(1)), "at least 30 ms");
        refused(b().record_ttl(Duration::from_secs(1)), "at least the lease");
        refused(b().stored_headers([http::header::SET_COOKIE]), "set-cookie");
        refused(b().max_stored_body(u32::MAX as usize + 1), "4 GiB");
        refused(
            b().wait_replicas(0, Duration::from_millis(10)),
            "at least one replica",
        );
        refused(b().wait_replicas(1, Duration::ZERO), "forever");
    }

    #[test]
    fn durations_that_would_overflow_are_refused_at_build() {
        refused(
            b().record_ttl(Duration::MAX),
            "record TTL must be at most 365 days",
        );
        refused(
            b().lease(Duration::MAX).record_ttl(Duration::MAX),
            "lease must be at most 365 days",
        );
        refused(
            b().on_conflict(Conflict::Wait(Duration::MAX)),
            "Conflict::Wait must be at most 365 days",
        );
        refused(
            b().wait_replicas(1, Duration::MAX),
            "wait_replicas timeout must be at most 365 days",
        );
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(b()
            .record_ttl(year)
            .lease(year)
            .on_conflict(Conflict::Wait(year))
            .wait_replicas(1, year)
            .build()
            .is_ok());
    }
}
