//! Purges that must land: a write's invalidation, a purge through the
//! handle or a tag purge that fails (breaker open, deadline) is retried in
//! the background until it lands, or until the entries it targets have
//! expired. Meanwhile this instance answers the URLs of a failed hard purge
//! from the origin, and a write's response says so in `Cache-Status`. A tag
//! purge whose URLs were read but not all purged retries those URLs one by
//! one, not the whole tag again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::config::MAX_TTL;
use super::shared::{spawn, Shared};
use super::store::Unpurged;
use crate::error::StoreError;
use crate::store::memory::lock;

/// Most URLs waiting for a retry; past it, a failed purge is only logged.
const MAX_PENDING: usize = 10_000;
/// Retries run at least this long (ms): entries of other instances may
/// outlive what this one has stored.
const MIN_RETRY_MS: u64 = 3_600_000;

/// A purge waiting for a retry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pending {
    /// A URL's entries to drop (or, `soft`, to mark stale).
    Url { url: Arc<str>, soft: bool },
    /// A tag whose URLs could not be read.
    Tag { tag: Arc<str>, soft: bool },
}

/// Failed purges waiting for a retry: purge → give up at (ms).
#[derive(Debug, Default)]
pub(crate) struct Retries {
    pending: Mutex<HashMap<Pending, u64>>,
    /// `pending.len()`, read without the lock on every lookup.
    count: AtomicUsize,
    running: AtomicBool,
    /// The longest an entry this layer stored is kept (ms).
    longest_ms: AtomicU64,
}

impl Retries {
    /// Whether a (hard) purge of `url` is still to land.
    pub(crate) fn is_pending(&self, url: &str) -> bool {
        self.count.load(Ordering::Acquire) > 0 && {
            let url = Pending::Url {
                url: url.into(),
                soft: false,
            };
            lock(&self.pending).contains_key(&url)
        }
    }

    /// Notes how long an entry stored is kept.
    pub(crate) fn stored(&self, keep_ms: u64) {
        self.longest_ms.fetch_max(keep_ms, Ordering::Relaxed);
    }

    fn add(&self, purge: Pending, now_ms: u64) -> bool {
        let longest = self.longest_ms.load(Ordering::Relaxed).max(MIN_RETRY_MS);
        let until = now_ms + longest.min(MAX_TTL.as_millis() as u64);
        let mut p = lock(&self.pending);
        if p.len() >= MAX_PENDING && !p.contains_key(&purge) {
            return false;
        }
        p.insert(purge, until);
        self.count.store(p.len(), Ordering::Release);
        true
    }

    fn settle(&self, purge: &Pending) {
        let mut p = lock(&self.pending);
        p.remove(purge);
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
                retry_later(&shared, url, false);
            }
        }
        Invalidated { landed }
    })
}

/// Schedules a retry of the purge (or, `soft`, soft purge) of `url`.
pub(crate) fn retry_later(shared: &Arc<Shared>, url: &Arc<str>, soft: bool) {
    let url = url.clone();
    schedule(shared, Pending::Url { url, soft });
}

/// Purges (or, `soft`, marks stale) every URL recorded under `tag` (its
/// store name); a failure is also retried in the background.
pub(crate) async fn purge_tag(
    shared: &Arc<Shared>,
    tag: Arc<str>,
    soft: bool,
) -> Result<u64, StoreError> {
    match try_tag(shared, &tag, soft).await {
        Ok(n) => Ok(n),
        Err((e, read)) => {
            shared.store_failed("a tag purge", "retrying it in the background", &e);
            if !read {
                schedule(shared, Pending::Tag { tag, soft });
            }
            Err(e)
        }
    }
}

/// One attempt at a tag purge: on failure, whether the tag's URLs were
/// read (those not purged are then scheduled one by one).
async fn try_tag(shared: &Arc<Shared>, tag: &str, soft: bool) -> Result<u64, (StoreError, bool)> {
    let urls = shared.home.tag_urls(tag).await.map_err(|e| (e, false))?;
    if let Some(l1) = &shared.l1 {
        urls.iter().for_each(|u| l1.remove_url(u));
    }
    match shared.home.purge_many(&urls, soft).await {
        Ok(_) => Ok(urls.len() as u64),
        Err(Unpurged { error, urls }) => {
            urls.iter().for_each(|u| retry_later(shared, u, soft));
            Err((error, true))
        }
    }
}

/// Schedules a retry of `purge`.
fn schedule(shared: &Arc<Shared>, purge: Pending) {
    if !shared.retries.add(purge, shared.now_ms()) {
        tracing::warn!("response cache: too many purges waiting; one is dropped");
        return;
    }
    if !shared.retries.running.swap(true, Ordering::AcqRel) {
        spawn(retry_loop(shared.clone()));
    }
}

/// Longest pause between two rounds of retries: about the breaker's probe
/// interval, so that once Redis is back the purges land within a few
/// hundred milliseconds (while other instances may still serve the stale
/// entries) rather than after a long back-off.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Failures in a row that end a round early: Redis is most likely still
/// away, and each of the rest would fail the same way (rounds start where
/// the last one stopped, so every purge gets its turn).
const FAILURES_PER_ROUND: usize = 4;

/// Retries every pending purge with back-off (50 ms to [`MAX_BACKOFF`])
/// until none is left.
async fn retry_loop(shared: Arc<Shared>) {
    let r = &shared.retries;
    let mut backoff = Duration::from_millis(50);
    let mut offset = 0usize;
    loop {
        tokio::time::sleep(backoff).await;
        let mut due: Vec<(Pending, u64)> = lock(&r.pending)
            .iter()
            .map(|(p, t)| (p.clone(), *t))
            .collect();
        let now = shared.now_ms();
        let mut landed = false;
        let mut failed_in_a_row = 0;
        let len = due.len().max(1);
        due.rotate_left(offset % len);
        for (purge, until) in due {
            if now > until {
                r.settle(&purge);
                continue;
            }
            offset += 1;
            let done = match &purge {
                Pending::Url { url, soft: false } => shared.purge(url).await.is_ok(),
                Pending::Url { url, soft: true } => shared.soft_purge(url).await.is_ok(),
                // Once its URLs are read, those not purged are retried apart.
                Pending::Tag { tag, soft } => {
                    !matches!(try_tag(&shared, tag, *soft).await, Err((_, false)))
                }
            };
            if done {
                tracing::info!("response cache: a purge that had failed landed");
                r.settle(&purge);
                landed = true;
                failed_in_a_row = 0;
            } else {
                failed_in_a_row += 1;
                if failed_in_a_row == FAILURES_PER_ROUND {
                    break;
                }
            }
        }
        backoff = if landed {
            Duration::from_millis(50)
        } else {
            (backoff * 2).min(MAX_BACKOFF)
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
