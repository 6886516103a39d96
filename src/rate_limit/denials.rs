//! Denials remembered in process until their retry time: a client hammering
//! past its limit costs no store round trip.

use std::collections::HashMap;
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

#[derive(Debug, Default)]
pub(crate) struct Denials {
    map: Mutex<HashMap<ClientKey, Denied>>,
}

const SWEEP_AT: usize = 4096;

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
        let mut map = lock(&self.map);
        if map.len() >= SWEEP_AT {
            map.retain(|_, d| d.until > now);
        }
        map.insert(
            key.clone(),
            Denied {
                at: now,
                until: now + Duration::from_micros(retry),
                cost,
                answer: answer.clone(),
            },
        );
    }

    /// The remembered denial of `key` for `cost`, with its times counted down.
    pub(crate) fn check(&self, key: &ClientKey, cost: u64) -> Option<Answer> {
        let mut map = lock(&self.map);
        let d = map.get(key)?;
        let now = Instant::now();
        if now >= d.until {
            map.remove(key);
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
