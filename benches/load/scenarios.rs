//! The scenarios: one handler, with and without each layer.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::{MemoryStore, RedisStore};

use crate::client::RequestSpec;

pub struct Scenario {
    pub name: &'static str,
    pub router: Router,
    pub spec: RequestSpec,
}

async fn handler() -> &'static str {
    "ok"
}

/// 64 distinct clients, spread over the connections.
fn api_keys() -> Vec<Vec<(String, String)>> {
    (0..64)
        .map(|i| vec![("x-api-key".to_owned(), format!("client-{i}"))])
        .collect()
}

fn get_spec() -> RequestSpec {
    RequestSpec {
        method: http::Method::GET,
        path: "/".into(),
        headers: api_keys(),
    }
}

fn limited(store: impl RateLimitStore, limit: u64, scope: &str) -> Router {
    let layer = RateLimitLayer::builder(store)
        .policy(Policy::gcra(limit, Duration::from_secs(3600)))
        .key(Header::new("x-api-key"))
        .scope(scope)
        .build()
        .unwrap();
    Router::new().route("/", get(handler)).layer(layer)
}

/// tower_governor's key: the same `x-api-key` header our layer keys on.
#[derive(Clone)]
struct ApiKey;

impl tower_governor::key_extractor::KeyExtractor for ApiKey {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, tower_governor::GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// tower_governor (governor's GCRA, in process): the in-memory peer.
fn governor() -> Router {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(ApiKey)
        .finish()
        .unwrap();
    Router::new()
        .route("/", get(handler))
        .layer(tower_governor::GovernorLayer::new(config))
}

pub async fn all(redis_url: &str) -> Vec<Scenario> {
    let redis = RedisStore::builder(redis_url)
        .prefix("bench")
        .deadline(Duration::from_millis(200))
        .ping_on_connect(true)
        .connect()
        .await
        .expect("bench redis");
    vec![
        Scenario {
            name: "bare",
            router: Router::new().route("/", get(handler)),
            spec: get_spec(),
        },
        Scenario {
            name: "tower_governor (peer), allowed",
            router: governor(),
            spec: get_spec(),
        },
        Scenario {
            name: "rate limit, memory, allowed",
            router: limited(MemoryStore::new(), 1_000_000_000, "mem"),
            spec: get_spec(),
        },
        Scenario {
            name: "rate limit, redis, allowed",
            router: limited(redis.clone(), 1_000_000_000, "allowed"),
            spec: get_spec(),
        },
        Scenario {
            name: "rate limit, redis, denied",
            router: limited(redis, 1, "denied"),
            spec: get_spec(),
        },
    ]
}
