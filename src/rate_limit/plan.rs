//! Plans: named policy sets a request picks from (free, pro, ...), fixed
//! when the layer is built so that headers and store keys stay stable.

use std::borrow::Cow;
use std::sync::Arc;

use super::decision::{DecisionSource, PolicyMeta, RateLimitDecision};
use super::denials::Denials;
use super::headers::{render_names, render_policy, HeaderConfig};
use super::policy::{Compiled, Policy};
use crate::error::ConfigError;
use crate::telemetry::{Count, Outcomes};

/// The plan a request is on: picks one of the layer's named policy sets
/// ([`RateLimitLayerBuilder::plan`](super::RateLimitLayerBuilder::plan)).
///
/// Put it in the request's extensions (an authentication layer that knows
/// the customer's plan does), or return it from
/// [`plan_by`](super::RateLimitLayerBuilder::plan_by). A request with no plan,
/// or a plan the layer does not know, gets the layer's default policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan(Cow<'static, str>);

impl Plan {
    /// The plan named `name`.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// The plan's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// One compiled policy set: the default one, or a named plan.
#[derive(Debug)]
pub(crate) struct PlanSet {
    /// Empty for the default set.
    pub(crate) name: Arc<str>,
    pub(crate) policies: Arc<[Compiled]>,
    pub(crate) meta: Arc<[PolicyMeta]>,
    /// The smallest capacity of any policy: a dearer request can never pass.
    pub(crate) max_cost: u64,
    pub(crate) headers: HeaderConfig,
    /// Denials of this plan remembered in process (when the layer does).
    pub(crate) denials: Option<Denials>,
    outcomes: Outcomes,
    /// Denials per policy, in policy order.
    denied_by: Box<[Count]>,
}

/// What happened to a request, as the metrics count it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Allowed,
    Denied,
    ShadowDenied,
    FailedOpen,
    FailedClosed,
    LocalAllowed,
    LocalDenied,
    RememberedDenied,
    NoKey,
    BadKey,
    CostTooHigh,
    Skipped,
}

const OUTCOMES: [&str; 12] = [
    "allowed",
    "denied",
    "shadow_denied",
    "failed_open",
    "failed_closed",
    "local_allowed",
    "local_denied",
    "remembered_denied",
    "no_key",
    "bad_key",
    "cost_too_high",
    "skipped",
];

/// How the fields are sent, the same for every plan of a layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldSettings {
    pub(crate) on_allowed: bool,
    pub(crate) legacy: bool,
    pub(crate) remember_denials: bool,
}

