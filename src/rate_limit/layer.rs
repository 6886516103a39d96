//! [`RateLimitLayer`] and its builder.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::decision::{PolicyMeta, RateLimitDecision};
use super::denials::Denials;
use super::headers::{render_names, render_policy, HeaderConfig};
use super::policy::{Compiled, Policy};
use super::service::RateLimit;
use super::store::memory::MemoryHome;
use super::store::RateLimitHome;
use super::store::RateLimitStore;
use crate::error::ConfigError;
use crate::key::{ClientKey, KeyExtractor, PeerIp, RequestView};
use crate::store::memory::MemoryStore;

/// What to do with a request that has no client key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer 400 with a problem document (default): never a silently shared bucket.
    #[default]
    Reject,
    /// Let the request through, unlimited.
    Allow,
    /// Count it against this key (one bucket for every keyless request).
    Fallback(ClientKey),
}

/// What to do when the store fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through (default, like Envoy and Stripe): an outage of
    /// the limiter's store is not an outage of the service.
    #[default]
    Open,
    /// Refuse with 503 and `Retry-After`.
    Closed,
    /// Decide with an in-process limiter with the same policies, per instance
    /// (so the fleet admits up to instances × limit while the store is down).
    Local,
}

type CostFn = dyn Fn(&RequestView<'_>) -> u64 + Send + Sync;

/// Builds the rejection response of an over-quota HTTP request. Implemented
/// by closures `Fn(&RateLimitDecision) -> Response<Bytes>`. The layer adds the
/// rate-limit fields (`Retry-After`, `RateLimit`, ...) the response lacks.
pub trait RejectionResponse: Send + Sync + 'static {
    /// The response for a request over its quota.
    fn response(&self, decision: &RateLimitDecision) -> Response<Bytes>;
}

impl<F> RejectionResponse for F
where
    F: Fn(&RateLimitDecision) -> Response<Bytes> + Send + Sync + 'static,
{
    fn response(&self, decision: &RateLimitDecision) -> Response<Bytes> {
        self(decision)
    }
}

pub(crate) struct Config {
    pub(crate) store: Arc<dyn RateLimitHome>,
    pub(crate) fallback: MemoryHome,
    pub(crate) scope: Arc<str>,
    pub(crate) policies: Arc<[Compiled]>,
    pub(crate) meta: Arc<[PolicyMeta]>,
    /// The smallest capacity of any policy: a dearer request can never pass.
    pub(crate) max_cost: u64,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) missing_key: MissingKey,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) shadow: bool,
    pub(crate) headers: HeaderConfig,
    pub(crate) denials: Option<Denials>,
    pub(crate) rejection: Option<Arc<dyn RejectionResponse>>,
    pub(crate) warned: crate::warn::Throttle,
    pub(crate) warned_missing_key: std::sync::Once,
    /// One hash per (store counters, scope, policy) this layer charges.
    pub(crate) counters: Vec<u64>,
    pub(crate) warned_twice: std::sync::Once,
}

/// The counters (store, scope, policy) the rate-limit layers a request
/// passed have charged: two stacked layers charging the same one count
/// every request twice.
#[derive(Clone, Debug, Default)]
struct Counted(Vec<u64>);

impl Config {
    /// Records this layer's counters on the request; warns once when an
    /// outer layer already charged one of them.
    pub(crate) fn mark_counted(&self, ext: &mut http::Extensions) {
        let counted = ext.get_or_insert_default::<Counted>();
        if counted.0.iter().any(|c| self.counters.contains(c)) {
            self.warned_twice.call_once(|| {
                tracing::warn!(
                    layer = "rate limit",
                    scope = %self.scope,
                    "two stacked rate-limit layers share scope {:?} and a policy on one \
                     store: every request is counted twice. Give each layer its own .scope()",
                    self.scope
                );
            });
        }
        counted.0.extend_from_slice(&self.counters);
    }

    /// Once per layer: every request without a key is rejected, which is
    /// usually a set-up mistake (no peer address set by the server).
    pub(crate) fn warn_missing_key(&self, looked_for: &str) {
        self.warned_missing_key.call_once(|| {
            tracing::warn!(
                layer = "rate limit",
                scope = %self.scope,
                "rate limit: a request carried no client key (looked for {looked_for}); \
                 it was rejected with 400 (MissingKey::Reject). If every request is \
                 rejected, the server sets no peer address: on axum enable the `axum` \
                 feature and serve with into_make_service_with_connect_info::<SocketAddr>(), \
                 or choose MissingKey::Fallback / Allow"
            );
        });
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("scope", &self.scope)
            .field("policies", &self.policies)
            .field("missing_key", &self.missing_key)
            .field("on_failure", &self.on_failure)
            .field("shadow", &self.shadow)
            .field("headers", &self.headers)
            .field("remember_denials", &self.denials.is_some())
            .finish_non_exhaustive()
    }
}

