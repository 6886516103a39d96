//! Finding the answer to a cacheable request before the origin is asked: a
//! hit, a fill (this request goes to the origin and stores the result), or
//! a pass. Misses collapse in process (flights) and across instances (the
//! store's fill lock: the others poll, with a bounded wait). The decisions
//! are the pure steps of [`decide`](super::decide); this is the loop.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::decide::{
    after_lookup, decode_for, fresh, swr_ok, HitKind, Judged, Polling, Step, Want,
};
use super::entry::Entry;
use super::flight::{FlightGuard, Follower, Joined, Outcome};
use super::key::{self, Slot};
use super::leader::Leader;
use super::look::{alone, learn, local, look, store_failed};
use super::range::Ranges;
use super::shared::{token, Shared};
use super::store::{LockState, Lookup};

/// What a cacheable request needs to be resolved.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) url: Arc<str>,
    pub(crate) headers: Arc<HeaderMap>,
    /// Look up only: take no lock and store nothing (HEAD, unkeyed inputs,
    /// a request `no-store`).
    pub(crate) lookup_only: bool,
    /// What the request accepts from a stored response.
    pub(crate) want: Want,
    /// Its `Range` (an incomplete entry answers only ranges within it).
    pub(crate) ranges: Ranges,
    pub(crate) head: bool,
}

impl Ask {
    /// Whether `e` can answer this request (an incomplete entry may not).
    pub(super) fn served_by(&self, e: &Entry) -> bool {
        self.ranges.served_by(e, self.head)
    }

    /// A GET with `Range`: a part of the representation is enough.
    pub(super) fn ranged(&self) -> bool {
        !self.head && self.ranges.asked()
    }
}

