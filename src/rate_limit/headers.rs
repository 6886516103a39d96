//! The rate-limit response fields: `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers, structured fields via `sfv`),
//! `Retry-After`, and the optional legacy `X-RateLimit-*`.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sfv::{key_ref, Integer, ItemSerializer, ListSerializer, StringRef};

use super::decision::{PolicyMeta, RateLimitDecision};

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up: a client that waits this long is not early.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn int(v: u64) -> Integer {
    Integer::try_from(v).unwrap_or(Integer::MAX)
}

fn name(n: &str) -> &StringRef {
    // Policy names are validated to [A-Za-z0-9_.-] at build time.
    StringRef::from_str(n).unwrap_or(StringRef::constant("policy"))
}

/// `"name";q=limit;w=window` for each policy, rendered once per layer.
pub(crate) fn render_policy(meta: &[PolicyMeta]) -> Option<HeaderValue> {
    let mut ser = ListSerializer::new();
    for m in meta {
        _ = ser
            .bare_item(name(&m.name))
            .parameter(key_ref("q"), int(m.limit))
            .parameter(key_ref("w"), int(ceil_secs(m.window)));
    }
    HeaderValue::try_from(ser.finish()?).ok()
}

/// Each policy's name as a serialized sf-string, rendered once per layer:
/// per response only the two integers are written.
pub(crate) fn render_names(meta: &[PolicyMeta]) -> Vec<String> {
    meta.iter()
        .map(|m| ItemSerializer::new().bare_item(name(&m.name)).finish())
        .collect()
}

