//! Application values through [`CacheHandle`]: the cache-aside of a
//! database row (`get_or_load`), write-through (`put`), reads (`get`),
//! "nothing found" cached only with an explicit negative TTL, tags, and
//! (feature `serde`) typed values as JSON — never a general-purpose binary
//! deserialiser of stored bytes. Values share the layer's store, keys
//! (hashed, in its scope), single-flight, generations and tags.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use super::decide::{decode_for, fresh, Want};
use super::fill::app_fill;
use super::flight::Outcome;
use super::handle::CacheHandle;
use super::key::{self, app_url, Slot};
use super::leader::Leader;
use super::resolve::{resolve, Ask, Resolution};
use super::store::{Found as Looked, Lookup};
use crate::error::StoreError;

/// How an application value is stored: for how long, under which tags,
/// and whether a loader's "nothing found" is stored too. A `Duration`
/// converts to `Stored::ttl(duration)`.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_layers::cache::Stored;
///
/// let user = Stored::ttl(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(5))
///     .tag("users");
/// # drop(user);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) tags: Vec<String>,
}

impl Stored {
    /// Stored for `ttl` (shortened by the layer's jitter; clamped to 1 ms –
    /// ten years).
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            negative_ttl: None,
            tags: Vec::new(),
        }
    }

    /// A loader that finds nothing is remembered for this long (at most
    /// the `ttl`): keep it short, since until it expires the value reads
    /// as absent even once it exists. Default: "nothing" is never stored.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Tags the value, so that [`CacheHandle::purge_tag`] drops it
    /// together with every response that named the tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

impl From<Duration> for Stored {
    fn from(ttl: Duration) -> Self {
        Self::ttl(ttl)
    }
}

/// How values become stored bytes and back.
struct Codec<V> {
    encode: fn(&V) -> Option<Bytes>,
    decode: fn(&Bytes) -> Option<V>,
}

const RAW: Codec<Bytes> = Codec {
    encode: |b| Some(b.clone()),
    decode: |b| Some(b.clone()),
};

/// What a lookup of a value found.
enum Found<V> {
    Value(V),
    /// A stored "nothing".
    Nothing,
    /// Bytes that are no value of this type: replaced.
    Foreign,
}

impl CacheHandle {
    /// The value stored under `key`, if one is fresh (`None` too for a
    /// stored "nothing"). A failing store is an error.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let sh = &self.shared;
        let url = app_url(&sh.cfg.key.scope, key);
        if sh.retries.is_pending(&url) {
            return Ok(None);
        }
        let (slot, found) = self.read(url).await?;
        let entry = found
            .entry
            .and_then(|raw| decode_for(&slot, raw, found.gen));
        let now = found.now_ms;
        Ok(entry
            .filter(|e| fresh(e, now) && e.meta.status != 404)
            .map(|e| e.body))
    }

    /// Stores `value` under `key` on every instance (write-through: call it
    /// after the write to the source of truth). It first purges the key,
    /// so a `get_or_load` that began before cannot land its older value
    /// after this one; `false` when a purge of the key overtook this put
    /// (writes win), `true` once stored.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        stored: impl Into<Stored>,
    ) -> Result<bool, StoreError> {
        let stored = stored.into();
        let url = app_url(&self.shared.cfg.key.scope, key);
        self.purge(url.clone()).await?;
        let (slot, found) = self.read(url).await?;
        let leader = Leader::new(&self.shared, slot, None, Some((&found, None)), None, None);
        match app_fill(leader, Some(&value), &stored) {
            Some(fill) => fill.store(std::slice::from_ref(&value)).await,
            None => Ok(false),
        }
    }

    /// The value stored under `key`, or the one `loader` produces, stored
    /// as `stored` says (a `Duration`, or [`Stored`] with tags).
    ///
    /// Concurrent calls for one key, in this process and on every instance
    /// sharing the store, run `loader` once; the others wait (bounded by the
    /// layer's `max_wait`) and get its value. If the store fails, `loader`
    /// runs and a warning is logged. A loader error is returned to its
    /// caller and nothing is stored; waiting callers then load themselves.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        stored: impl Into<Stored>,
        loader: F,
    ) -> Result<Bytes, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let stored = stored.into();
        let loaded = self.load_with(key, &stored, false, RAW, move || async move {
            loader().await.map(Some)
        });
        // The loader always gives a value, and a stored "nothing" is a miss.
        Ok(loaded.await?.unwrap_or_default())
    }

    /// Like [`get_or_load`](Self::get_or_load) for a loader that may find
    /// nothing: `None` is stored only with a
    /// [`negative_ttl`](Stored::negative_ttl), and then answered from the
    /// cache until it expires.
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &str,
        stored: impl Into<Stored>,
        loader: F,
    ) -> Result<Option<Bytes>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, E>>,
    {
        self.load_with(key, &stored.into(), true, RAW, loader).await
    }

    /// One lookup of a value's slot, taking no lock.
    async fn read(&self, url: Arc<str>) -> Result<(Slot, Looked), StoreError> {
        let sh = &self.shared;
        let slot = key::slot(url.clone(), sh.spec_of(&url), &HeaderMap::new());
        let q = Lookup {
            slot: slot.clone(),
            lock: None,
            force: false,
        };
        let found = sh.home.lookup(&q).await?;
        sh.observe(found.now_ms);
        Ok((slot, found))
    }

    async fn look_up<V>(&self, key: &str, codec: &Codec<V>) -> Option<Result<Found<V>, Leader>> {
        let ask = Ask {
            url: app_url(&self.shared.cfg.key.scope, key),
            headers: Arc::new(HeaderMap::new()),
            lookup_only: false,
            want: Want::default(),
            ranges: Default::default(),
            head: false,
        };
        match resolve(self.shared.clone(), ask).await {
            Resolution::Hit(e, _) | Resolution::Refresh(e, _) if e.meta.status == 404 => {
                Some(Ok(Found::Nothing))
            }
            Resolution::Hit(e, _) | Resolution::Refresh(e, _) => Some(Ok(
                (codec.decode)(&e.body).map_or(Found::Foreign, Found::Value)
            )),
            Resolution::Fill(leader) => Some(Err(leader)),
            // The loader is the application's own origin: it runs even
            // when the layer fails closed.
            Resolution::Pass(_) | Resolution::Unavailable => None,
        }
    }

    /// The one path of every loading read. With `nothing` a stored
    /// "nothing" is an answer, else a miss (loaded, not stored).
    async fn load_with<V, F, Fut, E>(
        &self,
        key: &str,
        stored: &Stored,
        nothing: bool,
        codec: Codec<V>,
        loader: F,
    ) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        let leader = match self.look_up(key, &codec).await {
            Some(Ok(Found::Value(v))) => return Ok(Some(v)),
            Some(Ok(Found::Nothing)) if nothing => return Ok(None),
            Some(Ok(Found::Nothing)) | None => return loader().await,
            Some(Ok(Found::Foreign)) => {
                let v = loader().await?;
                if let Some(bytes) = v.as_ref().and_then(codec.encode) {
                    let _ = self.put(key, bytes, stored.clone()).await;
                }
                return Ok(v);
            }
            Some(Err(leader)) => leader,
        };
        match loader().await {
            Ok(v) => {
                match v.as_ref().map(codec.encode) {
                    // A value that cannot be encoded is not stored.
                    Some(None) => drop(leader),
                    Some(Some(bytes)) => {
                        if let Some(fill) = app_fill(leader, Some(&bytes), stored) {
                            fill.finish(&[bytes]);
                        }
                    }
                    None => {
                        if let Some(fill) = app_fill(leader, None, stored) {
                            fill.finish(&[]);
                        }
                    }
                }
                Ok(v)
            }
            Err(e) => {
                leader.end(Outcome::Abandoned);
                Err(e)
            }
        }
    }
}

