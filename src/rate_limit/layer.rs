//! [`RateLimitLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::config::{Config, CostFn, PlanFn, SkipFn};
use super::decision::RateLimitDecision;
use super::lease::Leases;
use super::plan::{FieldSettings, Plan, PlanSet};
use super::policy::Policy;
use super::service::RateLimit;
use super::store::memory::MemoryHome;
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
            plans: Vec::new(),
            plan_by: None,
            skip: None,
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
            lease: None,
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
    plans: Vec<(String, Vec<Policy>)>,
    plan_by: Option<Arc<PlanFn>>,
    skip: Option<Arc<SkipFn>>,
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
    lease: Option<(u64, Duration)>,
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

    /// Adds a named plan: its own policy set, for the requests on that
    /// [`Plan`] (say `free` and `pro`). The policies given with
    /// [`policy`](Self::policy) are the default set, for requests with no
    /// plan or one the layer does not know. A plan's counters are its own:
    /// a client that changes plan starts on the new plan's quota.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_layers::rate_limit::{Plan, Policy, RateLimitLayer};
    /// use tower_redis_layers::MemoryStore;
    ///
    /// # fn main() -> Result<(), tower_redis_layers::ConfigError> {
    /// let layer = RateLimitLayer::builder(MemoryStore::new())
    ///     .policy(Policy::gcra(60, Duration::from_secs(60))) // free
    ///     .plan("pro", [Policy::gcra(6000, Duration::from_secs(60))])
    ///     // Or leave out plan_by and insert a `Plan` extension upstream.
    ///     .plan_by(|req| {
    ///         let pro = req.headers.get("x-plan").is_some_and(|v| v == "pro");
    ///         pro.then(|| Plan::new("pro"))
    ///     })
    ///     .build()?;
    /// # drop(layer);
    /// # Ok(()) }
    /// ```
    pub fn plan(
        mut self,
        name: impl Into<String>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Self {
        self.plans
            .push((name.into(), policies.into_iter().collect()));
        self
    }

    /// Picks each request's plan (default: the request's [`Plan`] extension).
    /// Only trust what the client cannot choose: a plan from an authenticated
    /// principal, never a header the client sets freely.
    pub fn plan_by(
        mut self,
        plan: impl Fn(&RequestView<'_>) -> Option<Plan> + Send + Sync + 'static,
    ) -> Self {
        self.plan_by = Some(Arc::new(plan));
        self
    }

    /// Requests for which this returns `true` skip the limit (an allowlist:
    /// health checks, internal callers). They pass uncounted, without fields.
    pub fn skip(mut self, skip: impl Fn(&RequestView<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.skip = Some(Arc::new(skip));
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

    /// Takes the quota of busy clients in slices (opt-in): this instance
    /// leases up to `units` of a client's quota in one store call and
    /// admits that client's requests from the slice in process, for up to
    /// `max_age`, then gives back what it did not use. A hot client then
    /// costs one store call per slice instead of one per request.
    ///
    /// A slice is an ordinary all-or-nothing admission: every policy of
    /// the request's plan (a layer decides its policies together) grants
    /// as many units as all of them have left, up to `units`, so the fleet
    /// never admits more than the quota. Bounds, per policy:
    ///
    /// - Fixed window: at most the limit per window, exactly; a slice ends
    ///   with its window.
    /// - GCRA and token bucket: units count when their slice is taken and
    ///   are spent up to `max_age` later, so over any interval the fleet
    ///   admits at most what the policy admits over that interval plus
    ///   `max_age` (with `max_age` small against the period, a rounding).
    ///   Units given back whose time has passed stay spent.
    /// - Sliding log and sliding window counter: not supported (`build`
    ///   fails), their state cannot take units back.
    ///
    /// The price: while one instance holds units another needs, that one
    /// denies early, at most the units held elsewhere (one slice per other
    /// instance and client) and for at most `max_age`. Keep slices small
    /// against the limit (`units` of 1–5% of it, a `max_age` of tens of
    /// milliseconds) but large enough to last several store round trips at
    /// the client's rate: the requests that arrive while a slice is being
    /// taken wait for it. Each instance holds at most 65 536 leases.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
    /// use tower_redis_layers::MemoryStore;
    ///
    /// # fn main() -> Result<(), tower_redis_layers::ConfigError> {
    /// let layer = RateLimitLayer::builder(MemoryStore::new())
    ///     .policy(Policy::gcra(10_000, Duration::from_secs(60)))
    ///     .lease(100, Duration::from_millis(50))
    ///     .build()?;
    /// # drop(layer);
    /// # Ok(()) }
    /// ```
    pub fn lease(mut self, units: u64, max_age: Duration) -> Self {
        self.lease = Some((units, max_age));
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        crate::error::check_name("scope", &self.scope)?;
        let fields = FieldSettings {
            on_allowed: self.headers_on_allowed,
            legacy: self.legacy_headers,
            remember_denials: self.remember_denials,
        };
        let mut plans = vec![Arc::new(PlanSet::compile(
            &self.scope,
            "",
            &self.policies,
            fields,
        )?)];
        for (name, policies) in &self.plans {
            if name.is_empty() || plans.iter().any(|p| *p.name == **name) {
                return Err(ConfigError::new(format!(
                    "plan {name:?} is defined twice or has no name"
                )));
            }
            plans.push(Arc::new(PlanSet::compile(
                &self.scope,
                name,
                policies,
                fields,
            )?));
        }
        let store = self.store.rate_limit_home();
        let counters = Config::counters_of(&*store, &self.scope, &plans);
        let leases = match self.lease {
            Some((units, max_age)) => {
                super::lease::check(units, max_age, &plans)?;
                Some(Leases::new(store.clone(), units, max_age))
            }
            None => None,
        };
        Ok(RateLimitLayer {
            config: Arc::new(Config {
                store,
                fallback: MemoryHome::new(&MemoryStore::new()),
                scope: self.scope.into(),
                plans: plans.into(),
                plan_by: self.plan_by,
                skip: self.skip,
                key: self.key,
                cost: self.cost,
                missing_key: self.missing_key,
                on_failure: self.on_failure,
                shadow: self.shadow,
                rejection: self.rejection,
                warned: crate::warn::Throttle::default(),
                warned_missing_key: std::sync::Once::new(),
                warned_unknown_plan: std::sync::Once::new(),
                counters,
                warned_twice: std::sync::Once::new(),
                leases,
            }),
        })
    }
}
