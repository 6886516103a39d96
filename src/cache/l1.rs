//! The optional in-process tier: recent fresh entries kept in this process,
//! so a hot hit costs no round trip. It is used only while the store's
//! invalidation channel (Redis pub/sub) is up; every write and purge in the
//! fleet publishes the URL, and each instance drops its copies. A copy is
//! also never kept longer than `max_age`, which bounds the damage of a lost
//! message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::key::Slot;
use crate::store::memory::lock;

/// A message of the store's invalidation channel.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub)]
pub enum Signal<'a> {
    /// Subscribed: copies may be kept.
    Up,
    /// Unsubscribed (connection lost): copies are dropped and not kept.
    Down,
    /// A published `<writer>|<url digest>`: every copy of that URL is
    /// outdated, except the writer's own (it keeps what it just wrote).
    Message(&'a str),
    /// Nothing happened; the listener asks whether it is still wanted.
    Idle,
}

/// Called by the store's listener; `false` stops it (the layer is gone).
#[doc(hidden)]
#[allow(unreachable_pub)]
pub type Listener = Arc<dyn Fn(Signal<'_>) -> bool + Send + Sync>;

type Variants = HashMap<Arc<str>, (Bytes, u64)>;

#[derive(Debug)]
pub(crate) struct L1 {
    map: Mutex<HashMap<Arc<str>, Variants>>,
    len: std::sync::atomic::AtomicUsize,
    max_entries: usize,
    max_age_ms: u64,
    live: AtomicBool,
    /// Tells this tier's own writes apart in the channel.
    pub(crate) id: u64,
}

impl L1 {
    pub(crate) fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            map: Mutex::default(),
            len: Default::default(),
            max_entries,
            max_age_ms: max_age.as_millis() as u64,
            live: AtomicBool::new(false),
            id: super::shared::token(),
        }
    }

    /// A copy of the slot's entry, while it is fresh and valid.
    pub(crate) fn get(&self, slot: &Slot, now: u64) -> Option<Bytes> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let mut map = lock(&self.map);
        let variants = map.get_mut(&slot.url)?;
        match variants.get(&slot.variant) {
            Some((raw, until)) if now < *until => Some(raw.clone()),
            Some(_) => {
                variants.remove(&slot.variant);
                self.len.fetch_sub(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// Keeps a copy of a fresh entry until `fresh_until` (at most `max_age`).
    pub(crate) fn put(&self, slot: &Slot, raw: Bytes, now: u64, fresh_until: u64) {
        if !self.live.load(Ordering::Acquire) || fresh_until <= now {
            return;
        }
        let until = fresh_until.min(now + self.max_age_ms);
        let mut map = lock(&self.map);
        if self.len.load(Ordering::Relaxed) >= self.max_entries {
            // Full: start over rather than track recency on the hot path.
            map.clear();
            self.len.store(0, Ordering::Relaxed);
        }
        let old = map
            .entry(slot.url.clone())
            .or_default()
            .insert(slot.variant.clone(), (raw, until));
        if old.is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn remove_url(&self, url: &str) {
        if let Some(v) = lock(&self.map).remove(url) {
            self.len.fetch_sub(v.len(), Ordering::Relaxed);
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        lock(&self.map).clear();
        self.len.store(0, Ordering::Relaxed);
    }

    /// The listener a store calls with its invalidation channel's messages.
    pub(crate) fn listener(self: &Arc<Self>) -> Listener {
        let weak = Arc::downgrade(self);
        Arc::new(move |signal| {
            let Some(l1) = weak.upgrade() else {
                return false;
            };
            match signal {
                Signal::Up => l1.set_live(true),
                Signal::Down => l1.set_live(false),
                Signal::Message(m) => {
                    let (writer, url) = m.split_once('|').unwrap_or(("", m));
                    if writer != l1.id.to_string() {
                        l1.remove_url(url);
                    }
                }
                Signal::Idle => {}
            }
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(url: &str, v: &str) -> Slot {
        Slot {
            url: url.into(),
            spec: "".into(),
            variant: v.into(),
        }
    }

    #[test]
    fn copies_live_only_while_the_channel_is_up_and_until_fresh() {
        let l1 = Arc::new(L1::new(2, Duration::from_secs(5)));
        let listen = l1.listener();
        let raw = Bytes::from_static(b"e");
        l1.put(&slot("u", "a"), raw.clone(), 0, 1000);
        assert!(l1.get(&slot("u", "a"), 1).is_none(), "not live yet");
        listen(Signal::Up);
        l1.put(&slot("u", "a"), raw.clone(), 0, 1000);
        l1.put(&slot("u", "b"), raw.clone(), 0, 100_000);
        assert!(l1.get(&slot("u", "a"), 999).is_some());
        assert!(l1.get(&slot("u", "a"), 1000).is_none(), "stale");
        assert!(
            l1.get(&slot("u", "b"), 5_001).is_none(),
            "older than max_age"
        );
        l1.put(&slot("u", "b"), raw.clone(), 0, 1000);
        listen(Signal::Message(&format!("{}|u", l1.id)));
        assert!(l1.get(&slot("u", "b"), 1).is_some(), "its own write");
        listen(Signal::Message("-|u"));
        assert!(l1.get(&slot("u", "b"), 1).is_none(), "invalidated");
        l1.put(&slot("v", "a"), raw.clone(), 0, 1000);
        listen(Signal::Down);
        assert!(
            l1.get(&slot("v", "a"), 1).is_none(),
            "dropped when the channel is down"
        );
        drop(l1);
        assert!(
            !listen(Signal::Idle),
            "the listener stops once the layer is gone"
        );
    }
}
