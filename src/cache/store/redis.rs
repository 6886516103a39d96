//! The cache's Redis home: one script per step (`scripts/*.lua`), keys
//! `{prefix}:cache:{<url digest>}:i|h|s|l:<variant>|p:<variant>` — the
//! hash tag keeps a URL's keys in one cluster slot. The index (`i`) is a
//! hash holding every variant of the URL (`e:<variant>` entry,
//! `f:<variant>` fresh-until, `x:<variant>` expiry, `t:<variant>` strong
//! `ETag`), its Vary spec and its generation. A URL without Vary has one
//! variant, whose entry is a key of its own (`h`, with the entry's TTL) so
//! that a hit is one plain `GET` (one `MGET` per batch); a soft purge
//! renames it to `s`. Each script touches only the keys it declares in
//! `KEYS`.
//! Invalidations are published on `{prefix}:cache:inval` for the
//! in-process tiers of the fleet.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::{Script, Value};

use super::{
    CacheHome, CacheStore, Found, Lookup, Tagging, Unpurged, Variants, Write, FILL_MAX_MS,
};
use crate::cache::key::Slot;
use crate::cache::l1::{Listener, Signal};
use crate::error::StoreError;
use crate::store::batch::Batcher;
use crate::store::lane::Lane;
use crate::RedisStore;

mod lookups;
mod tags;

use lookups::{Lookups, LOOKUP};

static STORE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/store.lua")));
static VARIANTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/variants.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/release.lua")));

/// The cache home of one [`RedisStore`]: the layer's own lane (own
/// breakers and connection, so large entries never queue ahead of another
/// layer's calls) and the clients of the invalidation channel.
#[derive(Debug, Clone)]
pub(crate) struct RedisHome {
    prefix: String,
    /// The pub/sub channel of the cache's invalidations.
    channel: String,
    lane: Lane,
    pubsub: Vec<redis::Client>,
    lookups: Arc<Batcher<Lookups>>,
}

impl CacheStore for RedisStore {
    fn cache_home(&self) -> Arc<dyn CacheHome> {
        Arc::new(RedisHome {
            prefix: self.prefix().to_owned(),
            channel: format!("{}:cache:inval", self.prefix()),
            lane: {
                let lane = self.lane("response cache", true);
                lane.preload(&[&*LOOKUP, &*STORE, &*RELEASE, &*VARIANTS]);
                lane.preload(&tags::scripts());
                lane
            },
            pubsub: self.pubsub_clients().to_vec(),
            lookups: self.batcher(|| Lookups {
                prefix: self.prefix().to_owned(),
            }),
        })
    }
}

impl RedisHome {
    fn base(&self, url: &str) -> String {
        format!("{}:cache:{{{}}}:", self.prefix, url)
    }

    /// Runs one script call about the URL of `base` on the lane.
    fn run<T: redis::FromRedisValue + Send + 'static>(
        &self,
        base: String,
        inv: redis::ScriptInvocation<'static>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let lane = self.lane.clone();
        Box::pin(async move {
            let mut conn = lane.conn();
            lane.call(&base, inv.invoke_async::<T>(&mut conn)).await
        })
    }
}

