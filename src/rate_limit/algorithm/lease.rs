//! Lease arithmetic: how much of a client's quota a policy could hand out
//! now, and how unused units of a lease go back. `scripts/lease.lua` has the
//! same arithmetic (`available`, `mark_of`, `give_back`).
//!
//! A lease of `g` units is an ordinary all-or-nothing admission of cost `g`.
//! Its units are then spent in process, for up to the lease's age, and the
//! unused ones are given back:
//!
//! - GCRA (`tat`) and token bucket (its "full at" time `last + (cap -
//!   tokens) × interval`, GCRA's `tat` in another form): the lease leaves a
//!   mark `L`, the time it pushed the state to. Giving back `u` units moves
//!   the state back by `min(u × interval, L - now)`: units whose slot in time
//!   has already passed are not returned (returning them would hand out
//!   capacity the passage of time already refilled, and admit more than the
//!   policy over a window).
//! - Fixed window: the count goes down by `u` when the window is still the
//!   lease's (the mark); a lease never outlives its window.
//! - Sliding log and sliding window counter: no leases (build refuses them).
//!
//! The units of a lease count when it is taken and are spent up to its age
//! later: over any interval the fleet admits at most what the policy admits
//! over that interval stretched by the lease age (fixed window: exactly the
//! limit per window). The property tests below check it.

use super::{tokens_at, window_counts, AlgState};
use crate::rate_limit::policy::{Algorithm, Compiled};

/// Units `p` could admit at `now` in one request.
pub(crate) fn available(p: &Compiled, state: Option<&AlgState>, now: u64) -> u64 {
    match p.algorithm {
        Algorithm::Gcra => {
            let tat = match state {
                Some(AlgState::Tat(tat)) => (*tat).max(now),
                _ => now,
            };
            (p.interval_us * p.capacity + now).saturating_sub(tat) / p.interval_us
        }
        Algorithm::TokenBucket => tokens_at(p, state, now).0,
        Algorithm::FixedWindow => {
            let (count, _) = window_counts(state, now / p.period_us);
            p.limit.saturating_sub(count)
        }
        Algorithm::SlidingWindow | Algorithm::SlidingLog => 0,
    }
}

/// What a lease that left `state` must bring back to give units back.
pub(crate) fn mark(p: &Compiled, state: &AlgState) -> u64 {
    match state {
        AlgState::Tat(tat) => *tat,
        AlgState::Bucket { tokens, last } => last + (p.capacity - tokens) * p.interval_us,
        AlgState::Window { idx, .. } => *idx,
        AlgState::Log(_) => 0,
    }
}