#[cfg(feature = "serde")]
mod json {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    fn codec<T: Serialize + DeserializeOwned>() -> Codec<T> {
        Codec {
            encode: |v| serde_json::to_vec(v).ok().map(Bytes::from),
            decode: |b| serde_json::from_slice(b).ok(),
        }
    }

    /// Typed values as JSON (feature `serde`). Stored bytes that are not a
    /// `T` (another shape, an older version) read as a miss and are replaced.
    impl CacheHandle {
        /// [`get`](Self::get) of a JSON value.
        pub async fn get_json<T: DeserializeOwned>(
            &self,
            key: &str,
        ) -> Result<Option<T>, StoreError> {
            Ok(self
                .get(key)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok()))
        }

        /// [`put`](Self::put) of a JSON value; a value that cannot be
        /// encoded is a configuration error.
        pub async fn put_json<T: Serialize>(
            &self,
            key: &str,
            value: &T,
            stored: impl Into<Stored>,
        ) -> Result<bool, StoreError> {
            let bytes = serde_json::to_vec(value).map_err(|e| {
                StoreError::config(crate::ConfigError::new(format!(
                    "the value cannot be stored as JSON: {e}"
                )))
            })?;
            self.put(key, bytes.into(), stored).await
        }

        /// [`get_or_load`](Self::get_or_load) of a JSON value.
        pub async fn get_or_load_json<T, F, Fut, E>(
            &self,
            key: &str,
            stored: impl Into<Stored>,
            loader: F,
        ) -> Result<T, E>
        where
            T: Serialize + DeserializeOwned,
            F: FnOnce() -> Fut,
            Fut: Future<Output = Result<T, E>>,
        {
            let stored = stored.into();
            let loaded = self
                .load_with(key, &stored, false, codec(), move || async move {
                    loader().await.map(Some)
                })
                .await?;
            // The loader always gives a value, and a stored "nothing" is a miss.
            Ok(loaded.expect("a loader that gives a value gave one"))
        }

        /// [`get_or_load_optional`](Self::get_or_load_optional) of a JSON value.
        pub async fn get_or_load_json_optional<T, F, Fut, E>(
            &self,
            key: &str,
            stored: impl Into<Stored>,
            loader: F,
        ) -> Result<Option<T>, E>
        where
            T: Serialize + DeserializeOwned,
            F: FnOnce() -> Fut,
            Fut: Future<Output = Result<Option<T>, E>>,
        {
            self.load_with(key, &stored.into(), true, codec(), loader)
                .await
        }
    }
}
