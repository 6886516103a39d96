//! The settings of a layer, the choices the builder offers, and the checks
//! `build()` makes so that no setting can overflow at request time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::policy::{check_allow_list, SharedPolicy};
use super::response::{IdempotencyOutcome, RejectionResponse};
use super::store::{IdempotencyHome, Replicas};
use crate::error::{check_name, ConfigError};
use crate::key::KeyExtractor;
use crate::telemetry::Outcomes;
use crate::warn::Throttle;

/// The longest record TTL, lease, wait or replica timeout a layer accepts:
/// 365 days. Longer ones are refused at `build()` (they would overflow the
/// stores' clocks, or mean "forever", which no record may be).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a request gets while another request with its key is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Conflict {
    /// 409 Conflict with `Retry-After` at once (default, like Stripe).
    #[default]
    Reject,
    /// Wait up to this long (at most 365 days) for the first request's
    /// outcome and replay it (or run, if the first one failed and released
    /// the key); 409 after.
    Wait(Duration),
}

/// What to do when the store fails, misses its deadline or holds a corrupt record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Run the handler without the store, unprotected: a retry may run it again.
    Open,
    /// 503 with `Retry-After` (default): running a payment twice is worse
    /// than refusing it for a moment.
    #[default]
    Closed,
}

/// What a first execution does when its client goes away (the response
/// future is dropped: the connection closed, a timeout fired, the client
/// cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HangUp {
    /// Run to the end (default): once the key is reserved and the handler
    /// called, the handler, the reading of its response and the write of
    /// the record run in a task of their own (`tokio::spawn`), so a retry
    /// replays the outcome (or meets the key in progress while it runs)
    /// and never runs a committed side effect again. Handlers may outlive
    /// their connection.
    #[default]
    Finish,
    /// Cancel: the handler is dropped with the response future, and the
    /// key released at once, so a retry runs the handler again, even if
    /// the cancelled run had already committed its side effect.
    Release,
}

/// Everything a builder sets.
pub(crate) struct Settings {
    pub(crate) scope: Arc<str>,
    pub(crate) principal: Arc<dyn KeyExtractor>,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: bool,
    pub(crate) max_body: usize,
    pub(crate) max_stored_body: usize,
    pub(crate) record_ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) conflict: Conflict,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) hang_up: HangUp,
    pub(crate) replicas: Option<Replicas>,
    pub(crate) policy: SharedPolicy,
    pub(crate) stored_headers: Vec<HeaderName>,
    pub(crate) rejection: Option<Arc<dyn RejectionResponse>>,
}

/// The configuration every service and future of one layer shares: the
/// settings, the store's home resolved at `build()`, and the warnings' throttles.
pub(crate) struct Config {
    pub(crate) home: Arc<dyn IdempotencyHome>,
    pub(crate) settings: Settings,
    warned: Throttle,
    warned_replicas: Throttle,
    outcomes: Outcomes,
}

/// The `outcome` label of each [`IdempotencyOutcome`], in its order.
const OUTCOMES: [&str; 9] = [
    "passed",
    "first_run",
    "first_run_not_stored",
    "replay",
    "conflict",
    "mismatch",
    "bad_request",
    "store_unavailable",
    "store_bypassed",
];

impl std::ops::Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
}

fn check(ok: bool, msg: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(msg))
    }
}

impl Settings {
    /// Refuses what cannot work, or could overflow at request time.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        check_name("scope", &self.scope)?;
        check(
            !self.methods.is_empty(),
            "an idempotency layer needs at least one method",
        )?;
        if let Some(m) = self.methods.iter().find(|m| m.is_safe()) {
            return Err(ConfigError::new(format!(
                "{m} is a safe method; idempotency keys are for unsafe ones (POST, PATCH, ...)"
            )));
        }
        let max = "at most 365 days";
        check(
            self.lease >= Duration::from_millis(30),
            "the lease must be at least 30 ms",
        )?;
        check(
            self.lease <= MAX_DURATION,
            &format!("the lease must be {max}"),
        )?;
        check(
            self.record_ttl >= self.lease,
            "the record TTL must be at least the lease",
        )?;
        check(
            self.record_ttl <= MAX_DURATION,
            &format!("the record TTL must be {max}"),
        )?;
        if let Conflict::Wait(wait) = self.conflict {
            check(
                wait <= MAX_DURATION,
                &format!("Conflict::Wait must be {max}"),
            )?;
        }
        if let Some(r) = self.replicas {
            check(r.n >= 1, "wait_replicas needs at least one replica")?;
            check(
                r.timeout >= Duration::from_millis(1),
                "the wait_replicas timeout must be at least 1 ms (Redis reads 0 as \"forever\")",
            )?;
            check(
                r.timeout <= MAX_DURATION,
                &format!("the wait_replicas timeout must be {max}"),
            )?;
        }
        check(
            self.max_stored_body <= u32::MAX as usize,
            "max_stored_body must fit in 4 GiB",
        )?;
        check_allow_list(&self.stored_headers).map_err(ConfigError::new)
    }
}

