//! Lookups that take no fill lock: the in-process tier, a plain read of
//! the store, and the lone fill of a range request that a stored part
//! does not hold.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};

use super::conditional::Cond;
use super::config::FailurePolicy;
use super::decide::{adopt, decode_for, swr_ok, HitKind, Judged, Want};
use super::entry::Entry;
use super::key::{self, Slot};
use super::leader::Leader;
use super::resolve::{Ask, Resolution};
use super::response::serve;
use super::route::Plan;
use super::shared::{Shared, HIT, HIT_L1};
use super::store::{Found, Lookup};
use crate::error::StoreError;

/// A copy from the in-process tier, while it is fresh, at `now`.
pub(super) fn local(shared: &Shared, slot: &Slot, now: u64) -> Option<Arc<Entry>> {
    let e = shared.l1.as_ref()?.get(slot, now)?;
    adopt(slot, e, 0)
}

/// Records what a store answer teaches; `false` when the URL's spec
/// changed (nothing else was read: ask again).
pub(super) fn learn(shared: &Shared, slot: &Slot, found: &Found) -> bool {
    learn_at(shared, slot, found.now_ms, &found.spec)
}

fn learn_at(shared: &Shared, slot: &Slot, now_ms: u64, spec: &Arc<str>) -> bool {
    shared.observe(now_ms);
    if *spec != slot.spec {
        shared.learn(&slot.url, spec);
        return false;
    }
    true
}

/// A hit answered at once, before any future is built: what the first
/// round of [`resolve`](super::resolve::resolve) would serve from the
/// in-process tier, or from an in-process home that keeps its entries
/// decoded, and its outcome (see [`Shared::count_outcome`]). `None`:
/// resolve the request the usual way.
pub(super) fn at_once(
    sh: &Shared,
    url: &Arc<str>,
    plan: &Plan,
    h: &HeaderMap,
    cond: &Cond,
) -> Option<(Response<Bytes>, usize)> {
    if sh.l1.is_none() && !sh.home.is_local() || sh.retries.is_pending(url) {
        return None;
    }
    let slot = key::slot(url.clone(), sh.spec_of(url), h);
    let served = |e: &Arc<Entry>| cond.ranges.served_by(e, plan.head);
    let (cfg, head) = (&sh.cfg, plan.head);
    if sh.l1.is_some() {
        let now = sh.now_ms();
        if let Some(e) = local(sh, &slot, now).filter(served) {
            if plan.want.judge(&e, now) == Judged::Fresh {
                let res = serve(cfg, &e, now, head, cond, "hit; detail=l1");
                return Some((res, HIT_L1));
            }
        }
    }
    let p = sh.home.peek(&slot)?;
    if !learn_at(sh, &slot, p.now_ms, &p.spec) {
        return None;
    }
    let e = p
        .entry
        .and_then(|e| adopt(&slot, e, p.gen))
        .filter(served)?;
    match judge(&plan.want, e, p.now_ms, false) {
        Some(Resolution::Hit(e, _)) => Some((serve(cfg, &e, p.now_ms, head, cond, "hit"), HIT)),
        _ => None,
    }
}

/// A lookup's entry judged for a request: a hit, or a miss.
fn judge(want: &Want, e: Arc<Entry>, now: u64, stale_ok: bool) -> Option<Resolution> {
    match want.judge(&e, now) {
        Judged::Fresh => Some(Resolution::Hit(e, HitKind::Fresh)),
        Judged::Grace => Some(Resolution::Hit(e, HitKind::Stale)),
        Judged::Stale if stale_ok && swr_ok(&e, now) => Some(Resolution::Hit(e, HitKind::Stale)),
        _ => None,
    }
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
    if let Some(p) = shared.home.peek(&slot) {
        if !learn_at(shared, &slot, p.now_ms, &p.spec) {
            return None;
        }
        let e = p.entry.and_then(|e| adopt(&slot, e, p.gen));
        let hit = e.filter(|e| ask.served_by(e));
        let hit = hit.and_then(|e| judge(want, e, p.now_ms, stale_ok));
        return Some(hit.unwrap_or(Resolution::Pass("miss")));
    }
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
        Some((Arc::new(e), raw))
    });
    let Some((e, raw)) = hit else {
        return Some(Resolution::Pass("miss"));
    };
    let r = judge(want, e, now, stale_ok);
    if let Some(Resolution::Hit(e, HitKind::Fresh)) = &r {
        shared.l1_put(&slot, e, raw.len(), e.meta.fresh_until_ms(), epoch);
    }
    Some(r.unwrap_or(Resolution::Pass("miss")))
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
        return fresh.then(|| Resolution::Hit(Arc::new(e), HitKind::Fresh));
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
