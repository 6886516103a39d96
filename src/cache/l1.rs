//! The optional in-process tier: recent fresh entries kept in this process,
//! so a hot hit costs no round trip. It is used only while the store's
//! invalidation channel (Redis pub/sub) is up; every write and purge in the
//! fleet publishes the URL, and each instance drops its copies. A copy is
//! also never kept longer than `max_age`, which bounds the damage of a lost
//! message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::entry::Entry;
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

/// A copy: the decoded entry (a hit parses nothing), the bytes it holds
/// (its stored form's, which its body and values slice, and its own), and
/// the time it is dropped.
#[derive(Debug)]
struct Held {
    entry: Arc<Entry>,
    size: usize,
    until: u64,
}

type Variants = HashMap<Arc<str>, Held>;

/// URLs are split into this many stripes, each counting its invalidations.
const STRIPES: usize = 64;

#[derive(Debug, Default)]
struct Copies {
    urls: HashMap<Arc<str>, Variants>,
    len: usize,
    bytes: usize,
}

/// The invalidations a tier had seen for a URL when a lookup began: a copy
/// read before a later one is outdated and not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(u64, u64);

#[derive(Debug)]
pub(crate) struct L1 {
    copies: Mutex<Copies>,
    max_entries: usize,
    max_bytes: usize,
    max_age_ms: u64,
    live: AtomicBool,
    /// Invalidations per stripe of URLs, and of every URL (a reconnect).
    stripes: [AtomicU64; STRIPES],
    all: AtomicU64,
    /// Copies dropped to stay within the bounds.
    evictions: AtomicU64,
    /// Tells this tier's own writes apart in the channel.
    pub(crate) id: u64,
}

fn stripe(url: &str) -> usize {
    // URLs are digests already: their bytes are spread evenly.
    url.bytes().take(8).fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % STRIPES
}

