//! What a built [`RateLimitLayer`](super::RateLimitLayer) holds, shared by
//! its services: the store's home, the plans, and the per-request choices.

use std::fmt;
use std::sync::{Arc, Once};

use super::layer::{FailurePolicy, MissingKey, RejectionResponse};
use super::lease::Leases;
use super::plan::{Plan, PlanSet};
use super::store::memory::MemoryHome;
use super::store::RateLimitHome;
use crate::key::{KeyExtractor, RequestView};

pub(crate) type CostFn = dyn Fn(&RequestView<'_>) -> u64 + Send + Sync;
pub(crate) type PlanFn = dyn Fn(&RequestView<'_>) -> Option<Plan> + Send + Sync;
pub(crate) type SkipFn = dyn Fn(&RequestView<'_>) -> bool + Send + Sync;

pub(crate) struct Config {
    pub(crate) store: Arc<dyn RateLimitHome>,
    pub(crate) fallback: MemoryHome,
    pub(crate) scope: Arc<str>,
    /// The default policy set first, then the named plans.
    pub(crate) plans: Box<[Arc<PlanSet>]>,
    pub(crate) plan_by: Option<Arc<PlanFn>>,
    pub(crate) skip: Option<Arc<SkipFn>>,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) missing_key: MissingKey,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) shadow: bool,
    pub(crate) rejection: Option<Arc<dyn RejectionResponse>>,
    pub(crate) warned: crate::warn::Throttle,
    pub(crate) warned_missing_key: Once,
    pub(crate) warned_unknown_plan: Once,
    /// One hash per (store counters, scope, plan policy) this layer charges.
    pub(crate) counters: Vec<u64>,
    pub(crate) warned_twice: Once,
    /// Local quota leases, when the layer takes them.
    pub(crate) leases: Option<Arc<Leases>>,
}

/// The counters (store, scope, policy) the rate-limit layers a request
/// passed have charged: two stacked layers charging the same one count
/// every request twice.
#[derive(Clone, Debug, Default)]
struct Counted {
    /// The first ones in place: a request passes a few layers of a few
    /// policies, and this costs it no allocation but the extension's box.
    first: [u64; 4],
    len: usize,
    more: Vec<u64>,
}

impl Counted {
    fn iter(&self) -> impl Iterator<Item = &u64> {
        self.first[..self.len].iter().chain(&self.more)
    }

    fn extend(&mut self, counters: &[u64]) {
        for &c in counters {
            match self.first.get_mut(self.len) {
                Some(slot) => {
                    *slot = c;
                    self.len += 1;
                }
                None => self.more.push(c),
            }
        }
    }
}

impl Config {
    /// The hashes of the counters the layer's plans charge on `store`.
    pub(crate) fn counters_of(
        store: &dyn RateLimitHome,
        scope: &str,
        plans: &[Arc<PlanSet>],
    ) -> Vec<u64> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        plans
            .iter()
            .flat_map(|plan| plan.policies.iter())
            .map(|p| hasher.hash_one((store.counters(), scope, &p.key_suffix)))
            .collect()
    }

    /// The policy set of `req`: its plan (from `plan_by`, else a [`Plan`]
    /// extension) when the layer knows it, else the default set.
    pub(crate) fn plan_of(&self, req: &RequestView<'_>) -> &Arc<PlanSet> {
        if self.plans.len() > 1 {
            let chosen = match &self.plan_by {
                Some(f) => f(req),
                None => req.extensions.get::<Plan>().cloned(),
            };
            if let Some(plan) = chosen {
                match self.plans[1..].iter().find(|p| *p.name == *plan.name()) {
                    Some(set) => return set,
                    None => self.warned_unknown_plan.call_once(|| {
                        tracing::warn!(
                            layer = "rate limit",
                            scope = %self.scope,
                            plan = plan.name(),
                            "rate limit: a request named a plan this layer does not know; \
                             it gets the default policies"
                        );
                    }),
                }
            }
        }
        &self.plans[0]
    }

    /// Whether `req` skips the limit (an allowlist).
    pub(crate) fn skips(&self, req: &RequestView<'_>) -> bool {
        self.skip.as_ref().is_some_and(|f| f(req))
    }

    /// Records this layer's counters on the request; warns once when an
    /// outer layer already charged one of them.
    pub(crate) fn mark_counted(&self, ext: &mut http::Extensions) {
        let counted = ext.get_or_insert_default::<Counted>();
        if counted.iter().any(|c| self.counters.contains(c)) {
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
        counted.extend(&self.counters);
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
            .field("plans", &self.plans)
            .field("missing_key", &self.missing_key)
            .field("on_failure", &self.on_failure)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Counted;

    #[test]
    fn counted_keeps_every_counter_past_the_ones_in_place() {
        let mut c = Counted::default();
        c.extend(&[1, 2, 3]);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        c.extend(&[4, 5, 6]);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert!(c.iter().any(|&x| x == 6));
        assert!(!c.iter().any(|&x| x == 7));
    }
}
