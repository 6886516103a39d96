//! Targeted cache control (RFC 9213): fields such as `CDN-Cache-Control`
//! that address a class of caches. A cache with a target list uses the
//! first field on it that a response carries with a valid, non-empty
//! value, in place of `Cache-Control` and `Expires` (§2.1); the field is a
//! structured-field dictionary (§2.2), and one that does not parse, or
//! gives a known directive a value of the wrong type, is ignored.

use http::{HeaderMap, HeaderName};
use sfv::{BareItem, Dictionary, ListEntry, Parser};

use super::cache_control::{CacheControl, MAX_DELTA};

impl CacheControl {
    /// The directives of a response for a cache with the target list
    /// `targets` (highest priority first): the first valid, non-empty
    /// targeted field, else `Cache-Control`.
    pub(crate) fn of_response(headers: &HeaderMap, targets: &[HeaderName]) -> Self {
        targets
            .iter()
            .find_map(|name| targeted(headers, name))
            .unwrap_or_else(|| Self::parse(headers))
    }
}

/// One targeted field's directives; `None` when it is absent, empty or
/// invalid.
fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    // Several lines are one field, joined with commas (RFC 9651 §4.2).
    let mut joined = first.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    let dict: Dictionary = Parser::new(&joined).parse().ok()?;
    if dict.is_empty() {
        return None;
    }
    let mut cc = CacheControl {
        targeted: true,
        ..CacheControl::default()
    };
    for (key, entry) in &dict {
        apply(&mut cc, key.as_str(), entry)?;
    }
    Some(cc)
}

/// One directive (parameters ignored, §2.2); `None` for a value of the
/// wrong type. Unknown directives are ignored.
fn apply(cc: &mut CacheControl, name: &str, entry: &ListEntry) -> Option<()> {
    let value = match entry {
        ListEntry::Item(item) => Some(&item.bare_item),
        ListEntry::InnerList(_) => None,
    };
    let flag = || match value {
        Some(BareItem::Boolean(b)) => Some(*b),
        _ => None,
    };
    let secs = || match value {
        Some(BareItem::Integer(n)) => u64::try_from(i64::from(*n)).ok().map(|n| n.min(MAX_DELTA)),
        _ => None,
    };
    match name {
        "max-age" => cc.max_age = Some(secs()?),
        "s-maxage" => cc.s_maxage = Some(secs()?),
        "stale-while-revalidate" => cc.swr = Some(secs()?),
        "stale-if-error" => cc.sie = Some(secs()?),
        "no-store" => cc.no_store = flag()?,
        "public" => cc.public = flag()?,
        "must-revalidate" => cc.must_revalidate = flag()?,
        "proxy-revalidate" => cc.proxy_revalidate = flag()?,
        "must-understand" => cc.must_understand = flag()?,
        "no-cache" | "private" => {
            // Unqualified (`true`), or the fields it names, as a string.
            let unqualified = match value {
                Some(BareItem::Boolean(b)) => *b,
                Some(BareItem::String(s)) => {
                    let named: Vec<String> = s
                        .as_str()
                        .split(',')
                        .map(|f| f.trim().to_ascii_lowercase())
                        .filter(|f| !f.is_empty())
                        .collect();
                    let all = named.is_empty();
                    cc.unshared_fields.extend(named);
                    all
                }
                _ => return None,
            };
            if unqualified && name == "private" {
                cc.private = true;
            } else if unqualified {
                cc.no_cache = true;
            }
        }
        _ => {}
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDN: HeaderName = HeaderName::from_static("cdn-cache-control");

    fn cc(pairs: &[(&'static str, &'static str)]) -> CacheControl {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        let other = HeaderName::from_static("other-cache-control");
        CacheControl::of_response(&h, &[other, CDN])
    }

    #[test]
    fn rfc9213_2_1_the_first_valid_targeted_field_replaces_cache_control() {
        let c = cc(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ]);
        assert!(c.targeted && !c.no_store);
        assert_eq!(c.max_age, Some(60));
        let c = cc(&[
            ("cdn-cache-control", "max-age=60"),
            ("other-cache-control", "max-age=5, stale-if-error=9"),
        ]);
        assert_eq!(
            (c.max_age, c.sie),
            (Some(5), Some(9)),
            "the target list's order"
        );
        let c = cc(&[
            ("cdn-cache-control", "max-age=60"),
            ("cdn-cache-control", "private"),
        ]);
        assert!(c.private && c.max_age == Some(60), "lines are one field");
        let c = cc(&[("cache-control", "max-age=60")]);
        assert!(
            !c.targeted && c.max_age == Some(60),
            "absent: Cache-Control"
        );
    }

    #[test]
    fn rfc9213_2_2_an_invalid_targeted_field_is_ignored() {
        for invalid in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=-1",
            "max-age =100",
            "max-age= 100",
            "MaX-aGe=100",
            "no-store=1",
            "private=(a b)",
            "",
        ] {
            let c = cc(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", invalid),
            ]);
            assert!(!c.targeted && c.no_store, "{invalid:?}");
        }
        let c = cc(&[(
            "cdn-cache-control",
            "foobar, max-age=99999999999, s-maxage=5;x=1",
        )]);
        assert_eq!((c.max_age, c.s_maxage), (Some(MAX_DELTA), Some(5)));
        let c = cc(&[(
            "cdn-cache-control",
            "no-cache=\"set-cookie, X-A\", no-store=?0",
        )]);
        assert_eq!(c.unshared_fields, ["set-cookie", "x-a"]);
        assert!(!c.no_cache && !c.no_store);
    }
}
