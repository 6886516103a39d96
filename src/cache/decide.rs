//! What a cacheable request does after each store answer: pure steps that
//! the resolve loop follows (and unit tests drive without a store).

use std::sync::Arc;

use bytes::Bytes;

use super::entry::{decode, Entry, Meta};
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

/// What a request accepts from a stored response (RFC 9111 §5.2.1; only
/// when request directives are honoured, else the default: nothing asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Want {
    /// `max-age`: the response's age at most this many seconds.
    pub(crate) max_age: Option<u64>,
    /// `min-fresh`: fresh for at least this many seconds more.
    pub(crate) min_fresh: Option<u64>,
    /// `max-stale`: stale by at most this many seconds is fine.
    pub(crate) max_stale: Option<u64>,
    /// `no-cache`: validated with the origin first.
    pub(crate) no_cache: bool,
    /// Entries stored less than this long ago (ms) are not revalidated
    /// for a request's sake: clients cannot force origin load.
    pub(crate) floor_ms: u64,
}

/// What a stored response is to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Fresh, and fresh enough: serve it.
    Fresh,
    /// Stale, but the request's `max-stale` takes it.
    Grace,
    /// Fresh, but the request wants it validated (`no-cache`, `max-age`, `min-fresh`).
    Revalidate,
    Stale,
}

impl Want {
    /// Whether the request asks for a validated response (`no-cache`,
    /// `max-age`, `min-fresh`): no stale one served while another request
    /// revalidates.
    pub(crate) fn demands(&self) -> bool {
        self.no_cache || self.max_age.is_some() || self.min_fresh.is_some()
    }

    pub(crate) fn judge(&self, e: &Entry, now: u64) -> Judged {
        let fresh_until = e.meta.fresh_until_ms();
        let in_cache = now.saturating_sub(e.meta.stored_ms);
        if in_cache >= self.floor_ms {
            let age_ms = u64::from(e.meta.age_s) * 1000 + in_cache;
            // `max-age=0` asks for a validated response whatever the age.
            let too_old = self
                .max_age
                .is_some_and(|m| m == 0 || age_ms > m.saturating_mul(1000));
            let short = self
                .min_fresh
                .is_some_and(|m| fresh_until.saturating_sub(now) < m.saturating_mul(1000));
            if self.no_cache || too_old || short {
                return Judged::Revalidate;
            }
        }
        if now < fresh_until {
            return Judged::Fresh;
        }
        // `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid it (§5.2.2).
        let allowed = !e.meta.must_revalidate && !e.meta.s_maxage;
        let within = self
            .max_stale
            .is_some_and(|m| now - fresh_until <= m.saturating_mul(1000));
        if allowed && within {
            Judged::Grace
        } else {
            Judged::Stale
        }
    }
}

/// The entry stored bytes hold for `slot`, read under the URL's generation
/// `gen`: an entry stored before a purge that left it (a soft purge) is
/// stale from that purge on. A foreign or corrupt entry is a miss.
pub(crate) fn decode_for(slot: &Slot, raw: Bytes, gen: u64) -> Option<Entry> {
    match decode(raw) {
        Ok(mut e) if fits(slot, &e.meta) => {
            if let Some(m) = purged(&e.meta, gen) {
                e.meta = m;
            }
            Some(e)
        }
        Ok(_) => None,
        Err(err) => {
            tracing::debug!(?err, "response cache: undecodable entry; treated as a miss");
            None
        }
    }
}

/// An entry kept decoded (in process) for `slot`, read under the URL's
/// generation `gen`, as [`decode_for`] reads stored bytes.
pub(crate) fn adopt(slot: &Slot, e: Arc<Entry>, gen: u64) -> Option<Arc<Entry>> {
    if !fits(slot, &e.meta) {
        return None;
    }
    Some(match purged(&e.meta, gen) {
        Some(meta) => Arc::new(Entry {
            meta,
            ..Entry::clone(&e)
        }),
        None => e,
    })
}

/// Whether an entry with `m` was stored for `slot` (else it is a miss).
fn fits(slot: &Slot, m: &Meta) -> bool {
    let fits = m.key_tag == slot.tag();
    if !fits {
        tracing::debug!("response cache: foreign entry; treated as a miss");
    }
    fits
}

/// The metadata of an entry stored before the purge of generation `gen`
/// (fresh until that purge at most); `None` when stored after it.
fn purged(m: &Meta, gen: u64) -> Option<Meta> {
    if m.stored_ms.saturating_mul(1000) >= gen {
        return None;
    }
    let purged_ms = gen / 1000;
    Some(Meta {
        fresh_ms: m.fresh_ms.min(purged_ms.saturating_sub(m.stored_ms)),
        ..*m
    })
}

