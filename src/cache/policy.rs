//! RFC 9111 storability and freshness, shared by both stores: what may be
//! stored, for how long it is fresh, and how long it is kept stale.

use std::time::{Duration, SystemTime};

use http::header::{AGE, DATE, ETAG, EXPIRES, LAST_MODIFIED};

pub(crate) use super::cache_control::CacheControl;
use http::{HeaderMap, StatusCode};

/// The layer's storage rules (set on the builder).
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) jitter: f64,
    pub(crate) keep_stale: Duration,
    pub(crate) strip_set_cookie: bool,
    pub(crate) cache_authorized: bool,
    /// Store responses to requests with `Cookie` as to any other.
    pub(crate) share_cookie_requests: bool,
}

/// What of the request decides whether its response may be shared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Asked {
    pub(crate) authorized: bool,
    pub(crate) cookie: bool,
}

/// A pass caused by the request, not the response: another request for the
/// same slot may get a storable response (no hit-for-miss).
pub(crate) fn request_specific(why: &str) -> bool {
    matches!(why, "authorization" | "cookie")
}

/// Statuses stored with the layer's default TTL (RFC 9110 §15.1, heuristically
/// cacheable; 206 left out: ranges are not cached).
fn positive(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308)
}

/// Statuses stored only with an explicit negative TTL.
fn negative(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 405 | 410 | 414 | 501)
}

/// Whether and how long to store a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Store(Lifetime),
    Pass(&'static str),
}

/// Freshness of a response to store, from its fields and the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) fresh_ms: u64,
    pub(crate) age_s: u32,
    pub(crate) swr_s: u32,
    pub(crate) sie_s: u32,
    pub(crate) must_revalidate: bool,
    /// How long the store keeps the entry: fresh time plus the stale windows.
    pub(crate) keep_ms: u64,
}

pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// Decides whether the response to a GET may be stored (RFC 9111 §3, §3.5,
/// §4.2.1) and computes its lifetime.
pub(crate) fn verdict(
    rules: &Rules,
    asked: Asked,
    status: StatusCode,
    headers: &HeaderMap,
) -> Verdict {
    let cc = CacheControl::parse(headers);
    let neg = negative(status);
    if !positive(status) && !neg {
        return Verdict::Pass("status");
    }
    if cc.no_store {
        return Verdict::Pass("no-store");
    }
    if cc.private {
        return Verdict::Pass("private");
    }
    if headers.contains_key(http::header::SET_COOKIE) && !rules.strip_set_cookie {
        return Verdict::Pass("set-cookie");
    }
    if asked.authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Verdict::Pass("authorization");
    }
    // A response to a client with cookies may be about that client: shared
    // only when it says so, never on the layer's default TTL.
    if asked.cookie && !rules.share_cookie_requests && !(cc.public || cc.s_maxage.is_some()) {
        return Verdict::Pass("cookie");
    }
    if neg && rules.negative_ttl.is_none() {
        return Verdict::Pass("negative");
    }
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .map(|s| Duration::from_secs(s).as_millis() as u64)
        .or_else(|| expires_ms(headers));
    let mut lifetime_ms = match (explicit, neg) {
        (Some(e), false) => e,
        (Some(e), true) => e.min(ms(rules.negative_ttl)),
        (None, false) => match rules.default_ttl {
            Some(d) => jittered(ms(Some(d)), rules.jitter),
            None => return Verdict::Pass("no-freshness"),
        },
        (None, true) => jittered(ms(rules.negative_ttl), rules.jitter),
    };
    if cc.no_cache {
        lifetime_ms = 0;
    }
    let age_s = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(0, |a| a.min(u64::from(u32::MAX)) as u32);
    let fresh_ms = lifetime_ms.saturating_sub(u64::from(age_s) * 1000);
    let must_revalidate = cc.must_revalidate || cc.no_cache;
    let clamp = |s: Option<u64>| s.map_or(0, |s| s.min(u64::from(u32::MAX)) as u32);
    let (swr_s, sie_s) = if must_revalidate {
        (0, 0)
    } else {
        (clamp(cc.swr), clamp(cc.sie))
    };
    let validators = has_validator(headers);
    let mut stale_ms = u64::from(swr_s.max(sie_s)) * 1000;
    if validators {
        stale_ms = stale_ms.max(ms(Some(rules.keep_stale)));
    }
    if fresh_ms == 0 && stale_ms == 0 {
        return Verdict::Pass("stale");
    }
    Verdict::Store(Lifetime {
        fresh_ms,
        age_s,
        swr_s,
        sie_s,
        must_revalidate,
        keep_ms: fresh_ms.saturating_add(stale_ms).max(1),
    })
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

