//! The in-process home of the algorithms. `scripts/state.lua` is the Redis
//! home of the same arithmetic, line for line: integer microseconds, the same
//! floors, so both stores make the same decisions (the conformance tests and
//! a property test check it).

mod lease;

pub(crate) use lease::{available, mark, refund};

use std::collections::VecDeque;

use super::policy::{Algorithm, Compiled};
use super::store::PolicyOutcome;

/// One policy's state for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AlgState {
    /// GCRA: theoretical arrival time.
    Tat(u64),
    /// Token bucket: tokens at `last`.
    Bucket { tokens: u64, last: u64 },
    /// Fixed window (`prev` unused) and sliding window counter.
    Window { idx: u64, count: u64, prev: u64 },
    /// Sliding log: admission times, oldest first.
    Log(VecDeque<u64>),
}

/// What one policy would do with a request.
pub(crate) struct Peek {
    pub(crate) allowed: bool,
    /// Remaining units after the request if allowed, else now.
    pub(crate) remaining: u64,
    /// µs until the quota is whole again.
    pub(crate) reset: u64,
    /// µs until the request could pass (when not allowed).
    pub(crate) retry: u64,
    /// The state to keep if the whole request is allowed.
    pub(crate) next: Option<AlgState>,
}

impl Peek {
    /// µs after `now` at which the state equals a fresh one and can be dropped.
    pub(crate) fn expires_in(&self) -> u64 {
        self.reset
    }

    pub(crate) fn outcome(&self, request_allowed: bool, cost: u64) -> PolicyOutcome {
        PolicyOutcome {
            remaining: if self.allowed && !request_allowed {
                self.remaining + cost
            } else {
                self.remaining
            },
            reset_us: self.reset,
            retry_after_us: (!self.allowed).then_some(self.retry),
        }
    }
}

fn floor_div(a: u64, b: u64) -> u64 {
    a / b
}

/// Decides one policy for `cost` units at `now` (µs since the epoch).
pub(crate) fn peek(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    match p.algorithm {
        Algorithm::Gcra => gcra(p, state, cost, now),
        Algorithm::TokenBucket => bucket(p, state, cost, now),
        Algorithm::FixedWindow => fixed(p, state, cost, now),
        Algorithm::SlidingWindow => sliding(p, state, cost, now),
        Algorithm::SlidingLog => log(p, state, cost, now),
    }
}

fn gcra(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    let t = p.interval_us;
    let tau = t * p.capacity;
    let tat = match state {
        Some(AlgState::Tat(tat)) => (*tat).max(now),
        _ => now,
    };
    let new_tat = tat + cost * t;
    let allow_at = new_tat.saturating_sub(tau);
    if now < allow_at {
        return Peek {
            allowed: false,
            remaining: floor_div((tau + now).saturating_sub(tat), t),
            reset: tat - now,
            retry: allow_at - now,
            next: None,
        };
    }
    Peek {
        allowed: true,
        remaining: floor_div(tau + now - new_tat, t),
        reset: new_tat - now,
        retry: 0,
        next: Some(AlgState::Tat(new_tat)),
    }
}

/// A token bucket's (tokens, time of the last whole drip) at `now`.
fn tokens_at(p: &Compiled, state: Option<&AlgState>, now: u64) -> (u64, u64) {
    let (t, cap) = (p.interval_us, p.capacity);
    let (mut tokens, mut last) = match state {
        Some(AlgState::Bucket { tokens, last }) => (*tokens, *last),
        _ => (cap, now),
    };
    if now > last {
        let add = (now - last) / t;
        tokens += add;
        last += add * t;
    }
    if tokens >= cap {
        tokens = cap;
        last = now;
    }
    (tokens, last)
}

