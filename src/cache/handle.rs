//! [`CacheHandle`]: the cache for application code — invalidation by URI,
//! key or tag, hard or soft; its application values are in [`app`](super::app).

use std::sync::Arc;

use http::{HeaderMap, Uri};

use super::key::app_url;
use super::purges::{purge_tag, purge_urls, retry_later};
use super::shared::Shared;
use super::tags::tag_key;
use crate::error::{ConfigError, StoreError};

/// Application access to a [`ResponseCacheLayer`](super::ResponseCacheLayer)'s
/// cache; from [`ResponseCacheLayer::handle`](super::ResponseCacheLayer::handle).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct CacheHandle {
    pub(super) shared: Arc<Shared>,
}

impl CacheHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Drops the value of `key` (from [`get_or_load`](Self::get_or_load)) on
    /// every instance. A purge that fails is also retried in the background.
    pub async fn invalidate_key(&self, key: &str) -> Result<(), StoreError> {
        let url = app_url(&self.shared.cfg.key.scope, key);
        self.purge(url).await
    }

    pub(super) async fn purge(&self, url: Arc<str>) -> Result<(), StoreError> {
        let result = self.shared.purge(&url).await.map(drop);
        if result.is_err() {
            retry_later(&self.shared, &url, false);
        }
        result
    }

    /// Drops every cached variant of a GET of `uri` on every instance.
    /// Entries are keyed per host (see
    /// [`key_host`](super::ResponseCacheLayerBuilder::key_host)), so `uri`
    /// must be absolute (`http://api.example/items/1`) unless that is off;
    /// a relative one is then an error. A purge that fails is also retried
    /// in the background.
    pub async fn invalidate(&self, uri: &Uri) -> Result<(), StoreError> {
        let url = self.url_of(uri)?;
        self.purge(url).await
    }

    /// Like [`invalidate`](Self::invalidate), in the background: failures
    /// are logged and retried.
    pub fn invalidate_later(&self, uri: &Uri) {
        let url = match self.url_of(uri) {
            Ok(url) => url,
            Err(e) => return tracing::warn!(error = %e, "response cache: invalidate_later ignored"),
        };
        let fut = purge_urls(self.shared.clone(), vec![url]);
        super::shared::spawn(async move {
            fut.await;
        });
    }

    /// Drops every entry whose response named `tag` in the layer's tag
    /// header (`Surrogate-Key` by default), on every instance; the number
    /// of URLs purged. Responses fetched before the purge are not stored
    /// after it, as with any purge. On Redis the tag's URLs are read from
    /// its own key, then purged in batches (per cluster slot). A purge that
    /// fails is also retried in the background (the URLs it could read, one
    /// by one; meanwhile this instance answers them from the origin).
    pub async fn purge_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let key = tag_key(&self.shared.cfg.key.scope, tag);
        purge_tag(&self.shared, key, false).await
    }

    /// Marks every entry whose response named `tag` stale, on every
    /// instance, keeping them: the next request for each revalidates it
    /// (one request across the fleet; within `stale-while-revalidate` the
    /// others are served the stale entry meanwhile). The number of URLs.
    /// A purge that fails is also retried in the background.
    pub async fn soft_purge_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let key = tag_key(&self.shared.cfg.key.scope, tag);
        purge_tag(&self.shared, key, true).await
    }

    /// Marks every variant of a GET of `uri` stale on every instance (see
    /// [`soft_purge_tag`](Self::soft_purge_tag)); `uri` as for
    /// [`invalidate`](Self::invalidate). A purge that fails is also retried
    /// in the background.
    pub async fn soft_purge_url(&self, uri: &Uri) -> Result<(), StoreError> {
        let url = self.url_of(uri)?;
        let result = self.shared.soft_purge(&url).await.map(drop);
        if result.is_err() {
            retry_later(&self.shared, &url, true);
        }
        result
    }

    fn url_of(&self, uri: &Uri) -> Result<Arc<str>, StoreError> {
        if self.shared.cfg.key.host && uri.authority().is_none() {
            return Err(StoreError::config(ConfigError::new(
                "entries are keyed per host: invalidate an absolute URI (http://host/path)",
            )));
        }
        Ok(self.shared.cfg.key.url(uri, &HeaderMap::new()))
    }
}
