//! Denials remembered in process until their retry time: a client hammering
//! past its limit costs no store round trip.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

use super::store::Answer;
use crate::key::ClientKey;
use crate::store::memory::lock;

#[derive(Debug)]
struct Denied {
    at: Instant,
    until: Instant,
    /// Cheaper requests may still pass: only this cost or more is remembered.
    cost: u64,
    answer: Answer,
}

/// The remembered denials of one plan: at most [`MAX_DENIALS`], every
/// operation O(1) (amortised) at any size.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<ClientKey, Denied>,
    /// Keys in the order they were remembered, with the time they were: the
    /// oldest are forgotten first once expired or over the cap. A key
    /// remembered again has a stale entry here, skipped by its time.
    order: VecDeque<(ClientKey, Instant)>,
}

/// Most denials remembered at once: past it the oldest are forgotten (their
/// clients then cost one store call each again, nothing more).
pub(crate) const MAX_DENIALS: usize = 65_536;

impl Denials {
    pub(crate) fn remember(&self, key: &ClientKey, cost: u64, answer: &Answer) {
        let Some(retry) = answer
            .policies
            .iter()
            .filter_map(|p| p.retry_after_us)
            .max()
        else {
            return;
        };
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        inner.map.insert(
            key.clone(),
            Denied {
                at: now,
                until: now + Duration::from_micros(retry),
                cost,
                answer: answer.clone(),
            },
        );
        inner.order.push_back((key.clone(), now));
        // Forget from the oldest end: each entry is popped once (amortised O(1)).
        while let Some((old, at)) = inner.order.front() {
            let over = inner.map.len() > MAX_DENIALS || inner.order.len() > 2 * MAX_DENIALS;
            let current = inner.map.get(old).filter(|d| d.at == *at);
            match current {
                Some(d) if !over && d.until > now => break,
                Some(_) => {
                    inner.map.remove(old);
                }
                None => {}
            }
            inner.order.pop_front();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }

    /// The remembered denial of `key` for `cost`, with its times counted down.
    pub(crate) fn check(&self, key: &ClientKey, cost: u64) -> Option<Answer> {
        let mut inner = lock(&self.inner);
        let d = inner.map.get(key)?;
        let now = Instant::now();
        if now >= d.until {
            inner.map.remove(key);
            return None;
        }
        if cost < d.cost {
            return None;
        }
        let elapsed = now.duration_since(d.at).as_micros() as u64;
        let mut answer = d.answer.clone();
        for p in &mut answer.policies {
            p.reset_us = p.reset_us.saturating_sub(elapsed);
            p.retry_after_us = p.retry_after_us.map(|r| r.saturating_sub(elapsed).max(1));
        }
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::store::PolicyOutcome;

    fn denial(retry_us: u64) -> Answer {
        Answer {
            lease: None,
            local: false,
            allowed: false,
            policies: vec![PolicyOutcome {
                remaining: 0,
                reset_us: retry_us,
                retry_after_us: Some(retry_us),
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_expired_denials_are_forgotten() {
        let d = Denials::default();
        let long = denial(3_600_000_000);
        for i in 0..(MAX_DENIALS + 1000) {
            d.remember(&ClientKey::new("t", i.to_string()), 1, &long);
        }
        assert_eq!(d.len(), MAX_DENIALS, "capped");
        assert!(
            d.check(&ClientKey::new("t", "0"), 1).is_none(),
            "oldest forgotten"
        );
        let newest = ClientKey::new("t", (MAX_DENIALS + 999).to_string());
        assert!(d.check(&newest, 1).is_some(), "newest kept");

        let short = Denials::default();
        for i in 0..100 {
            short.remember(&ClientKey::new("s", i.to_string()), 1, &denial(1_000));
        }
        tokio::time::advance(Duration::from_millis(5)).await;
        short.remember(&ClientKey::new("s", "late"), 1, &denial(1_000_000));
        assert_eq!(short.len(), 1, "expired ones went as the new one came");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_remembered_again_keeps_its_latest_denial() {
        let d = Denials::default();
        let k = ClientKey::new("t", "k");
        d.remember(&k, 1, &denial(1_000));
        d.remember(&k, 1, &denial(10_000_000));
        tokio::time::advance(Duration::from_millis(5)).await;
        d.remember(&ClientKey::new("t", "other"), 1, &denial(1_000));
        assert!(
            d.check(&k, 1).is_some(),
            "the stale queue entry did not evict it"
        );
    }
}
