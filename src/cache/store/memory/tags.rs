//! Tags (surrogate keys) in process: per tag, the URLs whose entries carry
//! it (until those expire) and the time of its last purge.

use std::collections::HashMap;
use std::sync::Arc;

use super::{State, Tagging, FILL_MAX_MS};

/// One tag: URL digest → until when an entry of it may live (ms), and
/// when the tag was last purged (ms).
#[derive(Debug, Default)]
pub(super) struct Tagged {
    members: HashMap<Arc<str>, u64>,
    purged_ms: u64,
}

impl Tagged {
    /// How long the tag must be remembered (µs): while a member may live
    /// or a fill from before its purge may land.
    fn expires_us(&self) -> u64 {
        let last = self.members.values().copied().max().unwrap_or(0);
        last.max(self.purged_ms + FILL_MAX_MS) * 1000
    }
}

impl State {
    pub(super) fn tag(&mut self, t: &Tagging, now_us: u64) -> bool {
        let now_ms = now_us / 1000;
        let purged = |tagged: &mut Tagged| tagged.purged_ms >= t.seen_ms;
        if t.tags
            .iter()
            .any(|t| self.tags.get_mut(t, now_us).is_some_and(purged))
        {
            return false;
        }
        for tag in &t.tags {
            let mut tagged = self.tags.remove(tag, now_us).unwrap_or_default();
            tagged.members.retain(|_, until| *until > now_ms);
            let until = tagged.members.entry(t.url.clone()).or_insert(0);
            *until = (*until).max(now_ms + t.keep_ms);
            let expires = tagged.expires_us();
            self.tags.insert(tag.clone(), tagged, expires, now_us);
        }
        true
    }

    pub(super) fn tag_urls(&mut self, tag: &str, now_us: u64) -> Vec<Arc<str>> {
        let now_ms = now_us / 1000;
        let key: Arc<str> = tag.into();
        let mut tagged = self.tags.remove(&key, now_us).unwrap_or_default();
        tagged.purged_ms = now_ms;
        tagged.members.retain(|_, until| *until > now_ms);
        // Kept until their entries would have expired, as on Redis.
        let urls: Vec<Arc<str>> = tagged.members.keys().cloned().collect();
        let expires = tagged.expires_us();
        self.tags.insert(key, tagged, expires, now_us);
        urls
    }
}
