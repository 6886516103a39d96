//! Responses built from entries: hits with `Age` and `Cache-Status`
//! (RFC 9211), `304 Not Modified` and `412 Precondition Failed` for
//! conditional requests (RFC 9110 §13, see [`conditional`](super::conditional)),
//! and the header hygiene of what is stored.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{
    HeaderName, AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE,
    DATE, ETAG, EXPIRES, LAST_MODIFIED, RETRY_AFTER, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, VARY,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::cache_control::CacheControl;
use super::conditional::{Cond, Evaluated};
use super::config::Config;
use super::entry::{Entry, SERVE_ROOM};
use crate::problem::Problem;

/// The `Cache-Status` field name.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// `<name>; <params>` as a `Cache-Status` member.
pub(crate) fn cache_status(name: &str, params: &str) -> HeaderValue {
    HeaderValue::try_from(format!("{name}; {params}"))
        .unwrap_or_else(|_| HeaderValue::from_static("cache"))
}

/// `<name>; <params>; ttl=<ttl>`, written without the formatting machinery
/// (every hit carries one).
fn hit_status(name: &str, params: &str, ttl: i64) -> HeaderValue {
    let mut v = Vec::with_capacity(name.len() + params.len() + 28);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"; ");
    v.extend_from_slice(params.as_bytes());
    v.extend_from_slice(b"; ttl=");
    crate::decimal::push_i64(&mut v, ttl);
    HeaderValue::from_maybe_shared(Bytes::from(v))
        .unwrap_or_else(|_| HeaderValue::from_static("cache"))
}

/// The response to a request answered from `e` at store time `now`.
pub(crate) fn serve(
    cfg: &Config,
    e: &Entry,
    now: u64,
    head: bool,
    cond: &Cond,
    params: &str,
) -> Response<Bytes> {
    let elapsed_s = now.saturating_sub(e.meta.stored_ms) / 1000;
    let age = u64::from(e.meta.age_s) + elapsed_s;
    let ttl = (e.meta.fresh_until_ms() as i64 - now as i64).div_euclid(1000);
    let status = hit_status(&cfg.name, params, ttl);
    let code = StatusCode::from_u16(e.meta.status).unwrap_or(StatusCode::OK);
    let evaluated = cond.evaluate(e.meta.status, &e.headers, e.meta.stored_ms);
    if evaluated == Evaluated::Failed {
        let mut res = Response::new(Bytes::new());
        *res.status_mut() = StatusCode::PRECONDITION_FAILED;
        res.headers_mut().append(CACHE_STATUS.clone(), status);
        return res;
    }
    if evaluated == Evaluated::NotModified {
        let mut res = Response::new(Bytes::new());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let h = res.headers_mut();
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for v in e.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(AGE, age_value(age));
        h.append(CACHE_STATUS.clone(), status);
        return res;
    }
    let mut res = Response::new(if head { Bytes::new() } else { e.body.clone() });
    *res.status_mut() = code;
    // A map of its own, with room for the fields added here and by the
    // server (`Age`, `Cache-Status`, `Content-Length`, `Date`): a clone of
    // the stored one would grow at once.
    let mut h = HeaderMap::with_capacity(e.headers.len() + SERVE_ROOM);
    for (name, value) in &e.headers {
        if !cfg.tags.hides(name) {
            h.append(name.clone(), value.clone());
        }
    }
    *res.headers_mut() = h;
    if !head {
        if let Some((partial, body)) = cond.ranges.apply(code, res.headers_mut(), &e.body) {
            *res.status_mut() = partial;
            *res.body_mut() = body;
        }
    }
    let h = res.headers_mut();
    h.insert(AGE, age_value(age));
    h.append(CACHE_STATUS.clone(), status);
    res
}

/// Ages below this are written once per process, then shared.
const SMALL_AGES: usize = 1024;

/// An `Age` value: most hits are young, and theirs allocates nothing.
fn age_value(age: u64) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let ages = AGES.get_or_init(|| {
        let mut digits = Vec::new();
        let mut ends = Vec::with_capacity(SMALL_AGES);
        for n in 0..SMALL_AGES as u64 {
            crate::decimal::push_u64(&mut digits, n);
            ends.push(digits.len());
        }
        // Kept for the life of the process (a few KiB, once).
        let digits: &'static [u8] = digits.leak();
        let mut start = 0;
        let mut ages = Vec::with_capacity(SMALL_AGES);
        for end in ends {
            let v = HeaderValue::from_maybe_shared(Bytes::from_static(&digits[start..end]));
            ages.push(v.unwrap_or_else(|_| HeaderValue::from(start as u64)));
            start = end;
        }
        ages
    });
    let small = usize::try_from(age).ok().and_then(|i| ages.get(i));
    small.cloned().unwrap_or_else(|| HeaderValue::from(age))
}