impl PlanSet {
    /// Compiles `policies` as the plan `name` ("" for the default set). A
    /// named plan's store keys carry its name, so plans never share counters.
    pub(crate) fn compile(
        scope: &str,
        name: &str,
        policies: &[Policy],
        fields: FieldSettings,
    ) -> Result<Self, ConfigError> {
        let what = if name.is_empty() {
            "a rate limit".to_owned()
        } else {
            crate::error::check_name("plan", name)?;
            format!("plan {name:?}")
        };
        if policies.is_empty() {
            return Err(ConfigError::new(format!(
                "{what} needs at least one policy"
            )));
        }
        let mut compiled: Vec<Compiled> = policies
            .iter()
            .map(Policy::compile)
            .collect::<Result<_, _>>()?;
        for (i, p) in compiled.iter().enumerate() {
            if compiled[..i].iter().any(|q| q.name == p.name) {
                return Err(ConfigError::new(format!(
                    "{what}: two policies are named {:?}; name them apart with Policy::named",
                    p.name
                )));
            }
        }
        if !name.is_empty() {
            // Names are [A-Za-z0-9_.-]: the extra ':' keeps plan keys apart
            // from the default set's.
            for p in &mut compiled {
                p.key_suffix = format!("{name}:{}", p.key_suffix);
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
        let plan = if name.is_empty() { "default" } else { name };
        let labels = [("scope", scope), ("plan", plan)];
        let denied_by = meta
            .iter()
            .map(|m| {
                Count::new(
                    "trl_rate_limit_denials_total",
                    &[("scope", scope), ("plan", plan), ("policy", &m.name)],
                )
            })
            .collect();
        Ok(Self {
            outcomes: Outcomes::new("trl_rate_limit_requests_total", &labels, &OUTCOMES),
            denied_by,
            name: name.into(),
            max_cost: compiled.iter().map(|p| p.capacity).min().unwrap_or(0),
            headers: HeaderConfig {
                policy: render_policy(&meta),
                names: render_names(&meta),
                on_allowed: fields.on_allowed,
                legacy: fields.legacy,
            },
            policies: compiled.into(),
            meta: meta.into(),
            denials: fields.remember_denials.then(Denials::default),
        })
    }
}

impl PlanSet {
    /// Counts a request that got no decision (skipped, bad key).
    pub(crate) fn count(&self, outcome: Outcome) {
        self.outcomes.inc(outcome as usize);
    }

    /// Counts `d`, and each policy that denied it, in a `rate_limit` span
    /// (debug level) with the layer, scope, plan, outcome and the store's
    /// latency when the store was asked.
    pub(crate) fn count_decision(
        &self,
        scope: &str,
        d: &RateLimitDecision,
        shadow: bool,
        store: Option<std::time::Duration>,
    ) {
        let outcome = match (d.source, d.allowed) {
            (DecisionSource::FailOpen, _) => Outcome::FailedOpen,
            (DecisionSource::FailClosed, _) => Outcome::FailedClosed,
            (DecisionSource::LocalFallback, true) => Outcome::LocalAllowed,
            (DecisionSource::LocalFallback, false) => Outcome::LocalDenied,
            (DecisionSource::NoKey, _) => Outcome::NoKey,
            (DecisionSource::CostTooHigh, _) => Outcome::CostTooHigh,
            (_, true) => Outcome::Allowed,
            (_, false) if shadow => Outcome::ShadowDenied,
            (DecisionSource::Remembered, false) => Outcome::RememberedDenied,
            (_, false) => Outcome::Denied,
        };
        self.count(outcome);
        let span = tracing::debug_span!(
            "rate_limit",
            layer = "rate limit",
            scope,
            plan = if self.name.is_empty() {
                "default"
            } else {
                &*self.name
            },
            outcome = OUTCOMES[outcome as usize],
            store_us = store.map(|s| s.as_micros() as u64),
        );
        span.in_scope(|| tracing::debug!(policies = ?d.policies, "rate limit decision"));
        if !d.allowed {
            for (p, c) in d.policies.iter().zip(self.denied_by.iter()) {
                if p.retry_after.is_some() {
                    c.add(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FIELDS: FieldSettings = FieldSettings {
        on_allowed: true,
        legacy: false,
        remember_denials: true,
    };

    #[test]
    fn a_named_plan_keys_its_counters_apart_from_the_default_set() {
        let p = [Policy::gcra(10, Duration::from_secs(1)).named("burst")];
        let default = PlanSet::compile("s", "", &p, FIELDS).unwrap();
        let pro = PlanSet::compile("s", "pro", &p, FIELDS).unwrap();
        assert_ne!(default.policies[0].key_suffix, pro.policies[0].key_suffix);
        assert!(pro.policies[0].key_suffix.starts_with("pro:burst:"));
        assert_eq!(default.headers.policy, pro.headers.policy, "same fields");
    }

    #[test]
    fn plans_are_checked_like_policies() {
        assert!(
            PlanSet::compile("s", "pro", &[], FIELDS).is_err(),
            "empty plan"
        );
        let p = [Policy::gcra(10, Duration::from_secs(1))];
        assert!(
            PlanSet::compile("s", "p r o", &p, FIELDS).is_err(),
            "bad name"
        );
    }
}