/// Decides the leader's next move from a lookup's answer.
pub(crate) fn after_lookup(
    lock: LockState,
    entry: Option<&Entry>,
    now: u64,
    want: &Want,
    p: Polling,
) -> Step {
    let judged = entry.map(|e| want.judge(e, now));
    if judged == Some(Judged::Grace) && lock != LockState::HitForMiss {
        return Step::Hit(HitKind::Stale);
    }
    match (entry, lock) {
        (Some(e), LockState::NotTried) => {
            if !p.waited && !p.force && judged != Some(Judged::Fresh) {
                return Step::Force;
            }
            Step::Hit(if p.waited || !fresh(e, now) {
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
        (Some(e), LockState::Held) if swr_ok(e, now) && judged != Some(Judged::Revalidate) => {
            Step::Hit(if fresh(e, now) {
                HitKind::Collapsed
            } else {
                HitKind::Stale
            })
        }
        (_, LockState::Held) => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stored_ms: u64, fresh_ms: u64, swr_s: u32) -> Entry {
        Entry {
            meta: Meta {
                status: 200,
                stored_ms,
                fresh_ms,
                swr_s,
                ..Meta::default()
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
        let step = |p, want: &Want| after_lookup(LockState::NotTried, Some(&e), 5_000, want, p);
        assert_eq!(step(FIRST, &Want::default()), Step::Hit(HitKind::Fresh));
        let old_enough = &Want {
            no_cache: true,
            floor_ms: 1_000,
            ..Want::default()
        };
        assert_eq!(step(FIRST, old_enough), Step::Force);
        let forced = Polling {
            force: true,
            ..FIRST
        };
        assert_eq!(step(forced, old_enough), Step::Hit(HitKind::Fresh));
        let young = &Want {
            floor_ms: 10_000,
            ..*old_enough
        };
        assert_eq!(step(FIRST, young), Step::Hit(HitKind::Fresh));
        let waited = Polling {
            waited: true,
            ..FIRST
        };
        assert_eq!(step(waited, old_enough), Step::Hit(HitKind::Collapsed));
    }

    #[test]
    fn a_missing_entry_under_a_fresh_index_is_repaired_under_the_lock() {
        let step = |p| after_lookup(LockState::NotTried, None, 0, &Want::default(), p);
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
        let at = |lock, e: Option<&Entry>, p| after_lookup(lock, e, 2_000, &Want::default(), p);
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

    #[test]
    fn rfc9111_5_2_1_request_directives_judge_a_stored_response() {
        // Stored at 1 s with an Age of 2 s, fresh for 10 s: at 5 s it is 6 s old, 6 s left.
        let mut e = entry(1_000, 10_000, 0);
        e.meta.age_s = 2;
        let none = Want::default();
        let w = |max_age, min_fresh, max_stale, no_cache, floor_ms| Want {
            max_age,
            min_fresh,
            max_stale,
            no_cache,
            floor_ms,
        };
        use Judged::*;
        for (want, now, judged) in [
            (none, 5_000, Fresh),
            (w(Some(6), None, None, false, 0), 5_000, Fresh),
            (w(Some(5), None, None, false, 0), 5_000, Revalidate),
            (w(Some(0), None, None, false, 0), 1_000, Revalidate),
            (w(None, Some(6), None, false, 0), 5_000, Fresh),
            (w(None, Some(7), None, false, 0), 5_000, Revalidate),
            (w(None, None, None, true, 0), 5_000, Revalidate),
            // Younger than the floor: not revalidated for the request's sake.
            (w(None, None, None, true, 5_000), 5_000, Fresh),
            // Stale at 12 s: max-stale takes it.
            (none, 12_000, Stale),
            (w(None, None, Some(1), false, 0), 12_000, Grace),
            (w(None, None, Some(1), false, 0), 12_001, Stale),
            (w(None, None, Some(u64::MAX), false, 0), 99_000, Grace),
        ] {
            assert_eq!(want.judge(&e, now), judged, "{want:?} at {now}");
        }
        // ...unless the response forbids serving it stale.
        let grace = w(None, None, Some(60), false, 0);
        for (must_revalidate, s_maxage) in [(true, false), (false, true)] {
            let mut strict = e.clone();
            strict.meta.must_revalidate = must_revalidate;
            strict.meta.s_maxage = s_maxage;
            assert_eq!(grace.judge(&strict, 12_000), Stale);
        }
        // A lookup that found the entry stale and took the lock serves it.
        let step = after_lookup(LockState::Acquired, Some(&e), 12_000, &grace, FIRST);
        assert_eq!(step, Step::Hit(HitKind::Stale));
    }
}
