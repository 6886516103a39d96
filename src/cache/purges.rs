//! Purges that must land: a write's invalidation that fails (breaker open,
//! deadline) is retried in the background until it lands, or until the
//! entries it targets have expired. Meanwhile this instance answers those
//! URLs from the origin, and the write's response says so in `Cache-Status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::config::MAX_TTL;
use super::shared::{spawn, Shared};
use crate::store::memory::lock;

/// Most URLs waiting for a retry; past it, a failed purge is only logged.
const MAX_PENDING: usize = 10_000;
/// Retries run at least this long (ms): entries of other instances may
/// outlive what this one has stored.
const MIN_RETRY_MS: u64 = 3_600_000;

/// Failed purges waiting for a retry: URL → give up at (ms).
#[derive(Debug, Default)]
pub(crate) struct Retries {
    pending: Mutex<HashMap<Arc<str>, u64>>,
    /// `pending.len()`, read without the lock on every lookup.
    count: AtomicUsize,
    running: AtomicBool,
    /// The longest an entry this layer stored is kept (ms).
    longest_ms: AtomicU64,
}

impl Retries {
    /// Whether a purge of `url` is still to land.
    pub(crate) fn is_pending(&self, url: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0 && lock(&self.pending).contains_key(url)
    }

    /// Notes how long an entry stored is kept.
    pub(crate) fn stored(&self, keep_ms: u64) {
        self.longest_ms.fetch_max(keep_ms, Ordering::Relaxed);
    }

    fn add(&self, url: &Arc<str>, now_ms: u64) -> bool {
        let longest = self.longest_ms.load(Ordering::Relaxed).max(MIN_RETRY_MS);
        let until = now_ms + longest.min(MAX_TTL.as_millis() as u64);
        let mut p = lock(&self.pending);
        if p.len() >= MAX_PENDING && !p.contains_key(url) {
            return false;
        }
        p.insert(url.clone(), until);
        self.count.store(p.len(), Ordering::Release);
        true
    }

    fn settle(&self, url: &str) {
        let mut p = lock(&self.pending);
        p.remove(url);
        self.count.store(p.len(), Ordering::Release);
    }
}

/// How a write's invalidations went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalidated {
    /// Every purge landed.
    pub(crate) landed: bool,
}

/// Purges `urls` now; a purge that fails is retried in the background.
pub(crate) fn purge_urls(
    shared: Arc<Shared>,
    urls: Vec<Arc<str>>,
) -> BoxFuture<'static, Invalidated> {
    let futs: Vec<_> = urls.iter().map(|u| shared.purge(u)).collect();
    Box::pin(async move {
        let mut landed = true;
        for (url, r) in urls.iter().zip(futures_util::future::join_all(futs).await) {
            if let Err(e) = r {
                landed = false;
                shared.store_failed("an invalidation", "retrying it in the background", &e);
                retry_later(&shared, url);
            }
        }
        Invalidated { landed }
    })
}

/// Schedules a retry of the purge of `url`.
pub(crate) fn retry_later(shared: &Arc<Shared>, url: &Arc<str>) {
    if !shared.retries.add(url, shared.now_ms()) {
        tracing::warn!("response cache: too many purges waiting; one is dropped");
        return;
    }
    if !shared.retries.running.swap(true, Ordering::AcqRel) {
        spawn(retry_loop(shared.clone()));
    }
}

/// Retries every pending purge with back-off (50 ms to 2 s) until none is left.
async fn retry_loop(shared: Arc<Shared>) {
    let r = &shared.retries;
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::time::sleep(backoff).await;
        let due: Vec<(Arc<str>, u64)> = lock(&r.pending)
            .iter()
            .map(|(u, t)| (u.clone(), *t))
            .collect();
        let now = shared.now_ms();
        let mut landed = false;
        for (url, until) in due {
            if now > until {
                r.settle(&url);
            } else if shared.purge(&url).await.is_ok() {
                tracing::info!("response cache: a purge that had failed landed");
                r.settle(&url);
                landed = true;
            }
        }
        backoff = if landed {
            Duration::from_millis(50)
        } else {
            (backoff * 2).min(Duration::from_secs(2))
        };
        if r.count.load(Ordering::Acquire) == 0 {
            r.running.store(false, Ordering::Release);
            // A purge may have failed between the check and the flag.
            if r.count.load(Ordering::Acquire) == 0 || r.running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}
