//! Freshness lifetimes and ages (RFC 9111 §4.2.1 – §4.2.3): explicit from
//! `s-maxage`, `max-age` or `Expires`, heuristic from `Last-Modified`, and
//! the age a response arrives with (`Age`, or how long ago its `Date` was).

use std::time::Duration;

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::HeaderMap;

use super::cache_control::{delta_seconds, CacheControl, MAX_DELTA};
use super::date;

/// Heuristic freshness (§4.2.2): a fraction of the time since
/// `Last-Modified`, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Heuristic {
    pub(crate) fraction: f64,
    pub(crate) max: Duration,
}

impl Default for Heuristic {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            max: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a response's fields say about its freshness, read at store time `now_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    now_s: u64,
    /// The origin's `Date`, if valid; else the time received (§4.2.3).
    date_s: u64,
    /// The response's age when received (§4.2.3: the larger of `Age` and
    /// how long ago its `Date` was).
    pub(crate) age_s: u64,
}

impl Received {
    pub(crate) fn of(headers: &HeaderMap, now_ms: u64) -> Self {
        let now_s = now_ms / 1000;
        let date_s = date::of(headers.get(DATE), now_s);
        let apparent = date_s.map_or(0, |d| now_s.saturating_sub(d));
        Self {
            now_s,
            date_s: date_s.unwrap_or(now_s),
            age_s: apparent.max(age_field(headers).unwrap_or(0)).min(MAX_DELTA),
        }
    }

    /// `s-maxage`, else `max-age`, else `Expires` minus `Date` (§4.2.1),
    /// in ms. An invalid `Expires` is in the past (§5.3).
    pub(crate) fn explicit_ms(&self, cc: &CacheControl, headers: &HeaderMap) -> Option<u64> {
        if let Some(s) = cc.s_maxage.or(cc.max_age) {
            return Some(s * 1000);
        }
        // A targeted field stands in for `Expires` too (RFC 9213 §2.1).
        if cc.targeted {
            return None;
        }
        // Several lines: the first (§4.2.1).
        let expires = headers.get(EXPIRES)?;
        Some(match date::parse(expires.as_bytes(), self.now_s) {
            Some(e) => e.saturating_sub(self.date_s) * 1000,
            None => 0,
        })
    }

    /// The heuristic lifetime (§4.2.2) in ms, for a response with a valid
    /// `Last-Modified`.
    pub(crate) fn heuristic_ms(&self, h: &Heuristic, headers: &HeaderMap) -> Option<u64> {
        let lm = date::of(headers.get(LAST_MODIFIED), self.now_s)?;
        let since_ms = self.date_s.saturating_sub(lm) as f64 * 1000.0;
        let ms = (since_ms * h.fraction) as u64;
        Some(ms.min(h.max.as_millis().min(u128::from(u64::MAX)) as u64))
    }
}

/// `Age` (§5.1): the first member of the field (a list, or several lines,
/// keeps its first); `None` when that is not delta-seconds (ignored).
pub(crate) fn age_field(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(AGE)?.to_str().ok()?;
    delta_seconds(v.split(',').next()?.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-01T00:00:00Z, in ms.
    const NOW: u64 = 1_767_225_600_000;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn rfc9111_5_1_an_invalid_age_is_ignored_and_a_list_keeps_its_first_member() {
        for (v, age) in [
            ("abc", None),
            ("-7200", None),
            ("7200.0", None),
            ("7200,0", Some(7200)),
            ("0,7200", Some(0)),
            ("7200, 7200", Some(7200)),
            ("99999999999999999999999", Some(MAX_DELTA)),
        ] {
            assert_eq!(age_field(&h(&[("age", v)])), age, "{v}");
        }
        assert_eq!(age_field(&h(&[("age", "0"), ("age", "7200")])), Some(0));
        assert_eq!(age_field(&h(&[("age", "7200"), ("age", "0")])), Some(7200));
    }

    #[test]
    fn rfc9111_4_2_3_the_age_on_arrival_counts_a_past_date() {
        let r = Received::of(&h(&[("date", "Wed, 31 Dec 2025 23:59:00 GMT")]), NOW);
        assert_eq!(r.age_s, 60);
        let r = Received::of(
            &h(&[("date", "Wed, 31 Dec 2025 23:59:00 GMT"), ("age", "90")]),
            NOW,
        );
        assert_eq!(r.age_s, 90);
        let r = Received::of(&h(&[("date", "Thu, 01 Jan 2026 00:10:00 GMT")]), NOW);
        assert_eq!(r.age_s, 0, "a Date ahead of the cache's clock adds nothing");
    }

    #[test]
    fn rfc9111_5_3_expires_counts_from_date_and_an_invalid_one_is_past() {
        let at = |pairs: &[(&'static str, &'static str)]| {
            let hs = h(pairs);
            Received::of(&hs, NOW).explicit_ms(&CacheControl::parse(&hs), &hs)
        };
        let date = ("date", "Wed, 31 Dec 2025 23:00:00 GMT");
        assert_eq!(
            at(&[date, ("expires", "Wed, 31 Dec 2025 23:30:00 GMT")]),
            Some(1_800_000)
        );
        assert_eq!(
            at(&[("expires", "Thu, 01 Jan 2026 00:00:30 GMT")]),
            Some(30_000),
            "no Date: now"
        );
        assert_eq!(
            at(&[date, ("expires", "Thursday, 01-Jan-26 00:00:00 GMT")]),
            Some(3_600_000),
            "RFC 850"
        );
        assert_eq!(
            at(&[date, ("expires", "Thu Jan  1 00:00:00 2026")]),
            Some(3_600_000),
            "asctime"
        );
        assert_eq!(at(&[date, ("expires", "0")]), Some(0));
        assert_eq!(
            at(&[date, ("expires", "Thu, 01 Jan 2026 00:00:00 UTC")]),
            Some(0)
        );
        assert_eq!(
            at(&[
                date,
                ("expires", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("expires", "0")
            ]),
            Some(3_600_000),
            "the first line"
        );
        assert_eq!(
            at(&[date, ("cache-control", "max-age=5"), ("expires", "0")]),
            Some(5_000),
            "max-age wins"
        );
        assert_eq!(at(&[date]), None);
    }

    #[test]
    fn rfc9111_4_2_2_heuristic_freshness_is_a_fraction_of_the_time_since_last_modified() {
        let hs = h(&[
            ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT"),
        ]);
        let r = Received::of(&hs, NOW);
        assert_eq!(r.heuristic_ms(&Heuristic::default(), &hs), Some(8_640_000));
        let capped = Heuristic {
            fraction: 0.1,
            max: Duration::from_secs(60),
        };
        assert_eq!(r.heuristic_ms(&capped, &hs), Some(60_000));
        let none = h(&[("last-modified", "yesterday")]);
        assert_eq!(
            Received::of(&none, NOW).heuristic_ms(&Heuristic::default(), &none),
            None
        );
    }
}
