//! Local quota leases: a slice of a client's quota taken from the store in
//! one atomic step and spent in process, so that a hot client costs one
//! store call per slice rather than per request.
//!
//! A lease is an ordinary all-or-nothing admission of as many units as every
//! policy of the request's plan allows now, up to the slice (and at least the
//! request's cost). Requests of the same client that arrive while a lease is
//! being taken wait for it and share it. What a lease has not spent when its
//! age is up (a fixed window's lease ends with its window at the latest) is
//! given back to the store; see `algorithm::lease` for the arithmetic and the
//! bound it keeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::{self, BoxFuture};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::plan::PlanSet;
use super::policy::Algorithm;
use super::store::{Answer, Ask, Question, RateLimitHome};
use crate::error::{ConfigError, StoreError};
use crate::key::ClientKey;
use crate::store::memory::lock;

/// Most leases one layer holds at once: past it, requests of clients
/// without a lease ask the store each time.
pub(crate) const MAX_LEASES: usize = 65_536;

/// The leases of one layer, per plan (its policy set) and client.
pub(crate) struct Leases {
    home: Arc<dyn RateLimitHome>,
    units: u64,
    max_age: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By policy set (its address), then client.
    plans: HashMap<usize, HashMap<ClientKey, Slot>>,
    len: usize,
    sweeping: bool,
}

enum Slot {
    /// A lease in hand.
    Held(Held),
    /// A lease being taken, and the requests waiting for it.
    Taking(Vec<Waiter>),
}

struct Held {
    left: u64,
    ends: Instant,
    /// The store's answer to the lease, for the fields of local decisions.
    answer: Answer,
    taken: Instant,
    question: Question,
}

struct Waiter {
    cost: u64,
    tx: oneshot::Sender<Option<Answer>>,
}

type Check = BoxFuture<'static, Result<Answer, StoreError>>;

