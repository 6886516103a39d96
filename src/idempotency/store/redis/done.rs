//! The records this instance has seen completed: a reservation of one
//! starts with a plain read instead of the reserve script (see
//! [`batches`](super::batches)).

use std::sync::{Arc, Mutex};

use crate::idempotency::fingerprint::RecordKey;
use crate::store::lru::Lru;
use crate::store::memory::lock;

/// The records this instance has seen completed, most recent first kept.
#[derive(Debug)]
pub(crate) struct Done(Mutex<Lru<String, ()>>);

impl Done {
    /// Records remembered: a retry comes soon after its original, so the
    /// latest few thousand cover most of them.
    const MAX: usize = 8192;

    pub(super) fn new() -> Arc<Self> {
        let mut lru = Lru::default();
        lru.set_capacity(Self::MAX);
        Arc::new(Self(Mutex::new(lru)))
    }

    pub(super) fn knows(&self, key: &RecordKey) -> bool {
        lock(&self.0).get(&key.0, 0).is_some()
    }

    pub(super) fn learn(&self, key: &RecordKey) {
        lock(&self.0).insert(key.0.clone(), (), 1, u64::MAX, 0);
    }

    pub(super) fn forget(&self, key: &RecordKey) {
        lock(&self.0).remove(&key.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_bounded_and_forgets_the_oldest_first() {
        let done = Done::new();
        let key = |i: usize| RecordKey(format!("record-{i}"));
        for i in 0..10_000 {
            done.learn(&key(i));
        }
        assert_eq!(lock(&done.0).len(), Done::MAX);
        assert!(done.knows(&key(9_999)));
        assert!(!done.knows(&key(0)));
        done.forget(&key(9_999));
        assert!(!done.knows(&key(9_999)));
    }
}
