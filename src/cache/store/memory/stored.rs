//! Entries kept decoded beside their bytes, so that a hit parses nothing.

use std::sync::Arc;

use bytes::Bytes;

use super::{key_of, State};
use crate::cache::entry::{decode, Entry};
use crate::cache::key::Slot;
use crate::cache::store::Peeked;

/// An entry: its bytes, and the entry they decode to (`None` if they do
/// not), kept so that a hit parses nothing.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) raw: Bytes,
    entry: Option<Arc<Entry>>,
}

impl Stored {
    pub(super) fn new(raw: Bytes) -> Self {
        let entry = decode(raw.clone()).ok().map(Arc::new);
        Self { raw, entry }
    }

    /// The bytes it holds: the stored form (which the decoded body and
    /// values slice) and the decoded entry's own.
    pub(super) fn size(&self) -> usize {
        self.raw.len() + self.entry.as_ref().map_or(0, |e| e.overhead())
    }
}

impl State {
    /// A lookup that takes no lock, its entry decoded.
    pub(super) fn peek(&mut self, s: &Slot, now_us: u64) -> Peeked {
        let gen = self.gen(&s.url, now_us);
        let mut peeked = Peeked {
            now_ms: now_us / 1000,
            spec: s.spec.clone(),
            entry: None,
            gen,
        };
        if let Some(idx) = self.index.get_mut(&s.url, now_us) {
            if idx.spec != s.spec {
                peeked.spec = idx.spec.clone();
                return peeked;
            }
        }
        let key = key_of(s);
        peeked.entry = self.entries.get(&key, now_us).and_then(|e| e.entry.clone());
        peeked
    }
}