fn bucket(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    let t = p.interval_us;
    let cap = p.capacity;
    let (tokens, last) = tokens_at(p, state, now);
    // Time until `n` more tokens have dripped in, counting the partial drip.
    let refill = |missing: u64| (missing * t + last).saturating_sub(now);
    if tokens >= cost {
        let left = tokens - cost;
        return Peek {
            allowed: true,
            remaining: left,
            reset: refill(cap - left),
            retry: 0,
            next: Some(AlgState::Bucket { tokens: left, last }),
        };
    }
    Peek {
        allowed: false,
        remaining: tokens,
        reset: refill(cap - tokens),
        retry: refill(cost - tokens),
        next: None,
    }
}

fn window_counts(state: Option<&AlgState>, idx: u64) -> (u64, u64) {
    match state {
        Some(AlgState::Window {
            idx: w,
            count,
            prev,
        }) if *w == idx => (*count, *prev),
        Some(AlgState::Window { idx: w, count, .. }) if *w + 1 == idx => (0, *count),
        _ => (0, 0),
    }
}

fn fixed(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    let idx = now / p.period_us;
    let (count, _) = window_counts(state, idx);
    let reset = (idx + 1) * p.period_us - now;
    if count + cost <= p.limit {
        return Peek {
            allowed: true,
            remaining: p.limit - count - cost,
            reset,
            retry: 0,
            next: Some(AlgState::Window {
                idx,
                count: count + cost,
                prev: 0,
            }),
        };
    }
    Peek {
        allowed: false,
        remaining: p.limit.saturating_sub(count),
        reset,
        retry: reset,
        next: None,
    }
}

/// The first elapsed time in a window at which `floor(weight * (w - e) / w) <= a`.
fn decayed_at(weight: u64, a: u64, w: u64) -> u64 {
    if weight <= a {
        return 0;
    }
    let w_f = w as f64;
    (w_f - (a + 1) as f64 * w_f / weight as f64).floor() as u64 + 1
}

fn sliding(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    let w = p.period_us;
    let idx = now / w;
    let (cur, prev) = window_counts(state, idx);
    let elapsed = now - idx * w;
    let weighted = (prev as f64 * (w - elapsed) as f64 / w as f64).floor() as u64;
    let used = weighted + cur;
    let reset_for = |cur: u64| {
        if cur > 0 {
            (idx + 2) * w - now
        } else if prev > 0 {
            (idx + 1) * w - now
        } else {
            0
        }
    };
    if used + cost <= p.limit {
        return Peek {
            allowed: true,
            remaining: p.limit - used - cost,
            reset: reset_for(cur + cost),
            retry: 0,
            next: Some(AlgState::Window {
                idx,
                count: cur + cost,
                prev,
            }),
        };
    }
    let retry = if cur + cost <= p.limit {
        decayed_at(prev, p.limit - cur - cost, w).saturating_sub(elapsed)
    } else {
        (idx + 1) * w - now + decayed_at(cur, p.limit - cost, w)
    };
    Peek {
        allowed: false,
        remaining: p.limit.saturating_sub(used),
        reset: reset_for(cur),
        retry: retry.max(1),
        next: None,
    }
}

