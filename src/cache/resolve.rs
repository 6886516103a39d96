//! Finding the answer to a cacheable request before the origin is asked: a
//! hit, a fill (this request goes to the origin and stores the result), or
//! a pass. Misses collapse in process (flights) and across instances (the
//! store's fill lock: the others poll, with a bounded wait).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::watch;
use tokio::time::Instant;

use super::entry::{decode, Entry};
use super::flight::{FlightGuard, Joined, Outcome};
use super::key::{self, Slot};
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
    /// The request asks for a revalidation of entries at least this old.
    pub(crate) force_older_than: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HitKind {
    Fresh,
    /// From the in-process tier: no round trip.
    Local,
    /// Served stale while another request revalidates.
    Stale,
    /// Waited for another request's origin call.
    Collapsed,
}

pub(crate) enum Resolution {
    Hit(Entry, HitKind),
    Fill(Leader),
    Pass(&'static str),
}

/// The request that goes to the origin for a slot. Dropped without
/// storing, it releases the fill lock and tells local followers to ask again.
pub(crate) struct Leader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) slot: Slot,
    pub(crate) token: Option<u64>,
    pub(crate) flight: Option<FlightGuard>,
    /// The stale entry being revalidated (or kept for `stale-if-error`).
    pub(crate) stale: Option<Entry>,
    pub(crate) detail: Option<&'static str>,
    /// The response could not be stored: mark the slot hit-for-miss.
    pub(crate) pass: bool,
}

/// How long a slot whose response could not be stored is not waited for.
const HIT_FOR_MISS_MS: u64 = 30_000;

