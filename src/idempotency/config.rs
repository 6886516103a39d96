//! The settings of a built layer, and the choices the builder offers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};

use super::policy::SharedPolicy;
use super::store::IdempotencyHome;
use crate::key::KeyExtractor;
use crate::warn::Throttle;

/// What a request gets while another request with its key is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Conflict {
    /// 409 Conflict with `Retry-After` at once (default, like Stripe).
    #[default]
    Reject,
    /// Wait up to this long for the first request's outcome and replay it
    /// (or run, if the first one failed and released the key); 409 after.
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

/// The configuration every service and future of one layer shares.
pub(crate) struct Config {
    pub(crate) home: Arc<dyn IdempotencyHome>,
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
    pub(crate) policy: SharedPolicy,
    pub(crate) stored_headers: Vec<HeaderName>,
    pub(crate) warned: Throttle,
}

impl Config {
    /// Warns (at most once a second) that the store failed at `what`.
    pub(crate) fn store_failed(&self, what: &str, then: &str, e: &crate::error::StoreError) {
        self.warned
            .store_failed("idempotency", &self.scope, what, then, e);
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyConfig")
            .field("home", &self.home)
            .field("scope", &self.scope)
            .field("methods", &self.methods)
            .field("required", &self.required)
            .field("max_body", &self.max_body)
            .field("max_stored_body", &self.max_stored_body)
            .field("record_ttl", &self.record_ttl)
            .field("lease", &self.lease)
            .field("conflict", &self.conflict)
            .field("on_failure", &self.on_failure)
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
