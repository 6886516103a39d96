//! Tags (surrogate keys) and soft purges on Redis. A tag's keys share
//! their own hash tag, `{prefix}:cache:{t:<tag digest>}:m` (its URLs, a
//! sorted set scored by until when each entry may live) and `…:p` (its
//! last purge time), so on a cluster a tag lives in one slot and its URLs
//! in theirs: a tag purge reads the tag's slot once, then purges its URLs
//! slot by slot, a bounded batch per call.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use redis::Script;

use super::RedisHome;
use crate::cache::store::{Tagging, FILL_MAX_MS};
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
const BATCH: usize = 256;

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

    /// Purges (or marks stale) `urls`, grouped by cluster slot, `BATCH` per call.
    pub(super) fn purge_urls(
        &self,
        urls: &[String],
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let mut by_slot: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
        for url in urls {
            let base = self.base(url);
            by_slot
                .entry(slot::of(base.as_bytes()))
                .or_default()
                .push(url);
        }
        let mut calls = Vec::new();
        for urls in by_slot.values() {
            for chunk in urls.chunks(BATCH) {
                let mut inv = PURGE_URLS.prepare_invoke();
                inv.arg(if soft { "1" } else { "0" })
                    .arg(&self.channel)
                    .arg(FILL_MAX_MS);
                for url in chunk {
                    inv.key(format!("{}i", self.base(url))).arg(url.as_str());
                }
                calls.push(self.run::<i64>(self.base(chunk[0]), inv));
            }
        }
        Box::pin(async move {
            let mut n = 0;
            for call in calls {
                n += call.await?.max(0) as u64;
            }
            Ok(n)
        })
    }

    pub(super) fn purge_tagged(
        &self,
        tag: &str,
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let base = self.tag_base(tag);
        let mut inv = PURGE_TAG.prepare_invoke();
        inv.key(format!("{base}m")).key(format!("{base}p"));
        inv.arg(if soft { "1" } else { "0" }).arg(FILL_MAX_MS);
        let read = self.run::<Vec<String>>(base, inv);
        let home = self.clone();
        Box::pin(async move {
            let urls = read.await?;
            home.purge_urls(&urls, soft).await?;
            Ok(urls.len() as u64)
        })
    }
}
