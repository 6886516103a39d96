//! [`Leader`]: the request that goes to the origin for a slot.

use std::sync::Arc;

use super::entry::Entry;
use super::flight::{FlightGuard, Outcome};
use super::key::Slot;
use super::l1::Epoch;
use super::shared::Shared;
use super::store::Found;

/// How long a slot whose response could not be stored is not waited for.
const HIT_FOR_MISS_MS: u64 = 30_000;

/// The lookup a fill comes from: its write lands only if the URL's
/// generation has not moved since (no purge in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Looked {
    pub(crate) gen: u64,
    pub(crate) at_ms: u64,
}

impl Looked {
    pub(crate) fn of(found: &Found) -> Self {
        Self {
            gen: found.gen,
            at_ms: found.now_ms,
        }
    }
}

/// The request that goes to the origin for a slot. Dropped without
/// storing, it releases the fill lock and lets a local follower take over.
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
    /// The lookup this fill comes from; without one (the store failed, or
    /// a local wait timed out) nothing is written.
    pub(crate) looked: Option<Looked>,
    /// The in-process tier's invalidations when the fill began.
    pub(crate) epoch: Option<Epoch>,
    /// The stored incomplete entry that could not answer this request:
    /// a `206` with the same strong validator is combined with it.
    pub(crate) partial: Option<Entry>,
    /// The response could not be stored: mark the slot hit-for-miss.
    pass: bool,
}

impl Leader {
    pub(crate) fn new(
        shared: &Arc<Shared>,
        slot: Slot,
        flight: Option<FlightGuard>,
        looked: Option<(&Found, Option<u64>)>,
        stale: Option<Entry>,
        detail: Option<&'static str>,
    ) -> Self {
        Self {
            epoch: shared.l1_epoch(&slot.url),
            shared: shared.clone(),
            slot,
            token: looked.and_then(|(_, token)| token),
            flight,
            stale,
            detail,
            looked: looked.map(|(found, _)| Looked::of(found)),
            partial: None,
            pass: false,
        }
    }

    /// Ends the flight with `outcome` (of the operation of `round`) and
    /// releases the lock.
    pub(crate) fn finish(mut self, round: u64, outcome: Outcome) {
        self.pass = matches!(outcome, Outcome::Pass);
        if let Some(g) = self.flight.take() {
            g.finish(round, outcome);
        }
    }

    /// Ends the flight with an outcome that holds for every follower.
    pub(crate) fn end(self, outcome: Outcome) {
        self.finish(0, outcome);
    }

    /// Call before a store operation whose outcome followers may take.
    pub(crate) fn sent(&self) -> u64 {
        self.flight.as_ref().map_or(0, FlightGuard::sent)
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