fn log(p: &Compiled, state: Option<&AlgState>, cost: u64, now: u64) -> Peek {
    let w = p.period_us;
    let mut entries = match state {
        Some(AlgState::Log(e)) => e.clone(),
        _ => VecDeque::new(),
    };
    while entries.front().is_some_and(|&t| t + w <= now) {
        entries.pop_front();
    }
    let count = entries.len() as u64;
    if count + cost <= p.limit {
        entries.extend(std::iter::repeat_n(now, cost as usize));
        let reset = entries.back().map_or(0, |&t| t + w - now);
        return Peek {
            allowed: true,
            remaining: p.limit - count - cost,
            reset,
            retry: 0,
            next: Some(AlgState::Log(entries)),
        };
    }
    let need = (count + cost - p.limit) as usize;
    let retry = entries.get(need - 1).map_or(w, |&t| t + w - now);
    Peek {
        allowed: false,
        remaining: p.limit.saturating_sub(count),
        reset: entries.back().map_or(0, |&t| t + w - now),
        retry,
        next: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::policy::Policy;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Runs arrivals `(gap µs, cost)` through one policy; returns the admitted
    /// `(time, cost)` pairs.
    fn run(policy: &Policy, arrivals: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let p = policy.compile().unwrap();
        let mut now = 1_700_000_000_000_000u64;
        let mut state = None;
        let mut admitted = Vec::new();
        for &(gap, cost) in arrivals {
            now += gap;
            let peek = peek(&p, state.as_ref(), cost, now);
            if peek.allowed {
                admitted.push((now, cost));
                state = peek.next;
            } else {
                assert!(peek.retry > 0, "a denial always has a wait");
            }
        }
        admitted
    }

    pub(super) fn sum_in(admitted: &[(u64, u64)], from: u64, to: u64) -> u64 {
        admitted
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, c)| c)
            .sum()
    }

    fn arrivals() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..400_000, 1u64..=3), 1..300)
    }

    pub(super) const LIMIT: u64 = 10;
    pub(super) const W: Duration = Duration::from_secs(1);
    pub(super) const W_US: u64 = 1_000_000;

    /// An interval of `admitted` (times sorted) in which more units passed
    /// than `burst + (its span + slack) / t`, as (units, bound).
    pub(super) fn over_rate(
        admitted: &[(u64, u64)],
        burst: u64,
        t: u64,
        slack: u64,
    ) -> Option<(u64, u64)> {
        let mut prefix = vec![0];
        for &(_, c) in admitted {
            prefix.push(prefix.last().unwrap() + c);
        }
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let units = prefix[j + 1] - prefix[i];
                let bound = burst + (admitted[j].0 - admitted[i].0 + slack) / t;
                if units > bound {
                    return Some((units, bound));
                }
            }
        }
        None
    }

    proptest! {
        #[test]
        fn sliding_log_never_admits_more_than_the_limit_in_any_window(a in arrivals()) {
            let adm = run(&Policy::sliding_log(LIMIT, W), &a);
            for &(t, _) in &adm {
                prop_assert!(sum_in(&adm, t.saturating_sub(W_US - 1), t) <= LIMIT);
            }
        }

        #[test]
        fn fixed_and_sliding_window_never_exceed_the_limit_per_aligned_window(a in arrivals()) {
            for policy in [Policy::fixed_window(LIMIT, W), Policy::sliding_window(LIMIT, W)] {
                let adm = run(&policy, &a);
                for &(t, _) in &adm {
                    let start = t / W_US * W_US;
                    prop_assert!(sum_in(&adm, start, start + W_US - 1) <= LIMIT);
                }
            }
        }

        #[test]
        fn gcra_and_token_bucket_never_exceed_burst_plus_rate(a in arrivals()) {
            let t = W_US / LIMIT;
            for policy in [Policy::gcra(LIMIT, W).burst(4), Policy::token_bucket(LIMIT, W).burst(4)] {
                let adm = run(&policy, &a);
                prop_assert_eq!(over_rate(&adm, 4, t, 0), None);
            }
        }

        #[test]
        fn a_denied_request_passes_exactly_when_its_retry_time_has_come(a in arrivals()) {
            for policy in [
                Policy::gcra(LIMIT, W),
                Policy::token_bucket(LIMIT, W),
                Policy::sliding_log(LIMIT, W),
                Policy::fixed_window(LIMIT, W),
                Policy::sliding_window(LIMIT, W),
            ] {
                let p = policy.compile().unwrap();
                let mut now = 1_700_000_000_000_000u64;
                let mut state = None;
                for &(gap, cost) in &a {
                    now += gap;
                    let pk = peek(&p, state.as_ref(), cost, now);
                    if pk.allowed {
                        state = pk.next;
                    } else {
                        let later = peek(&p, state.as_ref(), cost, now + pk.retry);
                        prop_assert!(later.allowed, "{:?}: retry {} too early", p.algorithm, pk.retry);
                        let sooner = peek(&p, state.as_ref(), cost, now + pk.retry - 1);
                        prop_assert!(!sooner.allowed, "{:?}: retry {} later than needed", p.algorithm, pk.retry);
                    }
                }
            }
        }
    }
}