pub(crate) enum Resolution {
    Hit(Arc<Entry>, HitKind),
    Fill(Leader),
    /// Serve the stale entry now; the leader revalidates it in the background.
    Refresh(Arc<Entry>, Leader),
    Pass(&'static str),
    /// The store failed and the layer fails closed.
    Unavailable,
}

pub(crate) async fn resolve(shared: Arc<Shared>, ask: Ask) -> Resolution {
    // A purge of this URL is still to land: the store may hold what it drops.
    if shared.retries.is_pending(&ask.url) {
        return Resolution::Pass("purge-pending");
    }
    // Read once a request waits (a hit never does).
    let mut deadline = None;
    for _ in 0..4 {
        let spec = shared.spec_of(&ask.url);
        let slot = key::slot(ask.url.clone(), spec, &ask.headers);
        if shared.l1.is_some() {
            let now = shared.now_ms();
            if let Some(e) = local(&shared, &slot, now).filter(|e| ask.served_by(e)) {
                if ask.want.judge(&e, now) == Judged::Fresh {
                    return Resolution::Hit(e, HitKind::Local);
                }
            }
        }
        if ask.lookup_only {
            match look(&shared, slot, &ask, false).await {
                Some(r) => return r,
                None => continue,
            }
        }
        // In process, a fresh hit is one map read: serve it without a flight.
        if shared.home.is_local() {
            match look(&shared, slot.clone(), &ask, false).await {
                Some(hit @ Resolution::Hit(..)) => return hit,
                Some(_) => {}
                None => continue,
            }
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.cfg.wait);
        let guard = match shared.flights.join(&slot) {
            Joined::Leader(g) => g,
            Joined::Follower(f) => match follow(&shared, f, &slot, &ask, deadline).await {
                Followed::Resolved(r) => return r,
                Followed::Lead(guard) => guard,
                Followed::Again => continue,
            },
        };
        if let Some(r) = lead(&shared, &ask, slot, guard, deadline).await {
            return r;
        }
    }
    Resolution::Pass("unsettled")
}

/// How following a local leader ended.
// Returned once per follower, straight into a match: not worth a box.
#[allow(clippy::large_enum_variant)]
enum Followed {
    Resolved(Resolution),
    /// The flight needs a leader: this request.
    Lead(FlightGuard),
    /// Ask again (the URL's spec changed).
    Again,
}

/// Waits for the local leader's outcome, taking only what comes from a
/// store operation sent after this request joined; when the flight needs
/// a leader, takes it over.
async fn follow(
    shared: &Arc<Shared>,
    mut f: Follower,
    slot: &Slot,
    ask: &Ask,
    deadline: Instant,
) -> Followed {
    let want = &ask.want;
    let mut looked_stale = false;
    let joined_ms = shared.now_ms();
    loop {
        let t = f.rx.borrow_and_update().clone();
        let fresh = f.accepts(&t);
        match t.outcome {
            Outcome::Pending => {}
            // A request that wants a validated response waits for it.
            Outcome::Stale(_) if want.demands() => {}
            Outcome::Stale(raw) if fresh => {
                let ok = |e: &Entry| swr_ok(e, shared.now_ms()) && ask.served_by(e);
                if let Some(e) = decode_for(slot, raw, 0).filter(ok) {
                    return Followed::Resolved(Resolution::Hit(Arc::new(e), HitKind::Stale));
                }
            }
            // Revalidating since before this request came: whether the
            // stale entry may still be served, only the store can tell.
            Outcome::Stale(_) if !looked_stale => {
                looked_stale = true;
                match look(shared, slot.clone(), ask, true).await {
                    Some(hit @ Resolution::Hit(..)) => return Followed::Resolved(hit),
                    Some(_) => {}
                    None => return Followed::Again,
                }
            }
            Outcome::Stale(_) => {}
            Outcome::Done(raw) if fresh => {
                // Another variant (the response's Vary differed): ask again;
                // and so does a request that wants a validated response,
                // unless this one was stored after it came.
                let e = decode_for(slot, raw, 0);
                // A part that does not hold this range: to the origin at
                // once, not after the next request for another range.
                if e.as_ref().is_some_and(|e| !ask.served_by(e)) && ask.ranged() {
                    return match alone(shared, ask, slot.clone()).await {
                        Some(r) => Followed::Resolved(r),
                        None => Followed::Again,
                    };
                }
                return match e.filter(|e| ask.served_by(e)) {
                    Some(e)
                        if want.judge(&e, shared.now_ms()) == Judged::Revalidate
                            && e.meta.stored_ms < joined_ms =>
                    {
                        Followed::Again
                    }
                    Some(e) => Followed::Resolved(Resolution::Hit(Arc::new(e), HitKind::Collapsed)),
                    None => Followed::Again,
                };
            }
            Outcome::Pass => return Followed::Resolved(Resolution::Pass("uncacheable")),
            Outcome::Respec => return Followed::Again,
            Outcome::Done(_) | Outcome::Abandoned => match f.take_over() {
                Ok(guard) => return Followed::Lead(guard),
                Err(back) => f = back,
            },
        }
        match tokio::time::timeout_at(deadline, f.rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Followed::Again,
            Err(_) => {
                let l = Leader::new(shared, slot.clone(), None, None, None, Some("wait-timeout"));
                return Followed::Resolved(Resolution::Fill(l));
            }
        }
    }
}

/// As local leader: look up (taking the fill lock), then hit, fill, or poll
/// while another instance fills. `None`: the URL's spec changed, ask again.
async fn lead(
    shared: &Arc<Shared>,
    ask: &Ask,
    slot: Slot,
    guard: FlightGuard,
    deadline: Instant,
) -> Option<Resolution> {
    let token = token();
    let lock_ttl = shared.cfg.lock_ttl.as_millis() as u64;
    let mut polling = Polling::default();
    let mut backoff = Duration::from_millis(5);
    loop {
        let q = Lookup {
            slot: slot.clone(),
            lock: Some((token, lock_ttl)),
            force: polling.force,
        };
        let epoch = shared.l1_epoch(&slot.url);
        let round = guard.sent();
        let found = match shared.home.lookup(&q).await {
            Ok(f) => f,
            Err(e) => {
                if e.is_timeout() {
                    // Redis may still run the lookup (a pause, a slow
                    // script) and take the lock for us: give it back
                    // behind it, or readers wait for a fill nobody makes.
                    shared.spawn_release(&slot, token, 0);
                }
                return Some(store_failed(shared, &e, || {
                    let l = Leader::new(shared, slot, Some(guard), None, None, Some("store-error"));
                    Resolution::Fill(l)
                }));
            }
        };
        if !learn(shared, &slot, &found) {
            guard.finish(round, Outcome::Respec);
            return None;
        }
        let now = found.now_ms;
        let raw = found.entry.clone();
        let stored = raw
            .clone()
            .and_then(|raw| decode_for(&slot, raw, found.gen));
        // An incomplete entry that cannot answer is no entry to this
        // request, but the part a fill may combine its own with.
        let (entry, partial) = match stored {
            Some(e) if !ask.served_by(&e) => (None, Some(e)),
            e => (e, None),
        };
        let step = after_lookup(found.lock, entry.as_ref(), now, &ask.want, polling);
        let fill = |guard, token, stale, why| {
            let looked = Some((&found, token));
            let mut l = Leader::new(shared, slot.clone(), guard, looked, stale, why);
            l.partial = partial.clone();
            Some(Resolution::Fill(l))
        };
        match step {
            Step::Hit(kind) => {
                if found.lock == LockState::Acquired {
                    // Served stale by the request's max-stale: no fill.
                    shared.spawn_release(&slot, token, 0);
                }
                let (e, raw) = (Arc::new(entry?), raw.unwrap_or_default());
                shared.l1_put(&slot, &e, raw.len(), e.meta.fresh_until_ms(), epoch);
                guard.finish(round, Outcome::Done(raw));
                return Some(Resolution::Hit(e, kind));
            }
            // The other parts of a representation are fetched side by
            // side: no lock to wait for (parts combine as they land).
            Step::Force | Step::Wait if partial.is_some() && ask.ranged() => {
                return fill(Some(guard), None, None, Some("range"));
            }
            Step::Force => polling.force = true,
            Step::Fill => {
                if let (Some(raw), Some(_)) = (raw, &entry) {
                    guard.stale(round, raw);
                }
                // Within stale-while-revalidate: this request too is
                // answered stale at once, the refresh runs in the background.
                let background = entry
                    .as_ref()
                    .is_some_and(|e| !fresh(e, now) && swr_ok(e, now) && !ask.want.demands());
                if let (true, Some(e)) = (background, entry.clone()) {
                    let looked = Some((&found, Some(token)));
                    let l = Leader::new(shared, slot, Some(guard), looked, entry, None);
                    return Some(Resolution::Refresh(Arc::new(e), l));
                }
                return fill(Some(guard), Some(token), entry, None);
            }
            // Local followers go to the origin at once, and so does this request.
            Step::HitForMiss => {
                guard.finish(round, Outcome::Pass);
                return fill(None, None, entry, Some("hit-for-miss"));
            }
            Step::Unlocked(why) => return fill(Some(guard), None, None, Some(why)),
            Step::Wait => {
                if Instant::now() + backoff > deadline {
                    return fill(Some(guard), None, None, Some("wait-timeout"));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
                polling = Polling {
                    waited: true,
                    force: false,
                };
            }
        }
    }
}
