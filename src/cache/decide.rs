//! What a cacheable request does after each store answer: pure steps that
//! the resolve loop follows (and unit tests drive without a store).

use std::time::Duration;

use bytes::Bytes;

use super::entry::{decode, Entry};
use super::key::Slot;
use super::store::LockState;

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

/// Where a leader's polling stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Polling {
    /// The next lookup takes the lock even if the entry is fresh.
    pub(crate) force: bool,
    /// Another instance's fill was waited for.
    pub(crate) waited: bool,
}

/// The leader's next move after a lookup that took (or tried) the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Serve the entry found; the flight ends with it.
    Hit(HitKind),
    /// Look up again, taking the lock even though the entry is fresh.
    Force,
    /// This request fills under the lock (revalidating the entry found, if any).
    Fill,
    /// The slot's last response could not be stored: go to the origin
    /// without the lock, and let local followers go too.
    HitForMiss,
    /// Go to the origin without the lock.
    Unlocked(&'static str),
    /// Another instance fills: wait, then look again.
    Wait,
}

pub(crate) fn fresh(e: &Entry, now: u64) -> bool {
    now < e.meta.fresh_until_ms()
}

/// Within `stale-while-revalidate`.
pub(crate) fn swr_ok(e: &Entry, now: u64) -> bool {
    !e.meta.must_revalidate && now < e.meta.fresh_until_ms() + u64::from(e.meta.swr_s) * 1000
}

/// Within `stale-if-error`.
pub(crate) fn sie_ok(e: &Entry, now: u64) -> bool {
    !e.meta.must_revalidate && now < e.meta.fresh_until_ms() + u64::from(e.meta.sie_s) * 1000
}

/// Old enough for a request that asked for revalidation (`no-cache`) to get it.
fn forced(e: &Entry, now: u64, force_older_than: Option<Duration>) -> bool {
    force_older_than
        .is_some_and(|min| now.saturating_sub(e.meta.stored_ms) >= min.as_millis() as u64)
}

/// The entry stored bytes hold for `slot`; a foreign or corrupt entry is a miss.
pub(crate) fn decode_for(slot: &Slot, raw: Bytes) -> Option<Entry> {
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

/// Decides the leader's next move from a lookup's answer.
pub(crate) fn after_lookup(
    lock: LockState,
    entry: Option<&Entry>,
    now: u64,
    force_older_than: Option<Duration>,
    p: Polling,
) -> Step {
    match (entry, lock) {
        (Some(e), LockState::NotTried) => {
            if !p.waited && !p.force && forced(e, now, force_older_than) {
                return Step::Force;
            }
            Step::Hit(if p.waited {
                HitKind::Collapsed
            } else {
                HitKind::Fresh
            })
        }
        // Undecodable under a fresh index: take the lock to repair it.
        (None, LockState::NotTried) if !p.force => Step::Force,
        (None, LockState::NotTried) => Step::Unlocked("store-error"),
        (_, LockState::Acquired) => Step::Fill,
        // Nobody waits for a slot whose last response could not be stored.
        (_, LockState::HitForMiss) => Step::HitForMiss,
        (Some(e), LockState::Held) if fresh(e, now) && p.waited => Step::Hit(HitKind::Collapsed),
        (Some(e), LockState::Held) if swr_ok(e, now) => Step::Hit(if fresh(e, now) {
            HitKind::Collapsed
        } else {
            HitKind::Stale
        }),
        (_, LockState::Held) => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Meta;

    fn entry(stored_ms: u64, fresh_ms: u64, swr_s: u32) -> Entry {
        Entry {
            meta: Meta {
                status: 200,
                key_tag: 0,
                stored_ms,
                fresh_ms,
                age_s: 0,
                swr_s,
                sie_s: 0,
                must_revalidate: false,
                s_maxage: false,
            },
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    const FIRST: Polling = Polling {
        force: false,
        waited: false,
    };

    #[test]
    fn a_fresh_entry_is_a_hit_and_a_forced_request_retakes_the_lock_once() {
        let e = entry(1_000, 10_000, 0);
        let step = |p, force| after_lookup(LockState::NotTried, Some(&e), 5_000, force, p);
        assert_eq!(step(FIRST, None), Step::Hit(HitKind::Fresh));
        let old_enough = Some(Duration::from_secs(1));
        assert_eq!(step(FIRST, old_enough), Step::Force);
        let forced = Polling {
            force: true,
            ..FIRST
        };
        assert_eq!(step(forced, old_enough), Step::Hit(HitKind::Fresh));
        let young = Some(Duration::from_secs(10));
        assert_eq!(step(FIRST, young), Step::Hit(HitKind::Fresh));
        let waited = Polling {
            waited: true,
            ..FIRST
        };
        assert_eq!(step(waited, old_enough), Step::Hit(HitKind::Collapsed));
    }

    #[test]
    fn a_missing_entry_under_a_fresh_index_is_repaired_under_the_lock() {
        let step = |p| after_lookup(LockState::NotTried, None, 0, None, p);
        assert_eq!(step(FIRST), Step::Force);
        let forced = Polling {
            force: true,
            ..FIRST
        };
        assert_eq!(step(forced), Step::Unlocked("store-error"));
    }

    #[test]
    fn the_lock_decides_who_fills_and_who_waits() {
        let stale = entry(0, 1_000, 60);
        let at = |lock, e: Option<&Entry>, p| after_lookup(lock, e, 2_000, None, p);
        assert_eq!(at(LockState::Acquired, None, FIRST), Step::Fill);
        assert_eq!(at(LockState::Acquired, Some(&stale), FIRST), Step::Fill);
        assert_eq!(at(LockState::HitForMiss, None, FIRST), Step::HitForMiss);
        assert_eq!(at(LockState::Held, None, FIRST), Step::Wait);
        assert_eq!(
            at(LockState::Held, Some(&stale), FIRST),
            Step::Hit(HitKind::Stale),
            "within stale-while-revalidate"
        );
        let no_swr = entry(0, 1_000, 0);
        assert_eq!(at(LockState::Held, Some(&no_swr), FIRST), Step::Wait);
        let fresh = entry(0, 10_000, 0);
        let waited = Polling {
            waited: true,
            ..FIRST
        };
        assert_eq!(
            at(LockState::Held, Some(&fresh), waited),
            Step::Hit(HitKind::Collapsed)
        );
    }
}
