//! Entry points for the criterion micro-benchmarks (`benches/micro.rs`):
//! the hot pure code of each layer. Not part of the API.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};

use crate::cache::entry::{decode, encode, Meta};
use crate::idempotency::Fingerprint;
use crate::rate_limit::headers::{render_names, render_policy, HeaderConfig};
use crate::rate_limit::{DecisionSource, PolicyDecision, PolicyMeta, RateLimitDecision};

/// A rejection's rate-limit fields for `n` policies, configured once.
#[derive(Debug)]
pub struct RateLimitFields {
    cfg: HeaderConfig,
    decision: RateLimitDecision,
}

impl RateLimitFields {
    /// Fields of a layer with `n` policies and a decision that denied.
    pub fn new(n: usize) -> Self {
        let (cfg, names) = header_config(n);
        Self {
            cfg,
            decision: denial(&names),
        }
    }

    /// Writes `RateLimit-Policy`, `RateLimit` and `Retry-After` onto `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.cfg.apply(headers, &self.decision, true);
    }
}

/// A header configuration with `n` policies.
fn header_config(n: usize) -> (HeaderConfig, Vec<String>) {
    let meta: Vec<PolicyMeta> = (0..n)
        .map(|i| PolicyMeta {
            name: format!("policy-{i}").into(),
            limit: 100,
            window: Duration::from_secs(60),
        })
        .collect();
    let cfg = HeaderConfig {
        policy: render_policy(&meta),
        names: render_names(&meta),
        on_allowed: true,
        legacy: false,
    };
    (cfg, meta.iter().map(|m| m.name.to_string()).collect())
}

fn denial(names: &[String]) -> RateLimitDecision {
    RateLimitDecision {
        allowed: false,
        source: DecisionSource::Store,
        policies: names
            .iter()
            .map(|name| PolicyDecision {
                name: name.as_str().into(),
                limit: 100,
                window: Duration::from_secs(60),
                remaining: 0,
                reset: Duration::from_millis(12_345),
                retry_after: Some(Duration::from_millis(1_500)),
            })
            .collect(),
    }
}

/// The idempotency fingerprint of a request with this body.
pub fn idempotency_fingerprint(req: &Request<()>, body: &Bytes) -> [u8; 32] {
    let (parts, ()) = req.clone().into_parts();
    Fingerprint::new(&parts, body).0
}

/// Encodes a cache entry of these headers and body.
pub fn cache_encode(headers: &HeaderMap, body: &Bytes) -> Bytes {
    let meta = Meta {
        status: 200,
        key_tag: 42,
        stored_ms: 1_700_000_000_000,
        fresh_ms: 30_000,
        age_s: 0,
        swr_s: 0,
        sie_s: 0,
        must_revalidate: false,
        s_maxage: false,
    };
    encode(&meta, headers, std::slice::from_ref(body))
}

/// Decodes a cache entry; returns its body length.
pub fn cache_decode(raw: Bytes) -> usize {
    decode(raw).map_or(0, |e| e.body.len())
}

/// A header map like a typical JSON API response.
pub fn sample_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("cache-control", HeaderValue::from_static("max-age=60"));
    h.insert("etag", HeaderValue::from_static("\"33a64df551425fcc\""));
    h.insert("vary", HeaderValue::from_static("accept-encoding"));
    h
}