impl Config {
    pub(crate) fn new(home: Arc<dyn IdempotencyHome>, settings: Settings) -> Self {
        let settings_scope = settings.scope.to_string();
        Self {
            home,
            settings,
            warned: Throttle::default(),
            warned_replicas: Throttle::default(),
            outcomes: Outcomes::new(
                "trl_idempotency_requests_total",
                &[("scope", &settings_scope)],
                &OUTCOMES,
            ),
        }
    }

    /// Counts a response by its outcome, in an `idempotency` span (debug level).
    pub(crate) fn count(&self, outcome: Option<&IdempotencyOutcome>) {
        let Some(o) = outcome else { return };
        let i = match o {
            IdempotencyOutcome::Skipped => 0,
            IdempotencyOutcome::Stored => 1,
            IdempotencyOutcome::NotStored => 2,
            IdempotencyOutcome::Replayed => 3,
            IdempotencyOutcome::InProgress => 4,
            IdempotencyOutcome::Mismatch => 5,
            IdempotencyOutcome::Invalid => 6,
            IdempotencyOutcome::StoreUnavailable => 7,
            IdempotencyOutcome::StoreBypassed => 8,
            #[allow(unreachable_patterns)]
            _ => return,
        };
        self.outcomes.inc(i);
        tracing::debug_span!("idempotency", layer = "idempotency", scope = %self.scope, outcome = OUTCOMES[i])
            .in_scope(|| tracing::debug!("idempotency outcome"));
    }

    /// Warns (at most once a second) that the store failed at `what`.
    pub(crate) fn store_failed(&self, what: &str, then: &str, e: &crate::error::StoreError) {
        self.warned
            .store_failed("idempotency", &self.scope, what, then, e);
    }

    /// Warns (at most once a second) that a record's replication was not confirmed.
    pub(crate) fn unconfirmed(&self, acked: Option<u32>) {
        let (Some(r), true) = (self.replicas, self.warned_replicas.allow()) else {
            return;
        };
        tracing::warn!(
            layer = "idempotency",
            scope = %self.scope,
            wanted = r.n,
            acked = ?acked,
            "idempotency: a record was stored, but WAIT did not confirm it on {} replica(s) \
             within {:?}; the response was sent (a failover now could lose the record)",
            r.n,
            r.timeout
        );
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyConfig")
            .field("home", &self.home)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("scope", &self.scope)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("max_body", &self.max_body)
            .field("max_stored_body", &self.max_stored_body)
            .field("record_ttl", &self.record_ttl)
            .field("lease", &self.lease)
            .field("conflict", &self.conflict)
            .field("on_failure", &self.on_failure)
            .field("hang_up", &self.hang_up)
            .field("replicas", &self.replicas)
            .field("stored_headers", &self.stored_headers)
            .finish_non_exhaustive()
    }
}

/// The configuration of a layer on a fresh memory store, with the
/// principal read from `x-api-key`, as `f` customises it.
#[cfg(test)]
pub(crate) fn test_config(
    f: impl FnOnce(super::IdempotencyLayerBuilder) -> super::IdempotencyLayerBuilder,
) -> Arc<Config> {
    let builder = super::IdempotencyLayer::builder(crate::MemoryStore::new())
        .principal(crate::key::Header::new("x-api-key"));
    f(builder).build().unwrap().config()
}