/// Checks a layer's lease settings against its plans.
pub(crate) fn check(
    units: u64,
    max_age: Duration,
    plans: &[Arc<PlanSet>],
) -> Result<(), ConfigError> {
    if units == 0 {
        return Err(ConfigError::new("a lease needs at least 1 unit"));
    }
    if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&max_age) {
        return Err(ConfigError::new(
            "a lease's max_age must be between 1 ms and an hour",
        ));
    }
    for plan in plans {
        for p in plan.policies.iter() {
            if matches!(
                p.algorithm,
                Algorithm::SlidingLog | Algorithm::SlidingWindow
            ) {
                return Err(ConfigError::new(format!(
                    "policy {:?}: leases work with GCRA, token bucket and fixed window policies; \
                     a sliding log or sliding window cannot take unused units back",
                    p.name
                )));
            }
        }
    }
    Ok(())
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("units", &self.units)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Leases {
    pub(crate) fn new(home: Arc<dyn RateLimitHome>, units: u64, max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            home,
            units,
            max_age,
            inner: Mutex::default(),
        })
    }

    /// Decides `q` from the client's lease, or takes one (giving back what
    /// an ended one left), or waits for the one being taken.
    pub(crate) fn check(self: &Arc<Self>, q: &Question, max_cost: u64) -> Check {
        let now = Instant::now();
        let plan = Arc::as_ptr(&q.policies) as *const () as usize;
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let clients = inner.plans.entry(plan).or_default();
        let ended = match clients.get_mut(&q.key) {
            Some(Slot::Held(h)) if now < h.ends && h.left >= q.cost => {
                h.left -= q.cost;
                return Box::pin(future::ready(Ok(h.local(now))));
            }
            Some(Slot::Taking(waiters)) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(Waiter { cost: q.cost, tx });
                let (home, q) = (self.home.clone(), q.clone());
                return Box::pin(async move {
                    match rx.await {
                        Ok(Some(answer)) => Ok(answer),
                        // Not enough in the lease: ask for this one alone.
                        _ => home.check(&q).await,
                    }
                });
            }
            Some(Slot::Held(_)) => match clients.insert(q.key.clone(), Slot::Taking(Vec::new())) {
                Some(Slot::Held(h)) => Some(h),
                _ => None,
            },
            None if inner.len >= MAX_LEASES => return self.home.check(q),
            None => {
                clients.insert(q.key.clone(), Slot::Taking(Vec::new()));
                inner.len += 1;
                None
            }
        };
        drop(guard);
        let give_back = ended.and_then(|h| h.give_back());
        let want = self.units.min(max_cost).max(q.cost);
        let lease = Question {
            ask: Ask::Lease { want },
            ..q.clone()
        };
        let this = self.clone();
        Box::pin(async move {
            let asked = Instant::now();
            let back = give_back.map(|r| this.home.check(&r));
            let taken = match back {
                // Both in one batch: the units go back as the new lease is taken.
                Some(back) => future::join(this.home.check(&lease), back).await.0,
                None => this.home.check(&lease).await,
            };
            this.taken(lease, asked, taken)
        })
    }

    /// Hands the lease taken for `q` to its waiters, keeps the rest, and
    /// answers `q`'s own request.
    fn taken(
        self: &Arc<Self>,
        q: Question,
        asked: Instant,
        taken: Result<Answer, StoreError>,
    ) -> Result<Answer, StoreError> {
        let plan = Arc::as_ptr(&q.policies) as *const () as usize;
        let mut inner = lock(&self.inner);
        let Some(clients) = inner.plans.get_mut(&plan) else {
            return taken;
        };
        let waiters = match clients.remove(&q.key) {
            Some(Slot::Taking(w)) => w,
            _ => Vec::new(),
        };
        let granted = match &taken {
            Ok(a) if a.allowed => a.lease.as_ref().map(|g| g.units),
            _ => None,
        };
        let (Some(units), Ok(answer)) = (granted, &taken) else {
            inner.len -= 1;
            for w in waiters {
                let _ = w.tx.send(None);
            }
            return taken;
        };
        let mut held = Held {
            left: units - q.cost,
            ends: asked + self.age(&q, answer),
            answer: answer.clone(),
            taken: asked,
            question: q.clone(),
        };
        let now = Instant::now();
        for w in waiters {
            if held.left >= w.cost {
                held.left -= w.cost;
                let _ = w.tx.send(Some(held.local(now)));
            } else {
                let _ = w.tx.send(None);
            }
        }
        let own = held.local(now);
        clients.insert(q.key, Slot::Held(held));
        if !inner.sweeping {
            inner.sweeping = true;
            drop(inner);
            self.sweep_later();
        }
        Ok(Answer {
            local: false,
            ..own
        })
    }

    /// How long a lease may be spent: its age, and a fixed window's lease
    /// no longer than its window (counted from before it was asked for, so
    /// it ends before the window does on any clock).
    fn age(&self, q: &Question, answer: &Answer) -> Duration {
        q.policies
            .iter()
            .zip(&answer.policies)
            .filter(|(p, _)| p.algorithm == Algorithm::FixedWindow)
            .map(|(_, o)| Duration::from_micros(o.reset_us))
            .fold(self.max_age, Duration::min)
    }

    /// Gives back what ended leases left, until none is held.
    fn sweep_later(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            lock(&self.inner).sweeping = false;
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.max_age / 2;
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = weak.upgrade() else { return };
                let now = Instant::now();
                let mut ended = Vec::new();
                {
                    let mut inner = lock(&this.inner);
                    let mut removed = 0;
                    for clients in inner.plans.values_mut() {
                        clients.retain(|_, slot| match slot {
                            Slot::Held(h) if h.ends <= now => {
                                ended.extend(h.give_back());
                                removed += 1;
                                false
                            }
                            _ => true,
                        });
                    }
                    inner.plans.retain(|_, clients| !clients.is_empty());
                    inner.len -= removed;
                    if inner.len == 0 {
                        inner.sweeping = false;
                    }
                }
                for q in ended {
                    // Best effort: a failed refund leaves the units spent.
                    tokio::spawn(this.home.check(&q));
                }
                if !lock(&this.inner).sweeping {
                    return;
                }
            }
        });
    }
}

impl Held {
    /// The answer to a request decided from this lease: the store's state
    /// at the lease, plus the units still in hand, counted down in time.
    fn local(&self, now: Instant) -> Answer {
        let elapsed = now.saturating_duration_since(self.taken).as_micros() as u64;
        let mut answer = self.answer.clone();
        for p in &mut answer.policies {
            p.remaining += self.left;
            p.reset_us = p.reset_us.saturating_sub(elapsed);
        }
        answer.lease = None;
        answer.local = true;
        answer
    }

    /// The refund of the units left, if any.
    fn give_back(&self) -> Option<Question> {
        let marks = self.answer.lease.as_ref()?.marks.clone();
        (self.left > 0).then(|| Question {
            cost: 0,
            ask: Ask::Refund {
                unused: self.left,
                marks,
            },
            ..self.question.clone()
        })
    }
}
