//! The scenarios: one trivial handler, bare and behind each layer, on the
//! memory store and on Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
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

fn app() -> Router {
    Router::new()
        .route("/", get(handler).post(handler))
        .route("/items/{id}", get(handler))
}

/// 64 distinct clients, spread over the connections.
fn client(conn: usize) -> String {
    format!("client-{}", conn % 64)
}

fn request(method: &str, path: String, conn: usize) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", client(conn))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn get_root() -> RequestSpec {
    Arc::new(|conn, _| request("GET", "/".into(), conn))
}

/// POSTs with a key never used before (unique across the warm-up and the run).
fn post_first_run() -> RequestSpec {
    static N: AtomicU64 = AtomicU64::new(0);
    Arc::new(|conn, _| {
        let mut r = request("POST", "/".into(), conn);
        let key = format!("\"k{}\"", N.fetch_add(1, Ordering::Relaxed));
        r.headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
        r
    })
}

/// POSTs repeating one key per connection: all but the first are replays.
fn post_replay() -> RequestSpec {
    Arc::new(|conn, _| {
        let mut r = request("POST", "/".into(), conn);
        let key = format!("\"replay-{conn}\"");
        r.headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
        r
    })
}

fn get_hit() -> RequestSpec {
    Arc::new(|conn, _| request("GET", "/items/1".into(), conn))
}

/// GETs of URLs never requested before.
fn get_miss() -> RequestSpec {
    static N: AtomicU64 = AtomicU64::new(0);
    Arc::new(|conn, _| {
        let id = N.fetch_add(1, Ordering::Relaxed);
        request("GET", format!("/items/{id}"), conn)
    })
}

fn rate_limit(store: impl RateLimitStore, limit: u64, scope: &str) -> RateLimitLayer {
    RateLimitLayer::builder(store)
        .policy(Policy::gcra(limit, Duration::from_secs(3600)))
        .key(Header::new("x-api-key"))
        .scope(scope)
        .build()
        .unwrap()
}

fn idempotency(store: impl IdempotencyStore, scope: &str) -> IdempotencyLayer {
    IdempotencyLayer::builder(store)
        .principal(Header::new("x-api-key"))
        .scope(scope)
        .build()
        .unwrap()
}

fn cache(store: impl CacheStore, scope: &str) -> ResponseCacheLayer {
    ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(600))
        .scope(scope)
        .build()
        .unwrap()
}

/// The cache with its in-process L1 tier (kept coherent by pub/sub).
fn cache_l1(store: impl CacheStore, scope: &str) -> ResponseCacheLayer {
    ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(600))
        .l1(10_000, Duration::from_secs(60))
        .scope(scope)
        .build()
        .unwrap()
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
    app().layer(tower_governor::GovernorLayer::new(config))
}

fn stacked<St>(store: St, scope: &str) -> Router
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    app().layer(
        ServiceBuilder::new()
            .layer(rate_limit(store.clone(), 1_000_000_000, scope))
            .layer(idempotency(store.clone(), scope))
            .layer(cache(store, scope)),
    )
}

pub async fn all(redis_url: &str) -> Vec<Scenario> {
    let redis = RedisStore::builder(redis_url)
        .prefix("bench")
        .deadline(Duration::from_millis(500))
        .ping_on_connect(true)
        .connect()
        .await
        .expect("bench redis");
    // A fresh memory store per scenario: one scenario's records (a million
    // first-run idempotency keys, say) must not weigh on the next.
    let mem = MemoryStore::new;
    let big = 1_000_000_000;
    vec![
        Scenario {
            name: "bare",
            router: app(),
            spec: get_root(),
        },
        Scenario {
            name: "tower_governor (peer, memory), allowed",
            router: governor(),
            spec: get_root(),
        },
        Scenario {
            name: "rate limit, memory, allowed",
            router: app().layer(rate_limit(mem(), big, "m")),
            spec: get_root(),
        },
        Scenario {
            name: "rate limit, redis, allowed",
            router: app().layer(rate_limit(redis.clone(), big, "a")),
            spec: get_root(),
        },
        Scenario {
            name: "rate limit, redis, denied",
            router: app().layer(rate_limit(redis.clone(), 1, "d")),
            spec: get_root(),
        },
        Scenario {
            name: "idempotency, memory, first run",
            router: app().layer(idempotency(mem(), "m1")),
            spec: post_first_run(),
        },
        Scenario {
            name: "idempotency, memory, replay",
            router: app().layer(idempotency(mem(), "m2")),
            spec: post_replay(),
        },
        Scenario {
            name: "idempotency, redis, first run",
            router: app().layer(idempotency(redis.clone(), "r1")),
            spec: post_first_run(),
        },
        Scenario {
            name: "idempotency, redis, replay",
            router: app().layer(idempotency(redis.clone(), "r2")),
            spec: post_replay(),
        },
        Scenario {
            name: "cache, memory, hit",
            router: app().layer(cache(mem(), "m1")),
            spec: get_hit(),
        },
        Scenario {
            name: "cache, memory, miss",
            router: app().layer(cache(mem(), "m2")),
            spec: get_miss(),
        },
        Scenario {
            name: "cache, redis, hit",
            router: app().layer(cache(redis.clone(), "r1")),
            spec: get_hit(),
        },
        Scenario {
            name: "cache, redis + L1 tier, hit",
            router: app().layer(cache_l1(redis.clone(), "l1")),
            spec: get_hit(),
        },
        Scenario {
            name: "cache, redis, miss",
            router: app().layer(cache(redis.clone(), "r2")),
            spec: get_miss(),
        },
        Scenario {
            name: "all three, memory (GET hit)",
            router: stacked(mem(), "s"),
            spec: get_hit(),
        },
        Scenario {
            name: "all three, redis (GET hit)",
            router: stacked(redis, "s"),
            spec: get_hit(),
        },
    ]
}
