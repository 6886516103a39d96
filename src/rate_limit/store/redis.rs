//! The Redis home of the algorithms: every decision is one call of the
//! check script (`scripts/state.lua`, `lease.lua`, `check.lua`), batched
//! with the decisions in flight.
//!
//! A batch is written straight into one `EVALSHA`: each policy set's
//! parameters once, each client's keys once (the requests of one client in
//! a batch are decided together, against one read of its state), and per
//! request only its cost.

use std::io::Write as _;
use std::sync::{Arc, LazyLock};

use futures_util::future::BoxFuture;
use redis::{Cmd, RedisWrite as _, Value};

use super::{Answer, Ask, Granted, PolicyOutcome, Question, RateLimitHome, RateLimitStore};
use crate::error::StoreError;
use crate::key::DIGEST_LEN;
use crate::rate_limit::policy::{Algorithm, Compiled};
use crate::store::batch::{call_script, evalsha, Batcher, Packed, Protocol};
use crate::store::lane::Lane;
use crate::RedisStore;

/// `check.lua`, after the algorithms (`state.lua`) and leases (`lease.lua`)
/// it calls: one script, in three files.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(concat!(
        include_str!("../scripts/state.lua"),
        include_str!("../scripts/lease.lua"),
        include_str!("../scripts/check.lua"),
    ))
});

/// The rate-limit home of one [`RedisStore`]: the layer's own lane (own
/// breakers) and the store's batcher of the check script.
#[derive(Debug)]
pub(crate) struct RedisHome {
    lane: Lane,
    batcher: Arc<Batcher<Checks>>,
}

impl RateLimitStore for RedisStore {
    fn rate_limit_home(&self) -> Arc<dyn RateLimitHome> {
        let prefix = self.prefix().to_owned();
        Arc::new(RedisHome {
            lane: {
                let lane = self.lane("rate limit", false);
                lane.preload(&[&*SCRIPT]);
                lane
            },
            batcher: self.batcher(|| Checks { prefix }),
        })
    }
}

impl RateLimitHome for RedisHome {
    fn check(&self, q: &Question) -> BoxFuture<'static, Result<Answer, StoreError>> {
        let item = Check {
            scope: q.scope.clone(),
            policies: q.policies.clone(),
            digest: q.key.digest_bytes(),
            cost: q.cost,
            ask: q.ask.clone(),
        };
        let lane = self.lane.clone();
        let batcher = self.batcher.clone();
        Box::pin(async move { batcher.submit(&lane, item).await })
    }

    fn counters(&self) -> usize {
        // One batcher of the check script per store, shared by its clones.
        Arc::as_ptr(&self.batcher) as usize
    }
}

/// One decision in a batch.
pub(crate) struct Check {
    scope: Arc<str>,
    policies: Arc<[Compiled]>,
    digest: [u8; DIGEST_LEN],
    cost: u64,
    ask: Ask,
}

impl Check {
    /// The group of checks decided against one state: one client under one
    /// policy set (a set belongs to one layer, hence one scope).
    fn group(&self) -> (usize, &[u8; DIGEST_LEN]) {
        (self.policies.as_ptr() as usize, &self.digest)
    }
}

/// The check script's protocol, for the store with key prefix `prefix`.
pub(crate) struct Checks {
    prefix: String,
}

impl Checks {
    /// `{prefix}:rl:{scope:client}:{policy}:{algorithm}`: the hash tag keeps
    /// one client's policies in one cluster slot.
    fn write_key(&self, cmd: &mut Cmd, c: &Check, p: &Compiled) {
        let mut w = cmd.writer_for_next_arg();
        let _ = w.write_all(self.prefix.as_bytes());
        let _ = w.write_all(b":rl:{");
        let _ = w.write_all(c.scope.as_bytes());
        let _ = w.write_all(b":");
        let _ = w.write_all(&c.digest);
        let _ = w.write_all(b"}:");
        let _ = w.write_all(p.key_suffix.as_bytes());
    }
}

/// The order in which the script answers: item indices, grouped.
pub(crate) struct Layout(Vec<u32>);

impl Protocol for Checks {
    type Item = Check;
    type Reply = Answer;

    fn slot(&self, c: &Check) -> u16 {
        crate::store::slots::slot::of_parts(&[c.scope.as_bytes(), b":", &c.digest])
    }

    fn run<'a>(
        &'a self,
        lane: &'a Lane,
        slot: u16,
        items: &'a [Check],
    ) -> BoxFuture<'a, Vec<Result<Answer, StoreError>>> {
        let mut cmd = evalsha(&SCRIPT);
        let layout = self.encode(items, &mut cmd);
        Box::pin(async move {
            match call_script(lane, slot, &SCRIPT, &cmd).await {
                Ok(reply) => self.decode(items, layout, reply),
                Err(e) => items.iter().map(|_| Err(e.duplicate())).collect(),
            }
        })
    }
}

