//! `Cache-Control` (RFC 9111 §5.2): the directives this cache acts on, read
//! from requests and responses.

use http::header::CACHE_CONTROL;
use http::HeaderMap;

/// The directives of `Cache-Control` this cache acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) swr: Option<u64>,
    pub(crate) sie: Option<u64>,
    pub(crate) only_if_cached: bool,
}

/// Delta-seconds above this are read as this (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 2_147_483_648;

impl CacheControl {
    /// Parses every `Cache-Control` line. An unparseable value of a delta
    /// directive reads as 0 (stale), a duplicate keeps the smaller value.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(CACHE_CONTROL) {
            let Ok(line) = line.to_str() else {
                // Not visible ASCII: the conservative reading.
                cc.no_store = true;
                continue;
            };
            for item in split_outside_quotes(line) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let secs = || {
                    value
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(0, |v| v.min(MAX_DELTA))
                };
                let min = |old: Option<u64>, new: u64| Some(old.map_or(new, |o| o.min(new)));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // Qualified forms are read unqualified: the safe side.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "max-age" => cc.max_age = min(cc.max_age, secs()),
                    "s-maxage" => cc.s_maxage = min(cc.s_maxage, secs()),
                    "stale-while-revalidate" => cc.swr = min(cc.swr, secs()),
                    "stale-if-error" => cc.sie = min(cc.sie, secs()),
                    "only-if-cached" => cc.only_if_cached = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

fn split_outside_quotes(s: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn parses_directives() {
        let cc = CacheControl::parse(&h(&[
            ("cache-control", "public, max-age=60, private=\"a, b\""),
            (
                "cache-control",
                "S-MAXAGE=5, stale-while-revalidate=30, max-age=90",
            ),
        ]));
        assert!(cc.public && cc.private);
        assert_eq!(
            (cc.max_age, cc.s_maxage, cc.swr),
            (Some(60), Some(5), Some(30))
        );
        assert_eq!(
            CacheControl::parse(&h(&[("cache-control", "max-age=x")])).max_age,
            Some(0)
        );
    }
}
