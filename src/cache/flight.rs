//! In-process single-flight: concurrent requests of one instance for one
//! slot share one store lookup and one origin call. The first becomes the
//! local leader; the others follow its outcome through a `watch` channel.

use std::collections::HashMap;
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
    /// The leader gave up (store spec changed, client gone): ask again.
    Abandoned,
}

type FlightKey = (Arc<str>, Arc<str>);

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, watch::Sender<Outcome>>>,
}

pub(crate) enum Joined {
    Leader(FlightGuard),
    Follower(watch::Receiver<Outcome>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, slot: &Slot) -> Joined {
        let key = (slot.url.clone(), slot.variant.clone());
        let mut map = lock(&self.map);
        if let Some(tx) = map.get(&key) {
            return Joined::Follower(tx.subscribe());
        }
        let (tx, _) = watch::channel(Outcome::Pending);
        map.insert(key.clone(), tx.clone());
        Joined::Leader(FlightGuard {
            flights: self.clone(),
            key,
            tx: Some(tx),
        })
    }
}

/// Held by the local leader; dropped unfinished, it tells followers to ask again.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: FlightKey,
    tx: Option<watch::Sender<Outcome>>,
}

impl FlightGuard {
    pub(crate) fn stale(&self, raw: Bytes) {
        if let Some(tx) = &self.tx {
            tx.send_replace(Outcome::Stale(raw));
        }
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut map = lock(&self.flights.map);
            if map.get(&self.key).is_some_and(|t| t.same_channel(&tx)) {
                map.remove(&self.key);
            }
        }
        tx.send_replace(outcome);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
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

    #[tokio::test]
    async fn followers_see_the_leaders_outcome_and_a_dropped_leader_abandons() {
        let f = Arc::new(Flights::default());
        let Joined::Leader(g) = f.join(&slot()) else {
            panic!("first is leader")
        };
        let Joined::Follower(mut rx) = f.join(&slot()) else {
            panic!("second follows")
        };
        g.finish(Outcome::Done(Bytes::from_static(b"x")));
        rx.changed().await.unwrap();
        assert!(matches!(&*rx.borrow(), Outcome::Done(b) if b == "x"));
        let Joined::Leader(g) = f.join(&slot()) else {
            panic!("a new flight")
        };
        let Joined::Follower(mut rx) = f.join(&slot()) else {
            panic!()
        };
        drop(g);
        rx.changed().await.unwrap();
        assert!(matches!(&*rx.borrow(), Outcome::Abandoned));
    }
}