impl L1 {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, max_age: Duration) -> Self {
        Self {
            copies: Mutex::default(),
            max_entries,
            max_bytes,
            max_age_ms: max_age.as_millis() as u64,
            live: AtomicBool::new(false),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            all: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            id: super::shared::token(),
        }
    }

    /// The invalidations seen for `url` so far: read before a lookup, passed to `put`.
    pub(crate) fn epoch(&self, url: &str) -> Epoch {
        Epoch(
            self.all.load(Ordering::Acquire),
            self.stripes[stripe(url)].load(Ordering::Acquire),
        )
    }

    /// Copies dropped so far to stay within the bounds.
    #[cfg(test)]
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// A copy of the slot's entry, while it is fresh and valid.
    pub(crate) fn get(&self, slot: &Slot, now: u64) -> Option<Arc<Entry>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let mut c = lock(&self.copies);
        let variants = c.urls.get_mut(&slot.url)?;
        match variants.get(&slot.variant) {
            Some(copy) if now < copy.until => Some(copy.entry.clone()),
            Some(_) => {
                let copy = variants.remove(&slot.variant)?;
                c.len -= 1;
                c.bytes -= copy.size;
                None
            }
            None => None,
        }
    }

    /// Keeps a copy of a fresh entry (decoded from `raw_len` stored bytes)
    /// until `fresh_until` (at most `max_age`), unless the URL was
    /// invalidated since `seen`.
    pub(crate) fn put(
        &self,
        slot: &Slot,
        entry: Arc<Entry>,
        raw_len: usize,
        now: u64,
        fresh_until: u64,
        seen: Epoch,
    ) {
        let size = raw_len + entry.overhead();
        if !self.live.load(Ordering::Acquire) || fresh_until <= now || size > self.max_bytes {
            return;
        }
        let until = fresh_until.min(now + self.max_age_ms);
        let mut c = lock(&self.copies);
        // Checked under the lock invalidations take: none can slip between.
        if self.epoch(&slot.url) != seen {
            return;
        }
        if c.len >= self.max_entries || c.bytes + size > self.max_bytes {
            // Full: start over rather than track recency on the hot path.
            self.evictions.fetch_add(c.len as u64, Ordering::Relaxed);
            *c = Copies::default();
        }
        let copy = Held { entry, size, until };
        let old = c
            .urls
            .entry(slot.url.clone())
            .or_default()
            .insert(slot.variant.clone(), copy);
        match old {
            Some(old) => c.bytes -= old.size,
            None => c.len += 1,
        }
        c.bytes += size;
    }

    /// Drops every copy of a URL; copies read before now are not kept either.
    pub(crate) fn remove_url(&self, url: &str) {
        let mut c = lock(&self.copies);
        self.stripes[stripe(url)].fetch_add(1, Ordering::AcqRel);
        if let Some(v) = c.urls.remove(url) {
            c.len -= v.len();
            c.bytes -= v.values().map(|copy| copy.size).sum::<usize>();
        }
    }

    fn set_live(&self, live: bool) {
        let mut c = lock(&self.copies);
        self.all.fetch_add(1, Ordering::AcqRel);
        self.live.store(live, Ordering::Release);
        *c = Copies::default();
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

    /// An entry of `n` body bytes, stored as just those.
    fn entry(n: usize) -> (Arc<Entry>, usize) {
        let e = Entry {
            meta: Default::default(),
            headers: Default::default(),
            body: bytes::Bytes::from(vec![0u8; n]),
        };
        (Arc::new(e), n)
    }

    fn slot(url: &str, v: &str) -> Slot {
        Slot {
            url: url.into(),
            spec: "".into(),
            variant: v.into(),
        }
    }

    #[test]
    fn copies_live_only_while_the_channel_is_up_and_until_fresh() {
        let l1 = Arc::new(L1::new(2, 1024, Duration::from_secs(5)));
        let listen = l1.listener();
        let (raw, n) = entry(1);
        let e = |l1: &L1, url| l1.epoch(url);
        l1.put(&slot("u", "a"), raw.clone(), n, 0, 1000, e(&l1, "u"));
        assert!(l1.get(&slot("u", "a"), 1).is_none(), "not live yet");
        listen(Signal::Up);
        l1.put(&slot("u", "a"), raw.clone(), n, 0, 1000, e(&l1, "u"));
        l1.put(&slot("u", "b"), raw.clone(), n, 0, 100_000, e(&l1, "u"));
        assert!(l1.get(&slot("u", "a"), 999).is_some());
        assert!(l1.get(&slot("u", "a"), 1000).is_none(), "stale");
        assert!(
            l1.get(&slot("u", "b"), 5_001).is_none(),
            "older than max_age"
        );
        l1.put(&slot("u", "b"), raw.clone(), n, 0, 1000, e(&l1, "u"));
        listen(Signal::Message(&format!("{}|u", l1.id)));
        assert!(l1.get(&slot("u", "b"), 1).is_some(), "its own write");
        listen(Signal::Message("-|u"));
        assert!(l1.get(&slot("u", "b"), 1).is_none(), "invalidated");
        l1.put(&slot("v", "a"), raw.clone(), n, 0, 1000, e(&l1, "v"));
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

    #[test]
    fn copies_read_before_an_invalidation_are_not_kept() {
        let l1 = Arc::new(L1::new(10, 1024, Duration::from_secs(5)));
        let listen = l1.listener();
        listen(Signal::Up);
        let seen = l1.epoch("u");
        listen(Signal::Message("-|u"));
        let (old, n) = entry(3);
        l1.put(&slot("u", "a"), old, n, 0, 1000, seen);
        assert!(
            l1.get(&slot("u", "a"), 1).is_none(),
            "read before the purge"
        );
        let seen = l1.epoch("u");
        l1.put(&slot("u", "a"), entry(3).0, n, 0, 1000, seen);
        assert!(l1.get(&slot("u", "a"), 1).is_some());
        let seen = l1.epoch("v");
        listen(Signal::Down);
        listen(Signal::Up);
        l1.put(&slot("v", "a"), entry(1).0, 1, 0, 1000, seen);
        assert!(
            l1.get(&slot("v", "a"), 1).is_none(),
            "messages may be lost while down"
        );
    }

    #[test]
    fn the_tier_is_bounded_in_bytes_and_entries_and_counts_evictions() {
        let l1 = Arc::new(L1::new(100, 1000, Duration::from_secs(5)));
        l1.listener()(Signal::Up);
        let (raw, n) = entry(300);
        for i in 0..10 {
            let url = format!("u{i}");
            l1.put(&slot(&url, "a"), raw.clone(), n, 0, 1000, l1.epoch(&url));
            let c = lock(&l1.copies);
            assert!(c.bytes <= 1000, "{}", c.bytes);
            let held: usize = c
                .urls
                .values()
                .flat_map(|v| v.values())
                .map(|h| h.entry.body.len() + h.entry.overhead())
                .sum();
            assert_eq!(held, c.bytes, "measured");
        }
        assert!(l1.evictions() >= 6, "{}", l1.evictions());
        let (big, n) = entry(2000);
        l1.put(&slot("big", "a"), big, n, 0, 1000, l1.epoch("big"));
        assert!(
            l1.get(&slot("big", "a"), 1).is_none(),
            "larger than the tier"
        );
        let l1 = Arc::new(L1::new(2, 1 << 20, Duration::from_secs(5)));
        l1.listener()(Signal::Up);
        for i in 0..5 {
            let url = format!("u{i}");
            l1.put(&slot(&url, "a"), raw.clone(), n, 0, 1000, l1.epoch(&url));
            assert!(lock(&l1.copies).len <= 2);
        }
    }
}
