//! The layer's settings: what the builder sets, their defaults, and the
//! checks `build()` runs so that no value can overflow at request time.

use std::time::Duration;

use http::HeaderName;

use super::freshness::Heuristic;
use super::key::KeyRules;
use super::policy::Rules;
use super::tags::TagRules;
use crate::error::ConfigError;

/// How request `Cache-Control` directives are treated.
///
/// A client must not be able to force origin load: by default they are
/// ignored, as most CDNs do. With [`Honor`](Self::Honor) (RFC 9111
/// §5.2.1), `no-cache`, `max-age` and `min-fresh` revalidate an entry
/// that does not satisfy them — but only once it is at least `min_age`
/// old, and concurrent forced requests still collapse into one origin
/// call; so one key costs the origin at most one call per `min_age`
/// however hard clients push. `max-stale` takes a stale entry (unless it
/// says `must-revalidate`, `proxy-revalidate` or `s-maxage`), `no-store`
/// keeps the request's response out of the cache, and `only-if-cached`
/// answers from the cache or with 504, without asking the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RequestDirectives {
    /// Request directives change nothing (default).
    #[default]
    Ignore,
    /// Honour the request directives, with a floor on revalidation.
    Honor {
        /// Entries younger than this are served even to a `no-cache` request.
        min_age: Duration,
    },
}

/// What the layer does when the store fails or misses its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// A failed lookup is a miss: the origin serves (default). An outage of
    /// the cache is not an outage of the service.
    #[default]
    Open,
    /// A failed lookup is answered 503 with `Retry-After`, without calling
    /// the origin: for origins that must be shielded from uncached load.
    Closed,
}

/// Request headers that can change what an origin generates (its links,
/// redirects, method) but are not in the key: web-cache-poisoning vectors.
pub(crate) const UNKEYED: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The longest TTL accepted (ten years); `get_or_load` clamps to it.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The longest lock or wait accepted (an hour).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The in-process tier's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct L1Config {
    pub(crate) max_entries: usize,
    pub(crate) max_age: Duration,
}

/// Everything the builder sets.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) rules: Rules,
    pub(crate) key: KeyRules,
    pub(crate) max_body: usize,
    pub(crate) max_variants: u32,
    pub(crate) lock_ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) name: String,
    pub(crate) unkeyed: Vec<HeaderName>,
    pub(crate) directives: RequestDirectives,
    pub(crate) invalidate_unsafe: bool,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) l1: Option<L1Config>,
    /// Bytes the in-process tier holds at most.
    pub(crate) l1_bytes: usize,
    pub(crate) tags: TagRules,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rules: Rules {
                default_ttl: None,
                negative_ttl: None,
                jitter: 0.1,
                keep_stale: Duration::from_secs(60),
                strip_set_cookie: false,
                cache_authorized: false,
                share_cookie_requests: false,
                heuristic: Some(Heuristic::default()),
                stale_if_unreachable: Duration::ZERO,
                targeted: Vec::new(),
            },
            key: KeyRules {
                scope: "default".into(),
                host: true,
                ..KeyRules::default()
            },
            max_body: 1 << 20,
            max_variants: 16,
            lock_ttl: Duration::from_secs(5),
            wait: Duration::from_secs(3),
            name: "trl".into(),
            unkeyed: UNKEYED.iter().map(|n| HeaderName::from_static(n)).collect(),
            directives: RequestDirectives::default(),
            invalidate_unsafe: true,
            on_failure: FailurePolicy::default(),
            l1: None,
            l1_bytes: 16 << 20,
            tags: TagRules::default(),
        }
    }
}

/// `d` within `[min, max]`, or an error naming the setting.
fn within(what: &str, d: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if d < min || d > max {
        return Err(ConfigError::new(format!(
            "{what} must be within {min:?} and {max:?} (got {d:?})"
        )));
    }
    Ok(())
}

