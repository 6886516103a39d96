//! Lookups that take no fill lock: the in-process tier, a plain read of
//! the store, and the lone fill of a range request that a stored part
//! does not hold.

use std::sync::Arc;

use super::config::FailurePolicy;
use super::decide::{decode_for, swr_ok, HitKind, Judged};
use super::entry::Entry;
use super::key::Slot;
use super::leader::Leader;
use super::resolve::{Ask, Resolution};
use super::shared::Shared;
use super::store::{Found, Lookup};
use crate::error::StoreError;

/// A fresh copy from the in-process tier.
pub(super) fn local(shared: &Shared, slot: &Slot) -> Option<Entry> {
    let raw = shared.l1.as_ref()?.get(slot, shared.now_ms())?;
    decode_for(slot, raw, 0)
}

/// Records what a store answer teaches; `false` when the URL's spec
/// changed (nothing else was read: ask again).
pub(super) fn learn(shared: &Shared, slot: &Slot, found: &Found) -> bool {
    shared.observe(found.now_ms);
    if found.spec != slot.spec {
        shared.learn(&slot.url, &found.spec);
        return false;
    }
    true
}

/// What a failed lookup means under the layer's failure policy.
pub(super) fn store_failed(
    shared: &Arc<Shared>,
    e: &StoreError,
    open: impl FnOnce() -> Resolution,
) -> Resolution {
    let (then, r) = match shared.cfg.on_failure {
        FailurePolicy::Closed => ("answered 503 (fail closed)", Resolution::Unavailable),
        FailurePolicy::Open => ("the origin serves (fail open)", open()),
    };
    shared.store_failed("a lookup", then, e);
    r
}

/// A lookup that takes no lock: a fresh entry the request accepts (or,
/// with `stale_ok`, one within `stale-while-revalidate`) is a hit. `None`:
/// the URL's spec changed, ask again.
pub(super) async fn look(
    shared: &Arc<Shared>,
    slot: Slot,
    ask: &Ask,
    stale_ok: bool,
) -> Option<Resolution> {
    let want = &ask.want;
    let q = Lookup {
        slot: slot.clone(),
        lock: None,
        force: false,
    };
    let epoch = shared.l1_epoch(&slot.url);
    let found = match shared.home.lookup(&q).await {
        Ok(found) => found,
        Err(e) => return Some(store_failed(shared, &e, || Resolution::Pass("store-error"))),
    };
    if !learn(shared, &slot, &found) {
        return None;
    }
    let now = found.now_ms;
    let hit = found.entry.and_then(|raw| {
        let e = decode_for(&slot, raw.clone(), found.gen).filter(|e| ask.served_by(e))?;
        Some((e, raw))
    });
    let Some((e, raw)) = hit else {
        return Some(Resolution::Pass("miss"));
    };
    Some(match want.judge(&e, now) {
        Judged::Fresh => {
            shared.l1_put(&slot, &raw, e.meta.fresh_until_ms(), epoch);
            Resolution::Hit(e, HitKind::Fresh)
        }
        Judged::Grace => Resolution::Hit(e, HitKind::Stale),
        Judged::Stale if stale_ok && swr_ok(&e, now) => Resolution::Hit(e, HitKind::Stale),
        _ => Resolution::Pass("miss"),
    })
}

/// A range request that a stored part does not hold, outside any flight:
/// a hit if the store holds its range now, else a fill of its own that
/// takes no lock and combines its part with the stored one. `None`: ask
/// again the usual way (the URL's spec changed, or no part is stored).
pub(super) async fn alone(shared: &Arc<Shared>, ask: &Ask, slot: Slot) -> Option<Resolution> {
    let q = Lookup {
        slot: slot.clone(),
        lock: None,
        force: false,
    };
    let found = match shared.home.lookup(&q).await {
        Ok(found) => found,
        Err(e) => return Some(store_failed(shared, &e, || Resolution::Pass("store-error"))),
    };
    if !learn(shared, &slot, &found) {
        return None;
    }
    let stored = found
        .entry
        .clone()
        .and_then(|raw| decode_for(&slot, raw, found.gen));
    let (entry, partial) = match stored {
        Some(e) if !ask.served_by(&e) => (None, Some(e)),
        e => (e, None),
    };
    if let Some(e) = entry {
        // Served whole or by a part now; when not fresh, revalidated the
        // usual way (collapsed, under the lock).
        let fresh = ask.want.judge(&e, found.now_ms) == Judged::Fresh;
        return fresh.then_some(Resolution::Hit(e, HitKind::Fresh));
    }
    let partial = partial?;
    let mut l = Leader::new(
        shared,
        slot,
        None,
        Some((&found, None)),
        None,
        Some("range"),
    );
    l.partial = Some(partial);
    Some(Resolution::Fill(l))
}
