//! Tags (surrogate keys) and soft purges on Redis. A tag's keys share
//! their own hash tag, `{prefix}:cache:{t:<tag digest>}:m` (its URLs, a
//! sorted set scored by until when each entry may live) and `…:p` (its
//! last purge time), so on a cluster a tag lives in one slot and its URLs
//! in theirs: a tag purge reads the tag's slot once, then purges its URLs
//! in bounded batches (on a cluster, one slot per batch), a few at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::Script;

use super::RedisHome;
use crate::cache::store::{Tagging, Unpurged, FILL_MAX_MS};
use crate::error::StoreError;
use crate::store::slots::slot;

static TAG: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../scripts/tag.lua")));
static PURGE_TAG: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../scripts/purge_tag.lua")));
static PURGE_URLS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../scripts/purge_urls.lua")));

/// The scripts of tags and soft purges, for the lane to load ahead.
pub(super) fn scripts() -> [&'static Script; 3] {
    [&*TAG, &*PURGE_TAG, &*PURGE_URLS]
}

/// URLs purged per script call: each call stays short, whatever the tag's size.
const BATCH: usize = 64;
/// URLs of one tag purge in flight at once: calls queue on the cache's
/// connection ahead of its lookups, so the work ahead of a lookup stays
/// bounded (a few ms), whatever the tag's size.
const URLS_IN_FLIGHT: usize = 512;
/// Calls of one tag purge in flight at once, at most (on a cluster, most
/// calls hold the URLs of one slot, often one or two).
const CALLS_IN_FLIGHT: usize = 32;

impl RedisHome {
    fn tag_base(&self, tag: &str) -> String {
        format!("{}:cache:{{t:{}}}:", self.prefix, tag)
    }

    pub(super) fn tag_url(&self, t: Tagging) -> BoxFuture<'static, Result<bool, StoreError>> {
        let calls: Vec<_> = t
            .tags
            .iter()
            .map(|tag| {
                let base = self.tag_base(tag);
                let mut inv = TAG.prepare_invoke();
                inv.key(format!("{base}m")).key(format!("{base}p"));
                inv.arg(&*t.url).arg(t.keep_ms.max(1)).arg(t.seen_ms);
                self.run::<i64>(base, inv)
            })
            .collect();
        Box::pin(async move {
            let mut all = true;
            for r in futures_util::future::join_all(calls).await {
                all &= r? == 1;
            }
            Ok(all)
        })
    }

    /// Purges (or marks stale) `urls`, `BATCH` per call (on a cluster, the
    /// URLs of one hash slot per call), about `URLS_IN_FLIGHT` at a time.
    pub(super) fn purge_urls(
        &self,
        urls: &[Arc<str>],
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, Unpurged>> {
        let cluster = self.lane.is_cluster();
        let mut groups: BTreeMap<u16, Vec<Arc<str>>> = BTreeMap::new();
        for url in urls {
            let slot = if cluster {
                slot::of(self.base(url).as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push(url.clone());
        }
        let mut calls = Vec::new();
        for urls in groups.values() {
            for chunk in urls.chunks(BATCH) {
                let mut inv = PURGE_URLS.prepare_invoke();
                inv.arg(if soft { "1" } else { "0" })
                    .arg(&self.channel)
                    .arg(FILL_MAX_MS);
                for url in chunk {
                    for key in super::url_keys(&self.base(url)) {
                        inv.key(key);
                    }
                    inv.arg(&**url);
                }
                let (call, chunk) = (self.run::<i64>(self.base(&chunk[0]), inv), chunk.to_vec());
                calls.push(async move { (call.await, chunk) });
            }
        }
        let in_flight =
            (URLS_IN_FLIGHT * calls.len() / urls.len().max(1)).clamp(1, CALLS_IN_FLIGHT);
        Box::pin(async move {
            let mut results = futures_util::stream::iter(calls).buffer_unordered(in_flight);
            let (mut n, mut failed) = (0, None::<Unpurged>);
            while let Some((result, urls)) = results.next().await {
                match (result, &mut failed) {
                    (Ok(k), _) => n += k.max(0) as u64,
                    (Err(_), Some(f)) => f.urls.extend(urls),
                    (Err(error), None) => failed = Some(Unpurged { error, urls }),
                }
            }
            failed.map_or(Ok(n), Err)
        })
    }

    /// Purges (or marks stale) one URL.
    pub(super) fn purge_one(
        &self,
        url: &str,
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let call = self.purge_urls(&[url.into()], soft);
        Box::pin(async move { call.await.map_err(|u| u.error) })
    }

    /// Starts the purge of a tag: its URLs, read from the tag's slot.
    pub(super) fn tagged_urls(
        &self,
        tag: &str,
    ) -> BoxFuture<'static, Result<Vec<Arc<str>>, StoreError>> {
        let base = self.tag_base(tag);
        let mut inv = PURGE_TAG.prepare_invoke();
        inv.key(format!("{base}m")).key(format!("{base}p"));
        inv.arg(FILL_MAX_MS);
        let read = self.run::<Vec<String>>(base, inv);
        Box::pin(async move { Ok(read.await?.into_iter().map(Arc::from).collect()) })
    }
}