impl Checks {
    fn encode(&self, items: &[Check], cmd: &mut Cmd) -> Layout {
        // Items of one group become neighbours, in arrival order, and the
        // groups of one policy set too.
        let mut order: Vec<u32> = (0..items.len() as u32).collect();
        order.sort_by(|&a, &b| items[a as usize].group().cmp(&items[b as usize].group()));
        let item = |i: usize| &items[order[i] as usize];
        let heads: Vec<usize> = (0..order.len())
            .filter(|&i| i == 0 || item(i - 1).group() != item(i).group())
            .collect();
        let same_set = |a: usize, b: usize| Arc::ptr_eq(&item(a).policies, &item(b).policies);
        let set_heads: Vec<usize> = (0..heads.len())
            .filter(|&g| g == 0 || !same_set(heads[g - 1], heads[g]))
            .collect();
        let keys: usize = heads.iter().map(|&h| item(h).policies.len()).sum();
        cmd.arg(keys);
        for &h in &heads {
            let c = item(h);
            for p in c.policies.iter() {
                self.write_key(cmd, c, p);
            }
        }
        // Two layers charging one counter name the same key twice: the
        // script keeps one state for it.
        let aliases = if set_heads.len() > 1 {
            aliases(heads.iter().map(|&h| item(h)))
        } else {
            Vec::new()
        };
        // Every number goes in one argument, as little-endian doubles.
        let mut w = cmd.writer_for_next_arg();
        let mut num = |v: f64| {
            let _ = w.write_all(&v.to_le_bytes());
        };
        num(aliases.len() as f64);
        for (k, first) in aliases {
            num(k as f64);
            num(first as f64);
        }
        num(set_heads.len() as f64);
        for (s, &g) in set_heads.iter().enumerate() {
            let policies = &item(heads[g]).policies;
            num(policies.len() as f64);
            for p in policies.iter() {
                let (x, y) = match p.algorithm {
                    Algorithm::Gcra | Algorithm::TokenBucket => (p.capacity, p.interval_us),
                    _ => (p.limit, p.period_us),
                };
                num(f64::from(p.algorithm.code()));
                num(x as f64);
                num(y as f64);
            }
            let next = set_heads.get(s + 1).copied().unwrap_or(heads.len());
            num((next - g) as f64);
        }
        for (g, &h) in heads.iter().enumerate() {
            let end = heads.get(g + 1).copied().unwrap_or(order.len());
            num((end - h) as f64);
            for i in h..end {
                let c = item(i);
                match &c.ask {
                    Ask::Check => num(c.cost as f64),
                    Ask::Lease { want } => {
                        num(-1.0);
                        num(c.cost as f64);
                        num(*want as f64);
                    }
                    Ask::Refund { unused, marks } => {
                        num(-2.0);
                        num(*unused as f64);
                        for &m in marks.iter() {
                            num(m as f64);
                        }
                    }
                }
            }
        }
        drop(w);
        Layout(order)
    }

    fn decode(
        &self,
        items: &[Check],
        layout: Layout,
        reply: Value,
    ) -> Vec<Result<Answer, StoreError>> {
        let mut answers: Vec<Option<Result<Answer, StoreError>>> =
            items.iter().map(|_| None).collect();
        match Packed::new(&reply) {
            Ok(mut ints) => {
                for i in layout.0 {
                    let c = &items[i as usize];
                    answers[i as usize] = Some(answer(&mut ints, &c.ask, c.policies.len()));
                }
                if !ints.is_empty() {
                    let e = StoreError::protocol("the rate-limit script answered too much");
                    return items.iter().map(|_| Err(e.duplicate())).collect();
                }
            }
            Err(e) => return items.iter().map(|_| Err(e.duplicate())).collect(),
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(StoreError::protocol("no answer"))))
            .collect()
    }
}

/// Keys (numbered from 1 in KEYS order) named like an earlier one, with
/// the number of that earlier one.
fn aliases<'a>(groups: impl Iterator<Item = &'a Check>) -> Vec<(usize, usize)> {
    let mut seen = std::collections::HashMap::new();
    let mut aliases = Vec::new();
    let mut k = 0;
    for c in groups {
        for p in c.policies.iter() {
            k += 1;
            let name = (&*c.scope, &c.digest, p.key_suffix.as_str());
            match seen.entry(name) {
                std::collections::hash_map::Entry::Occupied(e) => aliases.push((k, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(k);
                }
            }
        }
    }
    aliases
}

/// One request's answer. A check: per policy remaining, reset, retry (-1:
/// allows). A lease: the units granted (0: denied), then per policy the
/// same and its mark. A refund: 1.
fn answer(ints: &mut Packed<'_>, ask: &Ask, n: usize) -> Result<Answer, StoreError> {
    let granted = match ask {
        Ask::Check => None,
        Ask::Lease { .. } => Some(ints.int()?.max(0) as u64),
        Ask::Refund { .. } => {
            ints.int()?;
            return Ok(Answer {
                allowed: true,
                policies: Vec::new(),
                lease: None,
                local: false,
            });
        }
    };
    let mut policies = Vec::with_capacity(n);
    let mut marks = Vec::new();
    for _ in 0..n {
        let (remaining, reset, retry) = (ints.int()?, ints.int()?, ints.int()?);
        policies.push(PolicyOutcome {
            remaining: remaining.max(0) as u64,
            reset_us: reset.max(0) as u64,
            retry_after_us: (retry >= 0).then_some(retry as u64),
        });
        if granted.is_some() {
            marks.push(ints.int()?.max(0) as u64);
        }
    }
    let allowed = policies.iter().all(|p| p.retry_after_us.is_none());
    let lease = match granted {
        Some(units) if allowed => Some(Granted {
            units,
            marks: marks.into(),
        }),
        _ => None,
    };
    Ok(Answer {
        allowed,
        policies,
        lease,
        local: false,
    })
}
