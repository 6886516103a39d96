//! RFC 9111 storability (§3, §3.5, §5.2.2) shared by both stores: what
//! may be stored, for how long it is fresh (see [`freshness`](super::freshness)),
//! and how long it is kept stale.

use std::time::Duration;

use http::header::{ETAG, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, HeaderName, StatusCode};

use super::cache_control::pragma_no_cache;
pub(crate) use super::cache_control::CacheControl;
use super::freshness::{Heuristic, Received};

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
    /// Heuristic freshness, used when there is no default TTL.
    pub(crate) heuristic: Option<Heuristic>,
    /// How stale an entry may be served when the origin cannot be reached.
    pub(crate) stale_if_unreachable: Duration,
    /// Targeted cache-control fields (RFC 9213), highest priority first.
    pub(crate) targeted: Vec<HeaderName>,
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
    matches!(
        why,
        "authorization" | "cookie" | "partial" | "unsatisfiable"
    )
}

/// Heuristically cacheable statuses (RFC 9110 §15.1).
fn heuristic_status(s: u16) -> bool {
    matches!(
        s,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Negative results: with a default TTL (application mode) every 4xx and
/// 5xx; in a pure HTTP cache the heuristically cacheable errors.
fn negative(s: u16, app: bool) -> bool {
    if app {
        s >= 400
    } else {
        matches!(s, 404 | 405 | 410 | 414 | 501)
    }
}

/// Statuses whose caching requirements this cache knows (`must-understand`,
/// RFC 9111 §5.2.2.3): those RFC 9110 defines, but 304 (never stored as
/// such).
fn understood(s: u16) -> bool {
    matches!(s, 200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
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
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served stale.
    pub(crate) must_revalidate: bool,
    /// `s-maxage`: it implies `proxy-revalidate` (§5.2.2.10), so stale
    /// only where the origin explicitly allows it (`stale-while-revalidate`,
    /// `stale-if-error`).
    pub(crate) s_maxage: bool,
    /// How long the store keeps the entry: fresh time plus the stale windows.
    pub(crate) keep_ms: u64,
}

pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// Decides whether the response to a GET, received at store time `now_ms`,
/// may be stored (RFC 9111 §3, §3.5, §4.2) and computes its lifetime.
pub(crate) fn verdict(
    rules: &Rules,
    asked: Asked,
    status: StatusCode,
    headers: &HeaderMap,
    now_ms: u64,
) -> Verdict {
    let s = status.as_u16();
    // Final responses only; a 304 refreshes an entry, it is none itself.
    if s < 200 || s == 304 {
        return Verdict::Pass("status");
    }
    // A 416 is about the request's range, not the representation.
    if s == 416 {
        return Verdict::Pass("unsatisfiable");
    }
    // A part is stored when it is one byte range of a known length (§3.3).
    if s == 206 && !super::partial::storable(headers) {
        return Verdict::Pass("partial");
    }
    let cc = CacheControl::of_response(headers, &rules.targeted);
    if cc.must_understand && !understood(s) {
        return Verdict::Pass("must-understand");
    }
    // `must-understand` lifts `no-store` for a status understood (§5.2.2.3).
    if cc.no_store && !cc.must_understand {
        return Verdict::Pass("no-store");
    }
    if cc.private {
        return Verdict::Pass("private");
    }
    let unshared = cc.unshared_fields.iter().any(|f| f == "set-cookie");
    if headers.contains_key(SET_COOKIE) && !rules.strip_set_cookie && !unshared {
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
    let app = rules.default_ttl.is_some();
    let neg = negative(s, app);
    if app && neg && rules.negative_ttl.is_none() {
        return Verdict::Pass("negative");
    }
    let got = Received::of(headers, now_ms);
    let neg_ms = rules.negative_ttl.filter(|_| neg).map(|d| ms(Some(d)));
    let mut lifetime_ms = match got.explicit_ms(&cc, headers) {
        Some(e) => neg_ms.map_or(e, |n| e.min(n)),
        // Without explicit freshness only the heuristically cacheable, or
        // what says `public` (§4.2.2).
        None if !(heuristic_status(s) || cc.public) => return Verdict::Pass("status"),
        None => match (neg_ms, rules.default_ttl) {
            (Some(n), _) => jittered(n, rules.jitter),
            (None, Some(d)) => jittered(ms(Some(d)), rules.jitter),
            (None, None) => {
                // `Pragma: no-cache` with no `Cache-Control` (an HTTP/1.0
                // origin, RFC 9111 §5.4): no heuristic lifetime.
                let pragma = pragma_no_cache(headers);
                let heuristic = rules.heuristic.filter(|_| !pragma);
                let h = heuristic.and_then(|h| got.heuristic_ms(&h, headers));
                match h {
                    Some(h) => h,
                    // Stored stale, to be revalidated.
                    None if headers.contains_key(ETAG) => 0,
                    None => return Verdict::Pass("no-freshness"),
                }
            }
        },
    };
    if cc.no_cache {
        lifetime_ms = 0;
    }
    let age_s = got.age_s.min(u64::from(u32::MAX)) as u32;
    let fresh_ms = lifetime_ms.saturating_sub(u64::from(age_s) * 1000);
    let must_revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
    let clamp = |s: Option<u64>| s.map_or(0, |s| s.min(u64::from(u32::MAX)) as u32);
    let (swr_s, sie_s) = if must_revalidate {
        (0, 0)
    } else {
        (clamp(cc.swr), clamp(cc.sie))
    };
    let mut stale_ms = u64::from(swr_s.max(sie_s)) * 1000;
    if has_validator(headers) {
        stale_ms = stale_ms.max(ms(Some(rules.keep_stale)));
    }
    let s_maxage = cc.s_maxage.is_some();
    if !must_revalidate && !s_maxage {
        stale_ms = stale_ms.max(ms(Some(rules.stale_if_unreachable)));
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
        s_maxage,
        keep_ms: fresh_ms.saturating_add(stale_ms).max(1),
    })
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
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
mod tests;
