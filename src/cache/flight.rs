//! In-process single-flight: concurrent requests of one instance for one
//! slot share one store operation and one origin call. The first becomes
//! the local leader; the others follow its outcome through a `watch`
//! channel, made when the first follower joins: a lone leader (the common
//! case with many distinct keys) pays for no channel.
//!
//! An outcome may be served only to followers that joined before the store
//! operation it comes from was sent: one that joined while a lookup or a
//! write was on the wire could otherwise be answered with what the store
//! held before a purge it has already seen acknowledged. Such late
//! followers take over the flight and send the next operation themselves,
//! so at most one operation per slot is on the wire, and each serves every
//! follower that was waiting when it was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::key::Slot;
use crate::store::memory::lock;

/// What the local leader of a slot ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pending,
    /// A stale entry is being revalidated; followers may serve it within
    /// its `stale-while-revalidate` window.
    Stale(Bytes),
    /// The entry to serve (fresh, refreshed, or stale by policy).
    Done(Bytes),
    /// The response could not be stored: each follower asks the origin.
    Pass,
    /// The leader gave up (client gone, the fill was overtaken by a purge):
    /// a follower takes over.
    Abandoned,
    /// The URL's `Vary` changed: followers ask again under the new spec.
    Respec,
}

/// An outcome and the store operation it comes from.
#[derive(Debug, Clone)]
pub(crate) struct Tagged {
    pub(crate) round: u64,
    pub(crate) outcome: Outcome,
}

type FlightKey = (Arc<str>, Arc<str>);

#[derive(Debug)]
struct Flight {
    /// Store operations sent by the flight's leaders so far.
    round: AtomicU64,
    /// Membership changes under the map's lock only.
    state: Mutex<Members>,
}

#[derive(Debug)]
struct Members {
    led: bool,
    followers: usize,
    /// The latest outcome, while no follower has asked for a channel.
    last: Tagged,
    tx: Option<watch::Sender<Tagged>>,
}

impl Members {
    fn publish(&mut self, t: Tagged) {
        match &self.tx {
            Some(tx) => {
                tx.send_replace(t);
            }
            None => self.last = t,
        }
    }

    fn subscribe(&mut self) -> watch::Receiver<Tagged> {
        let last = &self.last;
        self.tx
            .get_or_insert_with(|| watch::channel(last.clone()).0)
            .subscribe()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<Flight>>>,
}

type Map = HashMap<FlightKey, Arc<Flight>>;

/// Drops `flight` from the map if it is still the one of `key`.
fn remove(map: &mut Map, key: &FlightKey, flight: &Arc<Flight>) {
    if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
        map.remove(key);
    }
}

pub(crate) enum Joined {
    Leader(FlightGuard),
    Follower(Follower),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, slot: &Slot) -> Joined {
        let key = (slot.url.clone(), slot.variant.clone());
        let mut map = lock(&self.map);
        let flight = map
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Flight {
                    round: AtomicU64::new(0),
                    state: Mutex::new(Members {
                        led: false,
                        followers: 0,
                        last: Tagged {
                            round: 0,
                            outcome: Outcome::Pending,
                        },
                        tx: None,
                    }),
                })
            })
            .clone();
        let mut m = lock(&flight.state);
        if !m.led {
            m.led = true;
            drop(m);
            return Joined::Leader(self.guard(key, flight));
        }
        m.followers += 1;
        let rx = m.subscribe();
        drop(m);
        Joined::Follower(Follower {
            rx,
            joined: flight.round.load(Ordering::SeqCst),
            flights: self.clone(),
            key,
            flight,
            member: true,
        })
    }

    fn guard(self: &Arc<Self>, key: FlightKey, flight: Arc<Flight>) -> FlightGuard {
        FlightGuard {
            flights: self.clone(),
            key,
            flight,
            done: false,
        }
    }
}

/// Held by the local leader; dropped unfinished, it lets a follower take over.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: FlightKey,
    flight: Arc<Flight>,
    done: bool,
}

