//! How the cache treats a request, decided from its method and fields
//! before anything is looked up.

use http::header::{AUTHORIZATION, COOKIE, UPGRADE};
use http::{HeaderMap, Method, Uri};

use super::cache_control::pragma_no_cache;
use super::config::RequestDirectives;
use super::decide::Want;
use super::key::authorities_differ;
use super::policy::Asked;
use super::policy::CacheControl;
use super::shared::Shared;

/// The way a request takes through the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// An unsafe method: the origin answers, a success invalidates.
    Invalidate,
    /// Neither GET nor HEAD: passed through untouched.
    Pass,
    /// GET or HEAD that the cache stays out of, and why (`Cache-Status`).
    Bypass(&'static str),
    /// Answered through the cache.
    Cache(Plan),
}

/// How a cacheable request is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) head: bool,
    /// Served from the cache if there, but fills nothing.
    pub(crate) lookup_only: bool,
    /// What the request accepts from a stored response (honoured by policy).
    pub(crate) want: Want,
    /// A miss is answered 504 (`only-if-cached`, honoured by policy).
    pub(crate) only_if_cached: bool,
    pub(crate) asked: Asked,
}

/// Every method but the safe ones (RFC 9110 §9.2.1), unknown ones included.
fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Decides a request's route from its method and fields.
pub(crate) fn route(sh: &Shared, method: &Method, uri: &Uri, h: &HeaderMap) -> Route {
    if is_unsafe(method) && sh.cfg.invalidate_unsafe {
        return Route::Invalidate;
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Route::Pass;
    }
    let authorized = h.contains_key(AUTHORIZATION);
    // A protocol switch (WebSocket) is never a cached response.
    if h.contains_key(UPGRADE) {
        return Route::Bypass("upgrade");
    }
    if authorized && !sh.cfg.rules.cache_authorized {
        return Route::Bypass("authorization");
    }
    let head = *method == Method::HEAD;
    // A header the key ignores must not shape a stored response, nor a
    // `Host` other than the authority keyed on.
    // Whichever is shorter is walked: a request's few fields against the
    // list, or the list's names looked up in the request.
    let shapes = |n: &http::HeaderName| !sh.cfg.key.headers.contains(n);
    let unkeyed = if h.keys_len() <= sh.cfg.unkeyed.len() {
        h.keys().any(|n| sh.cfg.unkeyed.contains(n) && shapes(n))
    } else {
        sh.cfg
            .unkeyed
            .iter()
            .any(|n| h.contains_key(n) && shapes(n))
    } || (sh.cfg.key.host && authorities_differ(uri, h));
    let mut plan = Plan {
        head,
        lookup_only: unkeyed,
        want: Want::default(),
        only_if_cached: false,
        asked: Asked {
            authorized,
            cookie: h.contains_key(COOKIE),
        },
    };
    if let RequestDirectives::Honor { min_age } = sh.cfg.directives {
        let mut cc = CacheControl::parse(h);
        // An HTTP/1.0 client's `Pragma: no-cache` (RFC 9111 §5.4,
        // deprecated) asks what `Cache-Control: no-cache` does (RFC 7234
        // §5.4); a request with `Cache-Control` is read by that alone.
        cc.no_cache |= pragma_no_cache(h);
        plan.only_if_cached = cc.only_if_cached;
        plan.lookup_only |= cc.no_store || cc.only_if_cached;
        let want = Want {
            max_age: cc.max_age,
            min_fresh: cc.min_fresh,
            max_stale: cc.max_stale,
            no_cache: cc.no_cache,
            floor_ms: min_age.as_millis() as u64,
        };
        if want.demands() || want.max_stale.is_some() {
            plan.want = want;
        }
    }
    Route::Cache(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ResponseCacheLayer;
    use crate::MemoryStore;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn plan(lookup_only: bool) -> Route {
        Route::Cache(Plan {
            head: false,
            lookup_only,
            want: Want::default(),
            only_if_cached: false,
            asked: Asked::default(),
        })
    }

    fn at(sh: &Shared, method: Method, h: &HeaderMap) -> Route {
        route(sh, &method, &Uri::from_static("/p"), h)
    }

    #[test]
    fn methods_and_bypasses() {
        let layer = ResponseCacheLayer::builder(MemoryStore::new())
            .build()
            .unwrap();
        let sh = &layer.shared;
        let none = HeaderMap::new();
        assert_eq!(at(sh, Method::PUT, &none), Route::Invalidate);
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(at(sh, purge, &none), Route::Invalidate);
        assert_eq!(at(sh, Method::OPTIONS, &none), Route::Pass);
        assert_eq!(at(sh, Method::GET, &none), plan(false));
        let head = at(sh, Method::HEAD, &none);
        assert!(matches!(head, Route::Cache(p) if p.head && !p.lookup_only));
        let ws = headers(&[("upgrade", "websocket"), ("connection", "upgrade")]);
        assert_eq!(at(sh, Method::GET, &ws), Route::Bypass("upgrade"));
        let range = headers(&[("range", "bytes=0-1")]);
        assert_eq!(
            at(sh, Method::GET, &range),
            plan(false),
            "answered from the cache"
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_eq!(at(sh, Method::GET, &auth), Route::Bypass("authorization"));
    }

    #[test]
    fn unkeyed_inputs_and_request_directives() {
        let layer = ResponseCacheLayer::builder(MemoryStore::new())
            .build()
            .unwrap();
        let sh = &layer.shared;
        for name in crate::cache::config::UNKEYED {
            let mut h = HeaderMap::new();
            h.insert(*name, http::HeaderValue::from_static("x"));
            assert_eq!(at(sh, Method::GET, &h), plan(true), "{name}");
        }
        let no_cache = headers(&[("cache-control", "no-cache, no-store")]);
        assert_eq!(
            at(sh, Method::GET, &no_cache),
            plan(false),
            "ignored by default"
        );
        let honor = RequestDirectives::Honor {
            min_age: std::time::Duration::from_secs(1),
        };
        let layer = ResponseCacheLayer::builder(MemoryStore::new())
            .request_directives(honor)
            .key_header(http::HeaderName::from_static("x-forwarded-host"))
            .build()
            .unwrap();
        let sh = &layer.shared;
        let xfh = headers(&[("x-forwarded-host", "evil.example")]);
        assert_eq!(at(sh, Method::GET, &xfh), plan(false), "keyed: not unkeyed");
        let Route::Cache(p) = at(sh, Method::GET, &no_cache) else {
            panic!()
        };
        assert!(p.lookup_only && p.want.no_cache && p.want.floor_ms == 1_000);
        // RFC 9111 §5.4: an HTTP/1.0 client's Pragma, only without Cache-Control.
        let pragma = headers(&[("pragma", "no-cache")]);
        let Route::Cache(p) = at(sh, Method::GET, &pragma) else {
            panic!()
        };
        assert!(p.want.no_cache && !p.lookup_only);
        let both = headers(&[("pragma", "no-cache"), ("cache-control", "max-stale=5")]);
        let Route::Cache(p) = at(sh, Method::GET, &both) else {
            panic!()
        };
        assert!(!p.want.no_cache && p.want.max_stale == Some(5));
    }

    #[test]
    fn an_absolute_form_uri_and_another_host_fill_nothing() {
        let layer = ResponseCacheLayer::builder(MemoryStore::new())
            .build()
            .unwrap();
        let sh = &layer.shared;
        let h = headers(&[("host", "evil.example")]);
        let abs = Uri::from_static("http://good.example/p");
        assert_eq!(route(sh, &Method::GET, &abs, &h), plan(true));
        let same = headers(&[("host", "GOOD.example:80")]);
        assert_eq!(route(sh, &Method::GET, &abs, &same), plan(false));
        let layer = ResponseCacheLayer::builder(MemoryStore::new())
            .key_host(false)
            .build()
            .unwrap();
        assert_eq!(route(&layer.shared, &Method::GET, &abs, &h), plan(false));
    }
}