/// Subscribes to the invalidation channel and feeds `listener`, resubscribing
/// after a lost connection (to the next node, on a cluster), until the
/// listener is no longer wanted.
async fn listen_loop(clients: Vec<redis::Client>, channel: String, listener: Listener) {
    // Logged once per transition: lost, then regained.
    let mut lost = false;
    for client in clients.iter().cycle() {
        if let Ok(mut ps) = client.get_async_pubsub().await {
            if ps.subscribe(&channel).await.is_ok() {
                if !listener(Signal::Up) {
                    return;
                }
                if std::mem::take(&mut lost) {
                    tracing::warn!(
                        layer = "response cache",
                        "response cache: the L1 tier's invalidation subscription is back; \
                         in-process copies are kept again"
                    );
                }
                let mut messages = ps.on_message();
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                        Ok(Some(msg)) => {
                            let m = String::from_utf8_lossy(msg.get_payload_bytes());
                            if !listener(Signal::Message(&m)) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            if !listener(Signal::Idle) {
                                return;
                            }
                        }
                    }
                }
            }
        }
        if !listener(Signal::Down) {
            return;
        }
        if !std::mem::replace(&mut lost, true) {
            tracing::warn!(
                layer = "response cache",
                "response cache: the L1 tier lost its invalidation subscription; \
                 in-process copies are dropped and not kept until it is back (Redis down \
                 or unreachable: the store's other calls follow the failure policy)"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `scripts/variants.lua`'s reply: `{now, spec or nil, generation, then
/// variant, entry for each}`.
fn variants_of(reply: Value) -> Result<Variants, StoreError> {
    let bad = || StoreError::protocol("cache variants: unexpected reply");
    let Value::Array(values) = reply else {
        return Err(bad());
    };
    let mut it = values.into_iter();
    let (Some(Value::Int(now)), Some(spec), Some(gen)) = (it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let text =
        |v: Value| lookups::bytes_of(v).map(|b| Arc::<str>::from(String::from_utf8_lossy(&b)));
    let mut entries = Vec::new();
    while let (Some(variant), Some(entry)) = (it.next(), it.next()) {
        let (Some(variant), Some(entry)) = (text(variant), lookups::bytes_of(entry)) else {
            return Err(bad());
        };
        entries.push((variant, Bytes::from(entry)));
    }
    Ok(Variants {
        now_ms: now.max(0) as u64,
        spec: text(spec),
        gen: lookups::int_of(gen).unwrap_or(0),
        entries,
    })
}

/// The keys of a URL, in the order its scripts take them: its index, then
/// the entry key and soft-purged copy of a URL without Vary.
pub(super) fn url_keys(base: &str) -> [String; 3] {
    [format!("{base}i"), format!("{base}h"), format!("{base}s")]
}

/// The keys of a slot: the URL's index, the variant's lock and hit-for-miss
/// marker, the entry key and soft-purged copy of a URL without Vary.
fn keys(base: &str, s: &Slot) -> [String; 5] {
    let [index, own, purged] = url_keys(base);
    let (lock, pass) = (
        format!("{base}l:{}", s.variant),
        format!("{base}p:{}", s.variant),
    );
    [index, lock, pass, own, purged]
}

impl CacheHome for RedisHome {
    fn lookup(&self, q: &Lookup) -> BoxFuture<'static, Result<Found, StoreError>> {
        // Batched with the lookups in flight (see `lookups`).
        let (lane, batcher, q) = (self.lane.clone(), self.lookups.clone(), q.clone());
        Box::pin(async move { batcher.submit(&lane, q).await })
    }

    fn write(&self, w: Write) -> BoxFuture<'static, Result<bool, StoreError>> {
        let base = self.base(&w.slot.url);
        let [index, lock, _, own, purged] = keys(&base, &w.slot);
        let mut inv = STORE.prepare_invoke();
        inv.key(index).key(lock).key(own).key(purged);
        inv.arg(&*w.slot.spec)
            .arg(&*w.slot.variant)
            .arg(&w.entry[..])
            .arg(w.fresh_until_ms)
            .arg(w.keep_ms.max(1))
            .arg(w.token.map(|t| t.to_string()).unwrap_or_default())
            .arg(w.max_variants)
            .arg(&self.channel)
            .arg(format!("{}|{}", w.writer, w.slot.url))
            .arg(w.gen.to_string())
            .arg(w.seen_ms)
            .arg(FILL_MAX_MS)
            .arg(w.etag.as_deref().unwrap_or_default());
        let call = self.run::<i64>(base, inv);
        Box::pin(async move { Ok(call.await? == 1) })
    }

    fn release(
        &self,
        slot: &Slot,
        token: u64,
        pass_ms: u64,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        let base = self.base(&slot.url);
        let [_, lock, pass, ..] = keys(&base, slot);
        let mut inv = RELEASE.prepare_invoke();
        inv.key(lock).key(pass).arg(token.to_string()).arg(pass_ms);
        // A clean-up: past the breaker (see `Lane::call_cleanup`).
        let lane = self.lane.clone();
        Box::pin(async move {
            let mut conn = lane.conn();
            lane.call_cleanup(inv.invoke_async::<Value>(&mut conn))
                .await
                .map(drop)
        })
    }

    fn purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.purge_one(url, false)
    }

    fn soft_purge(&self, url: &str) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.purge_one(url, true)
    }

    fn tag(&self, t: Tagging) -> BoxFuture<'static, Result<bool, StoreError>> {
        self.tag_url(t)
    }

    fn tag_urls(&self, tag: &str) -> BoxFuture<'static, Result<Vec<Arc<str>>, StoreError>> {
        self.tagged_urls(tag)
    }

    fn purge_many(
        &self,
        urls: &[Arc<str>],
        soft: bool,
    ) -> BoxFuture<'static, Result<u64, Unpurged>> {
        self.purge_urls(urls, soft)
    }

    fn variants(&self, url: &str, etag: &[u8]) -> BoxFuture<'static, Result<Variants, StoreError>> {
        let base = self.base(url);
        let mut inv = VARIANTS.prepare_invoke();
        for key in url_keys(&base) {
            inv.key(key);
        }
        inv.arg(etag);
        let call = self.run::<Value>(base, inv);
        Box::pin(async move { variants_of(call.await?) })
    }

    fn listen(&self, listener: Listener) -> bool {
        let (false, Ok(rt)) = (
            self.pubsub.is_empty(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return false;
        };
        rt.spawn(listen_loop(
            self.pubsub.clone(),
            self.channel.clone(),
            listener,
        ));
        true
    }
}
