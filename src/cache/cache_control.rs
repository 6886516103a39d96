//! `Cache-Control` (RFC 9111 §5.2): the directives this cache acts on, read
//! from requests and responses by the field's grammar — `token [ "="
//! ( token / quoted-string ) ]`, names case-insensitive, no space around
//! `=`. A directive given twice keeps its first value, a delta-seconds
//! value that is not one reads as 0 (stale), one too large for 31 bits
//! as 2^31 (§1.2.2, §4.2.1).

use http::header::CACHE_CONTROL;
use http::HeaderMap;

/// The directives of `Cache-Control` this cache acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    /// Unqualified `no-cache`.
    pub(crate) no_cache: bool,
    /// Unqualified `private`.
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) swr: Option<u64>,
    pub(crate) sie: Option<u64>,
    /// Fields named by a qualified `no-cache` or `private` (lowercase): a
    /// shared cache stores the response without them (§5.2.2.4, §5.2.2.7).
    pub(crate) unshared_fields: Vec<String>,
    // Request directives (§5.2.1).
    pub(crate) only_if_cached: bool,
    /// `max-stale` (without a value: any staleness).
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    /// Read from a targeted field (RFC 9213): `Expires` is ignored too.
    pub(crate) targeted: bool,
}

/// Delta-seconds above this are read as this (RFC 9111 §1.2.2).
pub(crate) const MAX_DELTA: u64 = 2_147_483_648;

/// Delta-seconds (`1*DIGIT`), saturating at [`MAX_DELTA`].
pub(crate) fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        v.bytes()
            .fold(0u64, |n, d| (n * 10 + u64::from(d - b'0')).min(MAX_DELTA)),
    )
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A directive's argument: a token, or a quoted-string unescaped;
/// `None` when it is neither.
fn argument(v: &str) -> Option<String> {
    if let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return None,
                c => out.push(c),
            }
        }
        return Some(out);
    }
    is_token(v).then(|| v.to_owned())
}