/// An answer the cache gives without the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `only-if-cached` and nothing stored (RFC 9111 §5.2.1.7).
    OnlyIfCached,
    /// The store failed and the layer fails closed.
    Unavailable,
    /// The origin's body failed before the client got any of it.
    BadGateway,
}

/// The response for a refusal: problem+json, or a gRPC status for gRPC
/// clients, with `Cache-Status`.
pub(crate) fn refusal(name: &str, r: Refusal, grpc: bool) -> Response<Bytes> {
    let (status, detail, params) = match r {
        Refusal::OnlyIfCached => (
            StatusCode::GATEWAY_TIMEOUT,
            "only-if-cached: no stored response",
            "fwd=miss; detail=only-if-cached",
        ),
        Refusal::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the response cache's store is unavailable; retry shortly",
            "fwd=miss; detail=store-unavailable",
        ),
        Refusal::BadGateway => (
            StatusCode::BAD_GATEWAY,
            "the origin's response failed before it was complete",
            "fwd=miss; detail=origin-body-error",
        ),
    };
    let mut res = Problem::plain(status, detail).respond(grpc, &[]);
    let h = res.headers_mut();
    if r == Refusal::Unavailable {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    h.insert(CACHE_STATUS.clone(), cache_status(name, params));
    res
}

fn hop_by_hop(h: &HeaderMap) -> Vec<HeaderName> {
    let mut names = vec![CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, AGE];
    names.extend(
        [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
        ]
        .map(HeaderName::from_static),
    );
    for v in h.get_all(CONNECTION) {
        if let Ok(v) = v.to_str() {
            names.extend(v.split(',').filter_map(|n| n.trim().parse().ok()));
        }
    }
    names
}

/// The header fields of a response worth storing: no hop-by-hop fields, no
/// `Age` (recomputed), no `Set-Cookie` (never replayed to another client),
/// none a qualified `private` or `no-cache` names (RFC 9111 §5.2.2.4,
/// §5.2.2.7; in the targeted field obeyed, if any, RFC 9213).
pub(crate) fn to_store(h: &HeaderMap, targets: &[HeaderName]) -> HeaderMap {
    let skip = hop_by_hop(h);
    let mut out = h.clone();
    for name in skip.iter().chain([&SET_COOKIE]) {
        out.remove(name);
    }
    for name in CacheControl::of_response(h, targets).unshared_fields {
        if let Ok(name) = HeaderName::try_from(name) {
            out.remove(name);
        }
    }
    out
}

/// RFC 9111 §3.2: a newer response's fields (a 304's, a HEAD's, a
/// combined part's) replace the stored ones of the same name; the length
/// and ranges stay those of the stored content.
pub(crate) fn merge_fields(
    stored: &HeaderMap,
    fresh: &HeaderMap,
    targets: &[HeaderName],
) -> HeaderMap {
    let mut out = stored.clone();
    let fresh = to_store(fresh, targets);
    for name in fresh.keys() {
        if *name == CONTENT_LENGTH || *name == CONTENT_RANGE {
            continue;
        }
        out.remove(name);
        for v in fresh.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("W/\"v1\""));
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        );
        h
    }

    #[test]
    fn stored_headers_drop_hop_by_hop_and_cookies() {
        let mut h = stored();
        h.insert(CONNECTION, HeaderValue::from_static("x-private-hop"));
        h.insert("x-private-hop", HeaderValue::from_static("1"));
        h.insert(SET_COOKIE, HeaderValue::from_static("a=b"));
        h.insert(AGE, HeaderValue::from_static("3"));
        let s = to_store(&h, &[]);
        assert_eq!(s.len(), 2, "{s:?}");
    }

    #[test]
    fn a_hit_status_names_the_cache_params_and_ttl() {
        for (ttl, want) in [
            (0, "edge; hit; ttl=0"),
            (42, "edge; hit; ttl=42"),
            (-3, "edge; hit; ttl=-3"),
            (i64::MIN, "edge; hit; ttl=-9223372036854775808"),
        ] {
            assert_eq!(hit_status("edge", "hit", ttl), want);
        }
    }

    #[test]
    fn ages_young_and_old_read_as_their_number() {
        for age in [0, 1, 9, 10, 999, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(age_value(age), age.to_string().as_str());
        }
    }
}