impl Leader {
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

fn fresh(e: &Entry, now: u64) -> bool {
    now < e.meta.fresh_until_ms()
}

/// Within `stale-while-revalidate`.
pub(crate) fn swr_ok(e: &Entry, now: u64) -> bool {
    !e.meta.must_revalidate && now < e.meta.fresh_until_ms() + u64::from(e.meta.swr_s) * 1000
}

fn decode_for(slot: &Slot, raw: Bytes) -> Option<Entry> {
    match decode(raw) {
        Ok(e) if e.meta.key_tag == slot.tag() => Some(e),
        Ok(_) => {
            tracing::debug!("response cache: foreign entry; treated as a miss");
            None
        }
        Err(err) => {
            tracing::debug!(?err, "response cache: undecodable entry; treated as a miss");
            None
        }
    }
}

pub(crate) async fn resolve(shared: Arc<Shared>, ask: Ask) -> Resolution {
    let deadline = Instant::now() + shared.wait;
    for _ in 0..4 {
        let spec = shared.spec_of(&ask.url);
        let slot = key::slot(ask.url.clone(), spec, &ask.headers);
        if ask.force_older_than.is_none() {
            if let Some(e) = local(&shared, &slot) {
                return Resolution::Hit(e, HitKind::Local);
            }
        }
        if ask.lookup_only {
            match look_only(&shared, slot).await {
                Some(r) => return r,
                None => continue,
            }
        }
        // In process, a fresh hit is one map read: serve it without a flight.
        if shared.home.is_local() && ask.force_older_than.is_none() {
            match look_only(&shared, slot.clone()).await {
                Some(hit @ Resolution::Hit(..)) => return hit,
                Some(_) => {}
                None => continue,
            }
        }
        let guard = match shared.flights.join(&slot) {
            Joined::Leader(g) => g,
            Joined::Follower(rx) => match follow(&shared, rx, &slot, deadline).await {
                Some(r) => return r,
                None => continue,
            },
        };
        if let Some(r) = lead(&shared, &ask, slot, guard, deadline).await {
            return r;
        }
    }
    Resolution::Pass("unsettled")
}

/// A fresh copy from the in-process tier.
fn local(shared: &Shared, slot: &Slot) -> Option<Entry> {
    let raw = shared.l1.as_ref()?.get(slot, shared.now_ms())?;
    decode_for(slot, raw)
}

/// A lookup that takes no lock. `None`: the URL's spec changed, ask again.
async fn look_only(shared: &Arc<Shared>, slot: Slot) -> Option<Resolution> {
    let q = Lookup {
        slot: slot.clone(),
        lock: None,
        force: false,
    };
    match shared.home.lookup(&q).await {
        Ok(found) => {
            shared.observe(found.now_ms);
            if found.spec != slot.spec {
                shared.learn(&slot.url, &found.spec);
                return None;
            }
            let raw = found.entry.clone();
            Some(match found.entry.and_then(|raw| decode_for(&slot, raw)) {
                Some(e) if fresh(&e, found.now_ms) => {
                    if let Some(raw) = &raw {
                        shared.l1_put(&slot, raw, e.meta.fresh_until_ms());
                    }
                    Resolution::Hit(e, HitKind::Fresh)
                }
                _ => Resolution::Pass("miss"),
            })
        }
        Err(e) => {
            shared.warn("a lookup", &e);
            Some(Resolution::Pass("store-error"))
        }
    }
}

/// Waits for the local leader. `None`: ask again (as leader or follower).
async fn follow(
    shared: &Arc<Shared>,
    mut rx: watch::Receiver<Outcome>,
    slot: &Slot,
    deadline: Instant,
) -> Option<Resolution> {
    loop {
        let outcome = rx.borrow_and_update().clone();
        let now = shared.now_ms();
        match outcome {
            Outcome::Pending => {}
            Outcome::Stale(raw) => {
                if let Some(e) = decode_for(slot, raw) {
                    if swr_ok(&e, now) {
                        return Some(Resolution::Hit(e, HitKind::Stale));
                    }
                }
            }
            Outcome::Done(raw) => {
                // Another variant (the response's Vary differed): ask again.
                let e = decode_for(slot, raw)?;
                return Some(Resolution::Hit(e, HitKind::Collapsed));
            }
            Outcome::Pass => return Some(Resolution::Pass("uncacheable")),
            Outcome::Abandoned => return None,
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => return Some(unlocked_fill(shared, slot.clone(), None, "wait-timeout")),
        }
    }
}

fn unlocked_fill(
    shared: &Arc<Shared>,
    slot: Slot,
    flight: Option<FlightGuard>,
    detail: &'static str,
) -> Resolution {
    Resolution::Fill(Leader {
        shared: shared.clone(),
        slot,
        token: None,
        flight,
        stale: None,
        detail: Some(detail),
        pass: false,
    })
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
    let lock_ttl = shared.lock_ttl.as_millis() as u64;
    let mut force = false;
    let mut waited = false;
    let mut backoff = Duration::from_millis(5);
    loop {
        let q = Lookup {
            slot: slot.clone(),
            lock: Some((token, lock_ttl)),
            force,
        };
        let found = match shared.home.lookup(&q).await {
            Ok(f) => f,
            Err(e) => {
                shared.warn("a lookup", &e);
                return Some(unlocked_fill(shared, slot, Some(guard), "store-error"));
            }
        };
        shared.observe(found.now_ms);
        let now = found.now_ms;
        if found.spec != slot.spec {
            shared.learn(&slot.url, &found.spec);
            return None;
        }
        let raw = found.entry.clone();
        let entry = found.entry.and_then(|raw| decode_for(&slot, raw));
        let leader = |stale: Option<Entry>, guard: FlightGuard| {
            Resolution::Fill(Leader {
                shared: shared.clone(),
                slot: slot.clone(),
                token: Some(token),
                flight: Some(guard),
                stale,
                detail: None,
                pass: false,
            })
        };
        match (entry, found.lock) {
            (Some(e), LockState::NotTried) => {
                let forced = !waited
                    && ask.force_older_than.is_some_and(|min| {
                        now.saturating_sub(e.meta.stored_ms) >= min.as_millis() as u64
                    });
                if forced && !force {
                    force = true;
                    continue;
                }
                let raw = raw.unwrap_or_default();
                shared.l1_put(&slot, &raw, e.meta.fresh_until_ms());
                guard.finish(Outcome::Done(raw));
                let kind = if waited {
                    HitKind::Collapsed
                } else {
                    HitKind::Fresh
                };
                return Some(Resolution::Hit(e, kind));
            }
            // Undecodable under a fresh index: take the lock to repair it.
            (None, LockState::NotTried) if !force => force = true,
            (None, LockState::NotTried) => {
                return Some(unlocked_fill(shared, slot, Some(guard), "store-error"))
            }
            (Some(e), LockState::Acquired) => {
                if let Some(raw) = raw {
                    guard.stale(raw);
                }
                return Some(leader(Some(e), guard));
            }
            (None, LockState::Acquired) => return Some(leader(None, guard)),
            // Nobody waits for a slot whose last response could not be
            // stored: local followers go at once, and so does this request.
            (stale, LockState::HitForMiss) => {
                guard.finish(Outcome::Pass);
                return Some(Resolution::Fill(Leader {
                    shared: shared.clone(),
                    slot,
                    token: None,
                    flight: None,
                    stale,
                    detail: Some("hit-for-miss"),
                    pass: false,
                }));
            }
            (Some(e), LockState::Held) if swr_ok(&e, now) || (waited && fresh(&e, now)) => {
                guard.finish(Outcome::Done(raw.unwrap_or_default()));
                let kind = if fresh(&e, now) {
                    HitKind::Collapsed
                } else {
                    HitKind::Stale
                };
                return Some(Resolution::Hit(e, kind));
            }
            (_, LockState::Held) => {
                if Instant::now() + backoff > deadline {
                    return Some(unlocked_fill(shared, slot, Some(guard), "wait-timeout"));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
                waited = true;
                force = false;
            }
        }
    }
}