/// Applies a fleet-wide quota to every request; see the [module docs](super).
#[derive(Clone, Debug)]
#[must_use]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl RateLimitLayer {
    /// Starts building a layer whose state lives in `store`.
    pub fn builder(store: impl RateLimitStore) -> RateLimitLayerBuilder {
        RateLimitLayerBuilder {
            store: Arc::new(store),
            policies: Vec::new(),
            scope: "default".into(),
            key: Arc::new(PeerIp::new()),
            cost: None,
            missing_key: MissingKey::default(),
            on_failure: FailurePolicy::default(),
            shadow: false,
            headers_on_allowed: true,
            legacy_headers: false,
            remember_denials: true,
            rejection: None,
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.config.clone())
    }
}

/// Configures a [`RateLimitLayer`]; [`build`](Self::build) checks it.
#[must_use]
pub struct RateLimitLayerBuilder {
    store: Arc<dyn RateLimitStore>,
    policies: Vec<Policy>,
    scope: String,
    key: Arc<dyn KeyExtractor>,
    cost: Option<Arc<CostFn>>,
    missing_key: MissingKey,
    on_failure: FailurePolicy,
    shadow: bool,
    headers_on_allowed: bool,
    legacy_headers: bool,
    remember_denials: bool,
    rejection: Option<Arc<dyn RejectionResponse>>,
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("policies", &self.policies)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Adds a policy. Several policies are decided together, all or nothing:
    /// a request denied by one consumes nothing from the others.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies.push(policy);
        self
    }

    /// Who a request counts against (default: [`PeerIp`]).
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Separates this layer's counters from other layers on the same store
    /// with the same policy names (default `default`; `[A-Za-z0-9_.-]`).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Weighs each request (default 1 unit). A cost above a policy's capacity
    /// is answered at once with 429 and no `Retry-After`: waiting cannot help.
    pub fn cost(mut self, cost: impl Fn(&RequestView<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// What to do with a request that has no client key (default: 400).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.missing_key = policy;
        self
    }

    /// What to do when the store fails (default: let requests through).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// Decide, log and send the headers, but never reject (default off).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Send `RateLimit-Policy` and `RateLimit` on admitted responses too
    /// (default on; rejections always carry them).
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }

    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset` (default off).
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Remember denials in process until they could pass (default on).
    pub fn remember_denials(mut self, on: bool) -> Self {
        self.remember_denials = on;
        self
    }

    /// Replaces the default problem+json body of HTTP rejections.
    pub fn rejection(mut self, rejection: impl RejectionResponse) -> Self {
        self.rejection = Some(Arc::new(rejection));
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if self.policies.is_empty() {
            return Err(ConfigError::new("a rate limit needs at least one policy"));
        }
        crate::error::check_name("scope", &self.scope)?;
        let compiled: Vec<Compiled> = self
            .policies
            .iter()
            .map(Policy::compile)
            .collect::<Result<_, _>>()?;
        for (i, p) in compiled.iter().enumerate() {
            if compiled[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::new(format!(
                    "two policies are named {:?}; name them apart with Policy::named",
                    p.name
                )));
            }
        }
        let meta: Vec<PolicyMeta> = compiled
            .iter()
            .map(|p| PolicyMeta {
                name: p.name.as_str().into(),
                limit: p.limit,
                window: std::time::Duration::from_micros(p.period_us),
            })
            .collect();
        let max_cost = compiled.iter().map(|p| p.capacity).min().unwrap_or(0);
        let headers = HeaderConfig {
            policy: render_policy(&meta),
            names: render_names(&meta),
            on_allowed: self.headers_on_allowed,
            legacy: self.legacy_headers,
        };
        let store = self.store.rate_limit_home();
        let counters = compiled
            .iter()
            .map(|p| {
                use std::hash::{BuildHasher, BuildHasherDefault};
                BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                    .hash_one((store.counters(), &self.scope, &p.key_suffix))
            })
            .collect();
        Ok(RateLimitLayer {
            config: Arc::new(Config {
                store,
                fallback: MemoryHome::new(&MemoryStore::new()),
                scope: self.scope.into(),
                policies: compiled.into(),
                meta: meta.into(),
                max_cost,
                key: self.key,
                cost: self.cost,
                missing_key: self.missing_key,
                on_failure: self.on_failure,
                shadow: self.shadow,
                headers,
                denials: self.remember_denials.then(Denials::default),
                rejection: self.rejection,
                warned: crate::warn::Throttle::default(),
                warned_missing_key: std::sync::Once::new(),
                counters,
                warned_twice: std::sync::Once::new(),
            }),
        })
    }
}
