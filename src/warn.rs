//! Store-failure warnings, written once for every layer: at most one a
//! second per layer instance, so an outage does not flood the logs, each
//! naming the layer and scope it comes from and what the layer did.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StoreError;

/// At most one warning a second.
#[derive(Debug, Default)]
pub(crate) struct Throttle(AtomicU64);

impl Throttle {
    /// `true` for the first call in each wall-clock second.
    pub(crate) fn allow(&self) -> bool {
        let sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.0.swap(sec, Ordering::Relaxed) != sec
    }

    /// Warns that `layer`'s store failed at `what`, and what it did instead.
    pub(crate) fn store_failed(
        &self,
        layer: &'static str,
        scope: &str,
        what: &str,
        then: &str,
        e: &StoreError,
    ) {
        if self.allow() {
            tracing::warn!(layer, scope, error = %e, "{layer}: store failed ({what}); {then}");
        }
    }
}