impl FlightGuard {
    /// Call before each store operation: the round its outcome is tagged with.
    pub(crate) fn sent(&self) -> u64 {
        self.flight.round.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// A stale entry followers may serve meanwhile (from the lookup of `round`).
    pub(crate) fn stale(&self, round: u64, raw: Bytes) {
        lock(&self.flight.state).publish(Tagged {
            round,
            outcome: Outcome::Stale(raw),
        });
    }

    /// Ends this leadership with the outcome of the operation of `round`.
    pub(crate) fn finish(mut self, round: u64, outcome: Outcome) {
        self.end(round, outcome);
    }

    fn end(&mut self, round: u64, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // One lock for membership and outcome: a leader who takes over
        // after this one never has its outcome overwritten by this one's.
        let mut map = lock(&self.flights.map);
        let mut m = lock(&self.flight.state);
        m.led = false;
        m.publish(Tagged { round, outcome });
        if m.followers == 0 {
            remove(&mut map, &self.key, &self.flight);
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let round = self.flight.round.load(Ordering::SeqCst);
        self.end(round, Outcome::Abandoned);
    }
}

/// Waits on a local leader's flight.
#[derive(Debug)]
pub(crate) struct Follower {
    flights: Arc<Flights>,
    key: FlightKey,
    flight: Arc<Flight>,
    pub(crate) rx: watch::Receiver<Tagged>,
    /// The operations sent before this follower joined.
    joined: u64,
    /// Counted among the flight's followers.
    member: bool,
}

impl Follower {
    /// Whether `t` comes from an operation sent after this follower joined.
    pub(crate) fn accepts(&self, t: &Tagged) -> bool {
        t.round > self.joined
    }

    /// Becomes the flight's leader if it has none.
    pub(crate) fn take_over(mut self) -> Result<FlightGuard, Self> {
        let taken = {
            let map = lock(&self.flights.map);
            let mut m = lock(&self.flight.state);
            let current = map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
            let free = !m.led && current;
            if free {
                m.led = true;
                m.followers -= 1;
            }
            free
        };
        if !taken {
            return Err(self);
        }
        self.member = false;
        Ok(self.flights.guard(self.key.clone(), self.flight.clone()))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if !self.member {
            return;
        }
        let mut map = lock(&self.flights.map);
        let mut m = lock(&self.flight.state);
        m.followers -= 1;
        if !m.led && m.followers == 0 {
            remove(&mut map, &self.key, &self.flight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            url: "u".into(),
            spec: "".into(),
            variant: "_".into(),
        }
    }

    fn leader(j: Joined) -> FlightGuard {
        match j {
            Joined::Leader(g) => g,
            Joined::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(j: Joined) -> Follower {
        match j {
            Joined::Follower(f) => f,
            Joined::Leader(_) => panic!("expected to follow"),
        }
    }

    fn outcome(f: &mut Follower) -> Tagged {
        f.rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn followers_take_only_outcomes_of_operations_sent_after_they_joined() {
        let f = Arc::new(Flights::default());
        let g = leader(f.join(&slot()));
        let mut early = follower(f.join(&slot()));
        let round = g.sent(); // a lookup goes out...
        let mut late = follower(f.join(&slot())); // ...this one joins while it is on the wire
        g.finish(round, Outcome::Done(Bytes::from_static(b"x")));
        let t = outcome(&mut early);
        assert!(early.accepts(&t) && matches!(t.outcome, Outcome::Done(_)));
        let t = outcome(&mut late);
        assert!(!late.accepts(&t), "the lookup was sent before it joined");
        drop(early);
        // The late follower leads the next operation; a newcomer follows it.
        let g = late.take_over().expect("the flight has no leader");
        let mut next = follower(f.join(&slot()));
        let round = g.sent();
        g.finish(round, Outcome::Done(Bytes::from_static(b"y")));
        let t = outcome(&mut next);
        assert!(next.accepts(&t));
        drop(next);
        assert!(lock(&f.map).is_empty(), "a settled flight leaves the map");
    }

    #[tokio::test]
    async fn a_lone_leader_makes_no_channel_and_a_late_follower_sees_the_latest_outcome() {
        let f = Arc::new(Flights::default());
        let g = leader(f.join(&slot()));
        let round = g.sent();
        g.stale(round, Bytes::from_static(b"old"));
        assert!(
            lock(&lock(&f.map).values().next().unwrap().state)
                .tx
                .is_none(),
            "no follower yet: no channel"
        );
        // A follower joining now is served what the leader last published.
        let mut late = follower(f.join(&slot()));
        let t = outcome(&mut late);
        assert!(matches!(t.outcome, Outcome::Stale(ref b) if &b[..] == b"old"));
        assert_eq!(t.round, round);
        g.finish(round + 1, Outcome::Done(Bytes::from_static(b"new")));
        late.rx.changed().await.unwrap();
        assert!(matches!(outcome(&mut late).outcome, Outcome::Done(_)));
        drop(late);
        assert!(lock(&f.map).is_empty());
    }

    #[tokio::test]
    async fn a_dropped_leader_is_replaced_by_one_follower() {
        let f = Arc::new(Flights::default());
        let g = leader(f.join(&slot()));
        let a = follower(f.join(&slot()));
        let b = follower(f.join(&slot()));
        drop(g);
        let g = a.take_over().expect("a leads now");
        let b = b.take_over().expect_err("b follows a");
        drop(g);
        let g = b.take_over().expect("then b");
        drop(g);
        assert!(lock(&f.map).is_empty());
        // A flight nobody leads is led by the next request.
        let g = leader(f.join(&slot()));
        drop(g);
        let _g = leader(f.join(&slot()));
    }
}
