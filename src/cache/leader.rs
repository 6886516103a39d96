//! [`Leader`]: the request that goes to the origin for a slot.

use std::sync::Arc;

use super::entry::Entry;
use super::flight::{FlightGuard, Outcome};
use super::key::Slot;
use super::l1::Epoch;
use super::shared::Shared;

/// How long a slot whose response could not be stored is not waited for.
const HIT_FOR_MISS_MS: u64 = 30_000;

/// The request that goes to the origin for a slot. Dropped without
/// storing, it releases the fill lock and tells local followers to ask again.
pub(crate) struct Leader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) slot: Slot,
    /// The store's fill lock, when this request holds it.
    pub(crate) token: Option<u64>,
    pub(crate) flight: Option<FlightGuard>,
    /// The stale entry being revalidated (or kept for `stale-if-error`).
    pub(crate) stale: Option<Entry>,
    /// Why this request fills without the lock, for `Cache-Status`.
    pub(crate) detail: Option<&'static str>,
    /// The in-process tier's invalidations when the lookup was answered.
    pub(crate) seen: Option<Epoch>,
    /// The response could not be stored: mark the slot hit-for-miss.
    pass: bool,
}

impl Leader {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        slot: Slot,
        token: Option<u64>,
        flight: Option<FlightGuard>,
        stale: Option<Entry>,
        detail: Option<&'static str>,
    ) -> Self {
        Self {
            seen: shared.l1_epoch(&slot.url),
            shared: shared.clone(),
            slot,
            token,
            flight,
            stale,
            detail,
            pass: false,
        }
    }

    /// Ends the flight with `outcome` and releases the lock.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.pass = matches!(outcome, Outcome::Pass);
        if let Some(g) = self.flight.take() {
            g.finish(outcome);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let pass_ms = if self.pass { HIT_FOR_MISS_MS } else { 0 };
            self.shared.spawn_release(&self.slot, token, pass_ms);
        }
    }
}