/// The state after `unused` units of a lease with `mark` are given back at
/// `now`, and µs until it may be dropped; `None` when nothing goes back.
pub(crate) fn refund(
    p: &Compiled,
    state: Option<&AlgState>,
    unused: u64,
    mark: u64,
    now: u64,
) -> Option<(AlgState, u64)> {
    let t = p.interval_us;
    match (p.algorithm, state) {
        (Algorithm::Gcra, Some(AlgState::Tat(tat))) => {
            let back = (unused * t).min(mark.saturating_sub(now));
            let tat = tat.saturating_sub(back).max(now);
            Some((AlgState::Tat(tat), tat - now))
        }
        (Algorithm::TokenBucket, Some(_)) => {
            let (tokens, last) = tokens_at(p, state, now);
            let back = unused.min(mark.saturating_sub(now) / t);
            let tokens = (tokens + back).min(p.capacity);
            let last = if tokens == p.capacity { now } else { last };
            let reset = ((p.capacity - tokens) * t + last).saturating_sub(now);
            Some((AlgState::Bucket { tokens, last }, reset))
        }
        (Algorithm::FixedWindow, Some(AlgState::Window { idx, count, .. })) if *idx == mark => {
            let count = count.saturating_sub(unused);
            let reset = (idx + 1) * p.period_us - now.min((idx + 1) * p.period_us);
            Some((
                AlgState::Window {
                    idx: *idx,
                    count,
                    prev: 0,
                },
                reset,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::peek;
    use super::super::tests::{over_rate, sum_in, LIMIT, W, W_US};
    use super::*;
    use crate::rate_limit::policy::Policy;
    use proptest::prelude::*;

    /// One instance's lease: units left, when it ends, and its marks.
    struct Held {
        left: u64,
        ends: u64,
        mark: u64,
    }

    const UNITS: u64 = 4;
    const MAX_AGE: u64 = 300_000;
    const INSTANCES: usize = 3;

    /// Arrivals `(gap µs, instance, cost)` at a fleet whose instances 0..2
    /// lease `UNITS` at a time for `MAX_AGE` and whose instance 3 asks the
    /// store each time; returns every admitted `(time, cost)`.
    fn run(policy: &Policy, arrivals: &[(u64, usize, u64)]) -> Vec<(u64, u64)> {
        let p = policy.compile().unwrap();
        let mut now = 1_700_000_000_000_000u64;
        let mut state: Option<AlgState> = None;
        let mut held: Vec<Option<Held>> = (0..INSTANCES).map(|_| None).collect();
        let mut admitted = Vec::new();
        let give_back = |state: &mut Option<AlgState>, h: Held, now: u64| {
            if let Some((s, _)) = refund(&p, state.as_ref(), h.left, h.mark, now) {
                *state = Some(s);
            }
        };
        for &(gap, who, cost) in arrivals {
            now += gap;
            if who == INSTANCES {
                let pk = peek(&p, state.as_ref(), cost, now);
                if pk.allowed {
                    admitted.push((now, cost));
                    state = pk.next;
                }
                continue;
            }
            if let Some(h) = held[who].take() {
                if now < h.ends && h.left >= cost {
                    held[who] = Some(Held {
                        left: h.left - cost,
                        ..h
                    });
                    admitted.push((now, cost));
                    continue;
                }
                give_back(&mut state, h, now);
            }
            let grant = UNITS.max(cost).min(available(&p, state.as_ref(), now));
            if grant < cost {
                assert!(!peek(&p, state.as_ref(), cost, now).allowed);
                continue;
            }
            let pk = peek(&p, state.as_ref(), grant, now);
            assert!(pk.allowed, "what is available is admitted");
            let next = pk.next.expect("allowed");
            // A fixed window's lease ends with its window.
            let ends = match p.algorithm {
                Algorithm::FixedWindow => now + MAX_AGE.min(pk.reset),
                _ => now + MAX_AGE,
            };
            held[who] = Some(Held {
                left: grant - cost,
                ends,
                mark: mark(&p, &next),
            });
            state = Some(next);
            admitted.push((now, cost));
        }
        admitted
    }

    fn arrivals() -> impl Strategy<Value = Vec<(u64, usize, u64)>> {
        prop::collection::vec((0u64..150_000, 0..=INSTANCES, 1u64..=3), 1..300)
    }

    proptest! {
        #[test]
        fn leased_gcra_and_token_bucket_stay_within_the_rate_over_the_lease_age(a in arrivals()) {
            let t = W_US / LIMIT;
            for policy in [Policy::gcra(LIMIT, W).burst(6), Policy::token_bucket(LIMIT, W).burst(6)] {
                let adm = run(&policy, &a);
                prop_assert_eq!(over_rate(&adm, 6, t, MAX_AGE), None, "{:?}", policy.algorithm());
            }
        }

        #[test]
        fn leased_fixed_window_never_exceeds_the_limit_per_window(a in arrivals()) {
            let adm = run(&Policy::fixed_window(LIMIT, W), &a);
            for &(t, _) in &adm {
                let start = t / W_US * W_US;
                prop_assert!(sum_in(&adm, start, start + W_US - 1) <= LIMIT);
            }
        }
    }

    #[test]
    fn units_whose_time_has_passed_are_not_given_back() {
        let p = Policy::gcra(10, W).compile().unwrap();
        let now = 1_000_000_000;
        // A lease of 10 units pushed the state to now + 1 s; 0.5 s later,
        // only the half still ahead can go back.
        let (s, _) = refund(
            &p,
            Some(&AlgState::Tat(now + W_US)),
            10,
            now + W_US,
            now + 500_000,
        )
        .unwrap();
        assert_eq!(s, AlgState::Tat(now + 500_000));
        // Idle time while the lease was out: 10 units at 0 (to 1 s), one
        // more of another instance at 0.5 s (to 1.1 s), all 10 given back at
        // 0.55 s. Only the 0.45 s still ahead of the lease go back: 9 units
        // pass at 0.55 s, 10 with the one at 0.5 s, as the policy allows
        // (returning all 10 would let 10 pass: 11 within 0.05 s).
        let (s, _) = refund(
            &p,
            Some(&AlgState::Tat(now + 1_100_000)),
            10,
            now + W_US,
            now + 550_000,
        )
        .unwrap();
        assert_eq!(available(&p, Some(&s), now + 550_000), 9);
        // Another client's units stacked after the lease stay charged.
        let (s, _) = refund(
            &p,
            Some(&AlgState::Tat(now + 2 * W_US)),
            10,
            now + W_US,
            now,
        )
        .unwrap();
        assert_eq!(s, AlgState::Tat(now + W_US));
        let fw = Policy::fixed_window(10, W).compile().unwrap();
        let w = AlgState::Window {
            idx: 5,
            count: 8,
            prev: 0,
        };
        assert!(
            refund(&fw, Some(&w), 3, 4, 5 * W_US).is_none(),
            "another window"
        );
        let (s, _) = refund(&fw, Some(&w), 3, 5, 5 * W_US).unwrap();
        assert_eq!(
            s,
            AlgState::Window {
                idx: 5,
                count: 5,
                prev: 0
            }
        );
    }
}
