//! Conditional requests answered from a stored response (RFC 9110 §13):
//! `If-Match` and `If-None-Match` compare entity-tags (strong and weak
//! comparison, §8.8.3.2), `If-Unmodified-Since` and `If-Modified-Since`
//! dates, in the order of §13.2.2.

use http::header::{
    DATE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::date;
use super::leader::Leader;
use super::policy::has_validator;
use super::range::Ranges;

/// The request's conditional fields, kept to answer from an entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cond {
    if_match: Vec<HeaderValue>,
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Vec<HeaderValue>,
    if_unmodified_since: Vec<HeaderValue>,
    /// `Range` and `If-Range`, answered from a full entry.
    pub(crate) ranges: Ranges,
}

/// What a stored response answers a conditional request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evaluated {
    /// The response itself.
    Full,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`.
    Failed,
}

/// The request fields that make it conditional (`If-Range` included).
const CONDITIONS: [HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// Prepares the origin request of a fill: revalidating a stored response
/// with a validator, the cache's own conditions replace the client's
/// (whose are answered from the refreshed entry, RFC 9111 §4.3.1); with no
/// usable entry the client's conditions go to the origin as they are.
pub(crate) fn revalidating(h: &mut HeaderMap, leader: &Leader) {
    // Refilling a complete entry fetches the whole response, and ranges
    // are cut from it; otherwise the client's `Range` goes to the origin
    // and a `206` is stored as a part (RFC 9111 §3.3).
    let complete = leader.stale.as_ref().is_some_and(|s| s.meta.status != 206);
    if leader.looked.is_some() && complete {
        h.remove(RANGE);
        h.remove(IF_RANGE);
    }
    let Some(stale) = leader.stale.as_ref().filter(|s| has_validator(&s.headers)) else {
        return;
    };
    for name in &CONDITIONS {
        h.remove(name);
    }
    if let Some(etag) = stale.headers.get(ETAG) {
        h.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stale.headers.get(LAST_MODIFIED) {
        h.insert(IF_MODIFIED_SINCE, lm.clone());
    }
}

/// One entity-tag: weak or strong, and its opaque part (quotes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag<'a> {
    pub(crate) weak: bool,
    pub(crate) opaque: &'a [u8],
}

impl<'a> Tag<'a> {
    /// An `entity-tag` (§8.8.3): `W/"…"` or `"…"`; `None` otherwise.
    pub(crate) fn parse(v: &'a [u8]) -> Option<Self> {
        let v = v.trim_ascii();
        let (weak, opaque) = match v.strip_prefix(b"W/") {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let inner = opaque.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        let etagc = |b: &u8| *b == 0x21 || (0x23..=0x7e).contains(b) || *b >= 0x80;
        inner.iter().all(etagc).then_some(Self { weak, opaque })
    }

    pub(crate) fn strong_eq(&self, other: &Tag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    pub(crate) fn weak_eq(&self, other: &Tag<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// The members of `If-Match` / `If-None-Match` lines; `None` for `*`.
/// Invalid members match nothing.
fn members(lines: &[HeaderValue]) -> Option<Vec<Tag<'_>>> {
    let mut out = Vec::new();
    for line in lines {
        let mut quoted = false;
        let split = line.as_bytes().split(move |c| {
            quoted ^= *c == b'"';
            *c == b',' && !quoted
        });
        for member in split.map(<[u8]>::trim_ascii).filter(|m| !m.is_empty()) {
            if member == b"*" {
                return None;
            }
            out.extend(Tag::parse(member));
        }
    }
    Some(out)
}

/// A single HTTP-date field (several lines: none).
fn single_date(lines: &[HeaderValue], now_s: u64) -> Option<u64> {
    match lines {
        [one] => date::parse(one.as_bytes(), now_s),
        _ => None,
    }
}

impl Cond {
    pub(crate) fn of(h: &HeaderMap) -> Self {
        // Most requests carry none of these: a few names are walked rather
        // than six looked up.
        const READ: [HeaderName; 6] = [
            IF_MATCH,
            IF_NONE_MATCH,
            IF_MODIFIED_SINCE,
            IF_UNMODIFIED_SINCE,
            IF_RANGE,
            RANGE,
        ];
        if h.keys_len() <= READ.len() && !h.keys().any(|n| READ.contains(n)) {
            return Self::default();
        }
        let all = |name| h.get_all(name).iter().cloned().collect();
        Self {
            if_match: all(IF_MATCH),
            if_none_match: all(IF_NONE_MATCH),
            if_modified_since: all(IF_MODIFIED_SINCE),
            if_unmodified_since: all(IF_UNMODIFIED_SINCE),
            ranges: Ranges::of(h),
        }
    }

    /// Whether the request carried any of these conditions (`Range` aside).
    pub(crate) fn is_empty(&self) -> bool {
        self.if_match.is_empty()
            && self.if_none_match.is_empty()
            && self.if_modified_since.is_empty()
            && self.if_unmodified_since.is_empty()
    }

    /// RFC 9110 §13.2.2, for a GET or HEAD answered from a stored response
    /// of `status` with `stored` fields, received at `stored_ms`. Only a
    /// 2xx is evaluated (§13.2.1).
    pub(crate) fn evaluate(&self, status: u16, stored: &HeaderMap, stored_ms: u64) -> Evaluated {
        if !(200..300).contains(&status) || self.is_empty() {
            return Evaluated::Full;
        }
        let now_s = stored_ms / 1000;
        let etag = stored.get(ETAG).and_then(|v| Tag::parse(v.as_bytes()));
        let last_modified = date::of(stored.get(LAST_MODIFIED), now_s);
        if !self.if_match.is_empty() {
            let ok = match members(&self.if_match) {
                None => true,
                Some(tags) => etag.is_some_and(|e| tags.iter().any(|t| t.strong_eq(&e))),
            };
            if !ok {
                return Evaluated::Failed;
            }
        } else if let (Some(ius), Some(lm)) =
            (single_date(&self.if_unmodified_since, now_s), last_modified)
        {
            if lm > ius {
                return Evaluated::Failed;
            }
        }
        if !self.if_none_match.is_empty() {
            let matched = match members(&self.if_none_match) {
                None => true,
                Some(tags) => etag.is_some_and(|e| tags.iter().any(|t| t.weak_eq(&e))),
            };
            return if matched {
                Evaluated::NotModified
            } else {
                Evaluated::Full
            };
        }
        if let Some(ims) = single_date(&self.if_modified_since, now_s) {
            // RFC 9111 §4.3.2: without Last-Modified, the Date, else the
            // time the response was received.
            let modified = last_modified
                .or_else(|| date::of(stored.get(DATE), now_s))
                .unwrap_or(now_s);
            if modified <= ims {
                return Evaluated::NotModified;
            }
        }
        Evaluated::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = 1_767_225_600_000;

    fn stored(etag: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static(etag));
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        );
        h
    }

    fn eval(pairs: &[(HeaderName, &'static str)], stored: &HeaderMap) -> Evaluated {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_static(v));
        }
        Cond::of(&h).evaluate(200, stored, AT)
    }

    use Evaluated::*;

    #[test]
    fn rfc9110_13_1_2_if_none_match_uses_the_weak_comparison() {
        let weak = stored("W/\"v1\"");
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "\"v0\", \"v1\"")], &weak),
            NotModified
        );
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "\"v0\", W/\"v1\"")], &weak),
            NotModified
        );
        assert_eq!(eval(&[(IF_NONE_MATCH, "*")], &weak), NotModified);
        assert_eq!(eval(&[(IF_NONE_MATCH, "\"v2\"")], &weak), Full);
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "\"a,b\"")], &stored("\"a,b\"")),
            NotModified
        );
        assert_eq!(
            eval(&[(IF_NONE_MATCH, "v1")], &stored("\"v1\"")),
            Full,
            "unquoted: invalid"
        );
    }

    #[test]
    fn rfc9110_13_1_1_if_match_uses_the_strong_comparison() {
        let strong = stored("\"v1\"");
        assert_eq!(eval(&[(IF_MATCH, "\"v1\"")], &strong), Full);
        assert_eq!(eval(&[(IF_MATCH, "*")], &strong), Full);
        assert_eq!(eval(&[(IF_MATCH, "\"v2\"")], &strong), Failed);
        assert_eq!(eval(&[(IF_MATCH, "W/\"v1\"")], &strong), Failed);
        assert_eq!(eval(&[(IF_MATCH, "W/\"v1\"")], &stored("W/\"v1\"")), Failed);
    }

    #[test]
    fn rfc9110_13_2_2_the_order_of_evaluation() {
        let s = stored("\"v1\"");
        // If-None-Match wins over If-Modified-Since.
        let both = [
            (IF_NONE_MATCH, "\"v2\""),
            (IF_MODIFIED_SINCE, "Fri, 02 Jan 2026 00:00:00 GMT"),
        ];
        assert_eq!(eval(&both, &s), Full);
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, "Fri, 02 Jan 2026 00:00:00 GMT")], &s),
            NotModified
        );
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, "Wed, 31 Dec 2025 00:00:00 GMT")], &s),
            Full
        );
        assert_eq!(
            eval(&[(IF_MODIFIED_SINCE, "yesterday")], &s),
            Full,
            "invalid: ignored"
        );
        assert_eq!(
            eval(
                &[(IF_UNMODIFIED_SINCE, "Wed, 31 Dec 2025 00:00:00 GMT")],
                &s
            ),
            Failed
        );
        assert_eq!(
            eval(
                &[(IF_UNMODIFIED_SINCE, "Fri, 02 Jan 2026 00:00:00 GMT")],
                &s
            ),
            Full
        );
        let failed_first = [(IF_MATCH, "\"v2\""), (IF_NONE_MATCH, "\"v1\"")];
        assert_eq!(eval(&failed_first, &s), Failed);
        // Only a 2xx is evaluated.
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(Cond::of(&h).evaluate(404, &s, AT), Full);
        // Without Last-Modified, If-Modified-Since compares with Date.
        let mut dated = HeaderMap::new();
        dated.insert(
            DATE,
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        );
        assert_eq!(
            eval(
                &[(IF_MODIFIED_SINCE, "Thu, 01 Jan 2026 00:00:00 GMT")],
                &dated
            ),
            NotModified
        );
    }
}
