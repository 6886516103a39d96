//! Invalidation (RFC 9111 §4.4): a successful unsafe request drops the
//! cached GET of its URI, and of `Location` / `Content-Location` when they
//! name the same origin, on every instance (the entries live in the store).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, HeaderValue, Request, Uri};

use super::key::authority;
use super::post::Post;
use super::purges::{purge_urls, Invalidated};
use super::response::{cache_status, CACHE_STATUS};
use super::shared::Shared;

/// What an unsafe request may invalidate.
#[derive(Debug)]
pub(crate) struct Targets {
    url: Arc<str>,
    /// The request's authority, normalised as keys have it.
    host: Vec<u8>,
    /// The request's fields as far as keys read them (`Host`).
    fields: HeaderMap,
    /// A `POST` whose response may become the stored `GET` response.
    post: Option<Post>,
}

impl Targets {
    pub(crate) fn of<B>(shared: &Shared, req: &Request<B>) -> Self {
        let mut fields = HeaderMap::new();
        if let Some(h) = req.headers().get(HOST) {
            fields.insert(HOST, h.clone());
        }
        Self {
            url: shared.cfg.key.url(req.uri(), req.headers()),
            host: authority(req.uri(), req.headers()),
            fields,
            post: Post::of(shared, req),
        }
    }

    /// The `POST` whose response `res` is to be stored as its URI's `GET`
    /// response once the purge lands (RFC 9110 §9.3.3), if it is one.
    pub(crate) fn adopting(
        &mut self,
        shared: &Shared,
        status: http::StatusCode,
        res: &HeaderMap,
    ) -> Option<Post> {
        let location = res
            .get(CONTENT_LOCATION)
            .and_then(|v| self.same_origin(shared, v));
        self.post
            .take()
            .filter(|p| p.adopts(shared, status, res, location))
    }

    /// The URL digest of a `Location`-like value on the same origin.
    fn same_origin(&self, shared: &Shared, v: &HeaderValue) -> Option<Arc<str>> {
        let uri: Uri = v.to_str().ok()?.parse().ok()?;
        if uri.authority().is_some() {
            if authority(&uri, &HeaderMap::new()) != self.host {
                return None;
            }
            return Some(shared.cfg.key.url(&uri, &HeaderMap::new()));
        }
        if !uri.path().starts_with('/') {
            return None;
        }
        Some(shared.cfg.key.url(&uri, &self.fields))
    }

    /// Purges every target named by the request and its response.
    pub(crate) fn purge(
        self,
        shared: &Arc<Shared>,
        res: &HeaderMap,
    ) -> BoxFuture<'static, Invalidated> {
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

impl Invalidated {
    /// Tells the writer, in `Cache-Status`, that a purge is still to land.
    pub(crate) fn mark(&self, name: &str, h: &mut HeaderMap) {
        if !self.landed {
            let status = cache_status(name, "fwd=method; detail=purge-pending");
            h.append(CACHE_STATUS.clone(), status);
        }
    }
}
