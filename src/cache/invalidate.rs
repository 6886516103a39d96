//! Invalidation (RFC 9111 §4.4): a successful unsafe request drops the
//! cached GET of its URI, and of `Location` / `Content-Location` when they
//! name the same origin, on every instance (the entries live in the store).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, HeaderValue, Request, Uri};

use super::shared::Shared;

/// What an unsafe request may invalidate.
#[derive(Debug)]
pub(crate) struct Targets {
    url: Arc<str>,
    host: Option<String>,
}

impl Targets {
    pub(crate) fn of<B>(shared: &Shared, req: &Request<B>) -> Self {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| req.headers().get(HOST)?.to_str().ok().map(str::to_owned))
            .map(|h| h.to_ascii_lowercase());
        Self {
            url: shared.key.url(req.uri(), req.headers()),
            host,
        }
    }

    /// The URL digest of a `Location`-like value on the same origin.
    fn same_origin(&self, shared: &Shared, v: &HeaderValue) -> Option<Arc<str>> {
        let uri: Uri = v.to_str().ok()?.parse().ok()?;
        if let Some(a) = uri.authority() {
            if Some(a.as_str().to_ascii_lowercase()) != self.host {
                return None;
            }
            return Some(shared.key.url(&uri, &HeaderMap::new()));
        }
        if !uri.path().starts_with('/') {
            return None;
        }
        let mut h = HeaderMap::new();
        if let Some(host) = self
            .host
            .as_deref()
            .and_then(|h| HeaderValue::try_from(h).ok())
        {
            h.insert(HOST, host);
        }
        Some(shared.key.url(&uri, &h))
    }

    /// Purges every target named by the request and its response.
    pub(crate) fn purge(self, shared: &Arc<Shared>, res: &HeaderMap) -> BoxFuture<'static, ()> {
        let mut urls = vec![self.url.clone()];
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(u) = res.get(name).and_then(|v| self.same_origin(shared, v)) {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
        }
        purge_urls(shared.clone(), urls)
    }
}

pub(crate) fn purge_urls(shared: Arc<Shared>, urls: Vec<Arc<str>>) -> BoxFuture<'static, ()> {
    let futs: Vec<_> = urls.iter().map(|u| shared.purge(u)).collect();
    Box::pin(async move {
        for r in futures_util::future::join_all(futs).await {
            if let Err(e) = r {
                shared.store_failed("an invalidation", "the entries stay until they expire", &e);
            }
        }
    })
}