/// `"name";r=remaining;t=reset` for each policy: a list of sf-strings with
/// two integer parameters (RFC 9651 §4.1.1, §4.1.4).
fn render_state(names: &[String], d: &RateLimitDecision) -> Option<HeaderValue> {
    // Each member: its name, `;r=` and `;t=` with up to 20 digits each, `, `.
    let mut out = Vec::with_capacity(names.iter().map(|n| n.len() + 48).sum());
    for (p, item) in d.policies.iter().zip(names) {
        if !out.is_empty() {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(item.as_bytes());
        // Both fit an sf-integer (`int` caps at its maximum).
        out.extend_from_slice(b";r=");
        crate::decimal::push_i64(&mut out, i64::from(int(p.remaining)));
        out.extend_from_slice(b";t=");
        crate::decimal::push_i64(&mut out, i64::from(int(ceil_secs(p.reset))));
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

/// Which fields a layer writes.
#[derive(Debug, Clone)]
pub(crate) struct HeaderConfig {
    pub(crate) policy: Option<HeaderValue>,
    /// [`render_names`] of the layer's policies, in decision order.
    pub(crate) names: Vec<String>,
    pub(crate) on_allowed: bool,
    pub(crate) legacy: bool,
}

impl HeaderConfig {
    /// Writes the fields of `d`; `rejected` adds `Retry-After`.
    ///
    /// On this layer's own rejection, fields the response already has (a
    /// custom rejection may set them) are kept. On a response passing
    /// through (admitted here), this layer's policies join the lists that
    /// inner layers wrote, so stacked limiters all show (the fields are
    /// structured lists, one member per policy).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, d: &RateLimitDecision, rejected: bool) {
        if !rejected && !self.on_allowed || d.policies.is_empty() {
            return;
        }
        if let Some(policy) = &self.policy {
            put(headers, &RATELIMIT_POLICY, policy.clone(), !rejected);
        }
        if let Some(state) = render_state(&self.names, d) {
            put(headers, &RATELIMIT, state, !rejected);
        }
        if rejected {
            if let Some(retry) = d.retry_after() {
                headers
                    .entry(RETRY_AFTER)
                    .or_insert_with(|| HeaderValue::from(ceil_secs(retry)));
            }
        }
        if self.legacy {
            // The tightest policy of every stacked layer speaks for the
            // legacy fields: an inner layer's tighter one is kept.
            let tighter_inside = |remaining: u64| {
                headers
                    .get(&X_REMAINING)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .is_some_and(|inner| inner <= remaining)
            };
            if let Some(p) = d.policies.iter().min_by_key(|p| p.remaining) {
                if !tighter_inside(p.remaining) {
                    headers.insert(&X_LIMIT, HeaderValue::from(p.limit));
                    headers.insert(&X_REMAINING, HeaderValue::from(p.remaining));
                    headers.insert(&X_RESET, HeaderValue::from(ceil_secs(p.reset)));
                }
            }
        }
    }
}

/// Sets `name` to `value`; when `join`, after the list members already there.
fn put(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue, join: bool) {
    match headers.entry(name) {
        http::header::Entry::Vacant(v) => {
            v.insert(value);
        }
        http::header::Entry::Occupied(mut o) if join => {
            let mut joined = o.get().as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                o.insert(v);
            }
        }
        http::header::Entry::Occupied(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::decision::{DecisionSource, PolicyDecision};
    use std::sync::Arc;

    fn meta() -> Vec<PolicyMeta> {
        vec![
            PolicyMeta {
                name: "burst".into(),
                limit: 100,
                window: Duration::from_secs(60),
            },
            PolicyMeta {
                name: "daily".into(),
                limit: 1000,
                window: Duration::from_millis(86_400_500),
            },
        ]
    }

    #[test]
    fn policy_field_is_a_structured_list() {
        let v = render_policy(&meta()).unwrap();
        assert_eq!(v, r#""burst";q=100;w=60, "daily";q=1000;w=86401"#);
        let parsed: sfv::List = sfv::Parser::new(v.as_bytes()).parse().unwrap();
        assert_eq!(parsed.len(), 2);
    }

    #[test]
    fn state_and_retry_after_on_rejection() {
        let d = RateLimitDecision {
            allowed: false,
            source: DecisionSource::Store,
            policies: vec![PolicyDecision {
                name: Arc::from("burst"),
                limit: 100,
                window: Duration::from_secs(60),
                remaining: 0,
                reset: Duration::from_millis(11_200),
                retry_after: Some(Duration::from_millis(1_500)),
            }],
        };
        let cfg = HeaderConfig {
            policy: render_policy(&meta()[..1]),
            names: render_names(&meta()[..1]),
            on_allowed: false,
            legacy: true,
        };
        let mut h = HeaderMap::new();
        cfg.apply(&mut h, &d, true);
        assert_eq!(h[&RATELIMIT], r#""burst";r=0;t=12"#);
        let parsed: sfv::List = sfv::Parser::new(h[&RATELIMIT].as_bytes()).parse().unwrap();
        assert_eq!(parsed.len(), 1, "a valid structured list");
        assert_eq!(h[RETRY_AFTER], "2");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        let mut allowed = HeaderMap::new();
        cfg.apply(&mut allowed, &d, false);
        assert!(
            allowed.is_empty(),
            "headers on allowed responses are switched off"
        );
    }

    #[test]
    fn an_outer_layer_joins_the_lists_of_an_inner_one() {
        let decision = |name: &str, remaining| RateLimitDecision {
            allowed: true,
            source: DecisionSource::Store,
            policies: vec![PolicyDecision {
                name: Arc::from(name),
                limit: 100,
                window: Duration::from_secs(60),
                remaining,
                reset: Duration::from_secs(30),
                retry_after: None,
            }],
        };
        let layer = |m: &[PolicyMeta]| HeaderConfig {
            policy: render_policy(m),
            names: render_names(m),
            on_allowed: true,
            legacy: true,
        };
        let (burst, daily) = (&meta()[..1], &meta()[1..]);
        let mut h = HeaderMap::new();
        layer(burst).apply(&mut h, &decision("burst", 3), false); // inner
        layer(daily).apply(&mut h, &decision("daily", 900), false); // outer
        assert_eq!(
            h[&RATELIMIT_POLICY],
            r#""burst";q=100;w=60, "daily";q=1000;w=86401"#
        );
        assert_eq!(h[&RATELIMIT], r#""burst";r=3;t=30, "daily";r=900;t=30"#);
        let parsed: sfv::List = sfv::Parser::new(h[&RATELIMIT].as_bytes()).parse().unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(h["x-ratelimit-remaining"], "3", "the tighter inner policy");
    }
}