impl CacheControl {
    /// Parses every `Cache-Control` line.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in headers.get_all(CACHE_CONTROL) {
            let Ok(line) = line.to_str() else {
                // Not visible ASCII: the conservative reading.
                cc.no_store = true;
                continue;
            };
            for item in split_outside_quotes(line) {
                let item = item.trim_matches([' ', '\t']);
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n, Some(argument(v))),
                    None => (item, None),
                };
                if !is_token(name) {
                    continue;
                }
                cc.apply(&name.to_ascii_lowercase(), value);
            }
        }
        cc
    }

    /// One directive; `value` is `Some(None)` for an invalid argument.
    fn apply(&mut self, name: &str, value: Option<Option<String>>) {
        // An invalid or missing delta reads as 0: stale (response
        // lifetimes, request max-age), the safe side.
        let secs = || {
            value
                .clone()
                .flatten()
                .and_then(|v| delta_seconds(&v))
                .unwrap_or(0)
        };
        let first = |slot: &mut Option<u64>, v: u64| {
            slot.get_or_insert(v);
        };
        let fields = |v: &Option<Option<String>>| -> Vec<String> {
            v.clone()
                .flatten()
                .map(|l| {
                    l.split(',')
                        .map(|f| f.trim().to_ascii_lowercase())
                        .filter(|f| !f.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        match name {
            "no-store" => self.no_store = true,
            "no-cache" if value.is_none() => self.no_cache = true,
            "private" if value.is_none() => self.private = true,
            "no-cache" | "private" => {
                let named = fields(&value);
                if named.is_empty() {
                    // `no-cache=""` or an invalid list: read unqualified.
                    if name == "private" {
                        self.private = true;
                    } else {
                        self.no_cache = true;
                    }
                }
                self.unshared_fields.extend(named);
            }
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => first(&mut self.max_age, secs()),
            "s-maxage" => first(&mut self.s_maxage, secs()),
            "stale-while-revalidate" => first(&mut self.swr, secs()),
            "stale-if-error" => first(&mut self.sie, secs()),
            // A client's constraint it got wrong is ignored.
            "max-stale" => match value {
                None => first(&mut self.max_stale, u64::MAX),
                Some(v) => {
                    if let Some(s) = v.as_deref().and_then(delta_seconds) {
                        first(&mut self.max_stale, s);
                    }
                }
            },
            "min-fresh" => {
                if let Some(s) = value.flatten().as_deref().and_then(delta_seconds) {
                    first(&mut self.min_fresh, s);
                }
            }
            _ => {}
        }
    }
}

/// `Pragma: no-cache` (RFC 9111 §5.4, deprecated): the field's only
/// defined directive, read only where `Cache-Control` is absent.
pub(crate) fn pragma_no_cache(headers: &HeaderMap) -> bool {
    !headers.contains_key(CACHE_CONTROL)
        && headers
            .get_all(http::header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

fn split_outside_quotes(s: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut escaped = false;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
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

    fn cc(v: &'static str) -> CacheControl {
        CacheControl::parse(&h(&[("cache-control", v)]))
    }

    #[test]
    fn rfc9111_5_2_directives_are_parsed_by_their_grammar() {
        let c = CacheControl::parse(&h(&[
            ("cache-control", "public, max-age=60, private=\"a, B\""),
            (
                "cache-control",
                "S-MAXAGE=5, stale-while-revalidate=30, No-Store",
            ),
        ]));
        assert!(c.public && !c.private && c.no_store);
        assert_eq!(c.unshared_fields, vec!["a", "b"]);
        assert_eq!(
            (c.max_age, c.s_maxage, c.swr),
            (Some(60), Some(5), Some(30))
        );
        assert_eq!(
            cc("max-age=\"3600\"").max_age,
            Some(3600),
            "quoted-string form"
        );
        assert_eq!(cc("max-age=003600").max_age, Some(3600));
        assert_eq!(cc("max-age=99999999999999999999").max_age, Some(MAX_DELTA));
        for invalid in [
            "max-age=x",
            "max-age=3600.0",
            "max-age='3600'",
            "max-age=+5",
            "max-age= 3600",
        ] {
            let c = CacheControl::parse(&h(&[("cache-control", invalid)]));
            assert_eq!(c.max_age, Some(0), "{invalid}: stale");
        }
        assert_eq!(cc("max-age =3600").max_age, None, "not the directive");
        assert_eq!(cc("extension=\"max-age=3600\", max-age=1").max_age, Some(1));
        assert_eq!(cc("a=\"x\\\", max-age=9\", max-age=2").max_age, Some(2));
    }

    #[test]
    fn rfc9111_4_2_1_a_duplicate_directive_keeps_its_first_value() {
        assert_eq!(cc("max-age=1800, max-age=1").max_age, Some(1800));
        assert_eq!(cc("max-age=1, max-age=1800").max_age, Some(1));
        let two = CacheControl::parse(&h(&[
            ("cache-control", "max-age=1"),
            ("cache-control", "max-age=1800"),
        ]));
        assert_eq!(two.max_age, Some(1));
    }

    #[test]
    fn rfc9111_5_4_pragma_no_cache_counts_only_without_cache_control() {
        assert!(pragma_no_cache(&h(&[("pragma", "x=1, No-Cache")])));
        assert!(!pragma_no_cache(&h(&[("pragma", "no-cache=1")])));
        assert!(!pragma_no_cache(&h(&[("pragma", "extension")])));
        let both = h(&[("pragma", "no-cache"), ("cache-control", "max-age=60")]);
        assert!(!pragma_no_cache(&both));
    }

    #[test]
    fn rfc9111_5_2_1_request_directives() {
        let c = cc("max-stale, min-fresh=20, only-if-cached");
        assert_eq!((c.max_stale, c.min_fresh), (Some(u64::MAX), Some(20)));
        assert!(c.only_if_cached);
        assert_eq!(cc("max-stale=5").max_stale, Some(5));
        assert_eq!(cc("max-stale=x, min-fresh=y"), CacheControl::default());
        assert!(cc("no-cache").no_cache);
        assert!(
            cc("no-cache=\"\"").no_cache,
            "an empty list reads unqualified"
        );
        assert!(!cc("no-cache=\"set-cookie\"").no_cache);
    }
}