/// `Expires` minus `Date` (or now); an invalid `Expires` means already stale.
fn expires_ms(headers: &HeaderMap) -> Option<u64> {
    let expires = headers.get(EXPIRES)?;
    let parse = |v: &http::HeaderValue| httpdate::parse_http_date(v.to_str().ok()?).ok();
    let Some(expires) = parse(expires) else {
        return Some(0);
    };
    let base = headers
        .get(DATE)
        .and_then(parse)
        .unwrap_or_else(SystemTime::now);
    Some(
        expires
            .duration_since(base)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// Shortens `ms` by up to `fraction` so entries written together expire apart.
pub(crate) fn jittered(ms: u64, fraction: f64) -> u64 {
    if fraction <= 0.0 || ms == 0 {
        return ms;
    }
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    ms - (ms as f64 * fraction * unit) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            default_ttl: Some(Duration::from_secs(30)),
            negative_ttl: None,
            jitter: 0.0,
            keep_stale: Duration::from_secs(60),
            strip_set_cookie: false,
            cache_authorized: false,
            share_cookie_requests: false,
        }
    }

    const AUTH: Asked = Asked {
        authorized: true,
        cookie: false,
    };
    const COOKIE: Asked = Asked {
        authorized: false,
        cookie: true,
    };

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    fn fresh(v: Verdict) -> u64 {
        match v {
            Verdict::Store(l) => l.fresh_ms,
            Verdict::Pass(why) => panic!("passed: {why}"),
        }
    }

    #[test]
    fn lifetime_precedence() {
        let r = rules();
        let ok = StatusCode::OK;
        let v = |hs| verdict(&r, Asked::default(), ok, &h(hs));
        assert_eq!(
            fresh(v(&[("cache-control", "max-age=10, s-maxage=20")])),
            20_000
        );
        assert_eq!(fresh(v(&[("cache-control", "max-age=10")])), 10_000);
        assert_eq!(
            fresh(v(&[
                ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("expires", "Thu, 01 Jan 2026 00:00:45 GMT")
            ])),
            45_000
        );
        assert_eq!(fresh(v(&[])), 30_000, "the default TTL");
        assert_eq!(
            fresh(v(&[("cache-control", "max-age=10"), ("age", "4")])),
            6_000
        );
        assert_eq!(v(&[("expires", "0")]), Verdict::Pass("stale"));
        let pure = Rules {
            default_ttl: None,
            ..rules()
        };
        assert_eq!(
            verdict(&pure, Asked::default(), ok, &h(&[])),
            Verdict::Pass("no-freshness")
        );
    }

    #[test]
    fn what_is_never_stored_by_default() {
        let r = rules();
        let ok = StatusCode::OK;
        assert_eq!(
            verdict(
                &r,
                Asked::default(),
                ok,
                &h(&[("cache-control", "no-store")])
            ),
            Verdict::Pass("no-store")
        );
        assert_eq!(
            verdict(
                &r,
                Asked::default(),
                ok,
                &h(&[("cache-control", "private")])
            ),
            Verdict::Pass("private")
        );
        assert_eq!(
            verdict(&r, Asked::default(), ok, &h(&[("set-cookie", "a=b")])),
            Verdict::Pass("set-cookie")
        );
        assert_eq!(
            verdict(&r, AUTH, ok, &h(&[])),
            Verdict::Pass("authorization")
        );
        assert!(matches!(
            verdict(&r, AUTH, ok, &h(&[("cache-control", "public")])),
            Verdict::Store(_)
        ));
        assert_eq!(
            verdict(&r, Asked::default(), StatusCode::NOT_FOUND, &h(&[])),
            Verdict::Pass("negative")
        );
        assert_eq!(
            verdict(&r, Asked::default(), StatusCode::FOUND, &h(&[])),
            Verdict::Pass("status")
        );
        let neg = Rules {
            negative_ttl: Some(Duration::from_secs(5)),
            ..rules()
        };
        assert_eq!(
            fresh(verdict(
                &neg,
                Asked::default(),
                StatusCode::NOT_FOUND,
                &h(&[("cache-control", "max-age=60")])
            )),
            5_000
        );
    }

    #[test]
    fn a_request_with_cookies_fills_only_what_the_response_shares() {
        let r = rules();
        let ok = StatusCode::OK;
        assert_eq!(
            verdict(&r, COOKIE, ok, &h(&[])),
            Verdict::Pass("cookie"),
            "default TTL"
        );
        assert_eq!(
            verdict(&r, COOKIE, ok, &h(&[("cache-control", "max-age=60")])),
            Verdict::Pass("cookie")
        );
        for shared in ["public, max-age=60", "s-maxage=60"] {
            let v = verdict(&r, COOKIE, ok, &h(&[("cache-control", shared)]));
            assert!(matches!(v, Verdict::Store(_)), "{shared}");
        }
        let open = Rules {
            share_cookie_requests: true,
            ..rules()
        };
        assert!(matches!(
            verdict(&open, COOKIE, ok, &h(&[])),
            Verdict::Store(_)
        ));
    }

    #[test]
    fn validators_keep_stale_entries_for_revalidation() {
        let r = rules();
        match verdict(
            &r,
            Asked::default(),
            StatusCode::OK,
            &h(&[("cache-control", "no-cache"), ("etag", "\"v1\"")]),
        ) {
            Verdict::Store(l) => {
                assert_eq!(l.fresh_ms, 0);
                assert!(l.must_revalidate);
                assert_eq!(l.keep_ms, 60_000);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn jitter_only_shortens() {
        for _ in 0..100 {
            let j = jittered(10_000, 0.1);
            assert!((9_000..=10_000).contains(&j), "{j}");
        }
    }
}