impl Config {
    /// Checks every value and normalises the key headers.
    pub(crate) fn check(&mut self) -> Result<(), ConfigError> {
        crate::error::check_name("scope", &self.key.scope)?;
        let ms = Duration::from_millis(1);
        let r = &self.rules;
        if let Some(ttl) = r.default_ttl {
            within("default_ttl", ttl, ms, MAX_TTL)?;
        }
        if let Some(ttl) = r.negative_ttl {
            within("negative_ttl", ttl, ms, MAX_TTL)?;
        }
        within("keep_stale", r.keep_stale, Duration::ZERO, MAX_TTL)?;
        within(
            "stale_if_unreachable",
            r.stale_if_unreachable,
            Duration::ZERO,
            MAX_TTL,
        )?;
        within("lock_ttl", self.lock_ttl, ms, MAX_WAIT)?;
        within("max_wait", self.wait, Duration::ZERO, MAX_WAIT)?;
        if let RequestDirectives::Honor { min_age } = self.directives {
            within(
                "request_directives min_age",
                min_age,
                Duration::ZERO,
                MAX_TTL,
            )?;
        }
        if let Some(h) = r.heuristic {
            within("heuristic_freshness max", h.max, Duration::ZERO, MAX_TTL)?;
            if !(0.0..=1.0).contains(&h.fraction) {
                return Err(ConfigError::new(
                    "heuristic_freshness fraction must be within 0 and 1",
                ));
            }
        }
        if let Some(l1) = self.l1 {
            within("l1 max_age", l1.max_age, Duration::ZERO, MAX_TTL)?;
        }
        if !(0.0..1.0).contains(&r.jitter) {
            return Err(ConfigError::new("jitter must be a fraction in [0, 1)"));
        }
        if self.max_body > u32::MAX as usize {
            return Err(ConfigError::new("max_body_size must be at most 4 GiB"));
        }
        if self.max_variants == 0 {
            return Err(ConfigError::new("max_variants must be at least 1"));
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"_.-:/".contains(&b);
        if !self.name.bytes().all(token)
            || !self.name.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(ConfigError::new(format!(
                "cache name {:?} must be a structured-field token",
                self.name
            )));
        }
        self.rules.heuristic = self
            .rules
            .heuristic
            .filter(|h| h.fraction > 0.0 && !h.max.is_zero());
        self.key.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self.key.headers.dedup();
        let bytes = self.l1_bytes;
        self.l1 = self
            .l1
            .filter(|l1| l1.max_entries > 0 && bytes > 0 && !l1.max_age.is_zero());
        Ok(())
    }
}

/// A TTL from application code (`get_or_load`), clamped to `[1 ms, MAX_TTL]`.
pub(crate) fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_millis(1), MAX_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut Config)) -> Result<(), String> {
        let mut c = Config::default();
        f(&mut c);
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn every_duration_and_size_is_checked() {
        assert!(check(|_| {}).is_ok());
        let max = Duration::MAX;
        type Set = Box<dyn FnOnce(&mut Config)>;
        let bad: Vec<(&str, Set)> = vec![
            ("max_wait", Box::new(move |c| c.wait = max)),
            ("lock_ttl", Box::new(move |c| c.lock_ttl = max)),
            ("lock_ttl", Box::new(|c| c.lock_ttl = Duration::ZERO)),
            (
                "default_ttl",
                Box::new(|c| c.rules.default_ttl = Some(Duration::ZERO)),
            ),
            (
                "default_ttl",
                Box::new(move |c| c.rules.default_ttl = Some(max)),
            ),
            (
                "negative_ttl",
                Box::new(|c| c.rules.negative_ttl = Some(Duration::ZERO)),
            ),
            (
                "negative_ttl",
                Box::new(move |c| c.rules.negative_ttl = Some(max)),
            ),
            ("keep_stale", Box::new(move |c| c.rules.keep_stale = max)),
            (
                "stale_if_unreachable",
                Box::new(move |c| c.rules.stale_if_unreachable = max),
            ),
            (
                "min_age",
                Box::new(move |c| c.directives = RequestDirectives::Honor { min_age: max }),
            ),
            (
                "l1 max_age",
                Box::new(move |c| {
                    c.l1 = Some(L1Config {
                        max_entries: 1,
                        max_age: max,
                    })
                }),
            ),
            ("jitter", Box::new(|c| c.rules.jitter = f64::NAN)),
            (
                "heuristic_freshness fraction",
                Box::new(|c| {
                    c.rules.heuristic = Some(Heuristic {
                        fraction: 1.5,
                        max: Duration::ZERO,
                    })
                }),
            ),
            (
                "heuristic_freshness max",
                Box::new(move |c| c.rules.heuristic = Some(Heuristic { fraction: 0.1, max })),
            ),
            ("jitter", Box::new(|c| c.rules.jitter = 1.0)),
            ("max_body_size", Box::new(|c| c.max_body = usize::MAX)),
            ("max_variants", Box::new(|c| c.max_variants = 0)),
            ("cache name", Box::new(|c| c.name = "1x".into())),
            ("cache name", Box::new(|c| c.name = String::new())),
            ("scope", Box::new(|c| c.key.scope = "a b".into())),
        ];
        for (what, f) in bad {
            let err = check(f).expect_err(what);
            assert!(err.contains(what), "{what}: {err}");
        }
        assert!(
            check(|c| c.wait = Duration::ZERO).is_ok(),
            "no waiting at all"
        );
        assert!(check(|c| c.rules.default_ttl = Some(MAX_TTL)).is_ok());
    }

    #[test]
    fn application_ttls_are_clamped() {
        assert_eq!(clamp_ttl(Duration::MAX), MAX_TTL);
        assert_eq!(clamp_ttl(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(clamp_ttl(Duration::from_secs(5)), Duration::from_secs(5));
    }
}
