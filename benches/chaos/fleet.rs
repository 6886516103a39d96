//! Three instances of one service, each with its own store object and its
//! own layers, sharing the "database" behind the handlers (as a fleet
//! shares its real database) and one Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceExt;
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::ConfigError;

/// Rate limit of every client: `LIMIT` per `PERIOD` (GCRA, burst `LIMIT`).
pub const LIMIT: u64 = 10;
pub const PERIOD: Duration = Duration::from_secs(1);

/// Work an order handler does after committing the order (a receipt):
/// clients that hang up do so in the middle of it.
pub const ORDER_WORK: Duration = Duration::from_millis(50);

/// What the handlers of every instance share.
#[derive(Default)]
pub struct World {
    /// Executions of the order handler per idempotency key.
    executions: Mutex<HashMap<String, u32>>,
    /// Each item's version: bumped by a PUT, read by a GET's origin.
    versions: Mutex<HashMap<String, u64>>,
    /// Each item's highest version a client has seen acknowledged.
    acked: Mutex<HashMap<String, u64>>,
}

impl World {
    /// Keys of phase `phase` whose handler ran more than once: all of
    /// them, and those whose client had hung up (named `p{phase}-h…`).
    pub fn double_runs(&self, phase: usize) -> (usize, usize) {
        let executions = self.executions.lock().unwrap();
        let twice = |prefix: &str| {
            executions
                .iter()
                .filter(|(k, n)| k.starts_with(prefix) && **n > 1)
                .count()
        };
        let hung_up = twice(&format!("p{phase}-h"));
        (hung_up + twice(&format!("p{phase}-k")), hung_up)
    }

    pub fn acked(&self, item: &str) -> u64 {
        self.acked.lock().unwrap().get(item).copied().unwrap_or(0)
    }

    pub fn ack(&self, item: &str, version: u64) {
        let mut acked = self.acked.lock().unwrap();
        let v = acked.entry(item.to_owned()).or_default();
        *v = (*v).max(version);
    }
}

#[derive(Clone)]
pub struct Fleet {
    instances: Arc<[Router]>,
}

impl Fleet {
    pub fn new<St>(stores: Vec<St>, world: &Arc<World>) -> Result<Self, ConfigError>
    where
        St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
    {
        let instances = stores
            .into_iter()
            .map(|s| instance(s, world.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            instances: instances.into(),
        })
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Serves `req` on instance `i`, in process: dropping the future is a
    /// client hanging up.
    pub async fn call(&self, i: usize, req: Request<Body>) -> Response<Body> {
        let router = self.instances[i % self.instances.len()].clone();
        match router.oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        }
    }
}

/// One instance: the three layers with their defaults, one per route.
fn instance<St>(store: St, world: Arc<World>) -> Result<Router, ConfigError>
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    let limit = RateLimitLayer::builder(store.clone())
        .policy(Policy::gcra(LIMIT, PERIOD).named("chaos"))
        .key(Header::new("x-api-key"))
        .scope("chaos")
        .build()?;
    let idempotent = IdempotencyLayer::builder(store.clone()).build()?;
    let cache = ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(30))
        .build()?;
    Ok(Router::new()
        .route("/limited", get(|| async { "ok" }).route_layer(limit))
        .route("/orders", post(order).route_layer(idempotent))
        .route("/items/{id}", get(item).put(put_item).route_layer(cache))
        .with_state(world))
}

/// Commits the order (counts an execution of its key), then works on.
async fn order(State(world): State<Arc<World>>, headers: HeaderMap) -> (StatusCode, String) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    let n = {
        let mut executions = world.executions.lock().unwrap();
        let n = executions.entry(key).or_default();
        *n += 1;
        *n
    };
    tokio::time::sleep(ORDER_WORK).await;
    (StatusCode::CREATED, format!("execution {n}"))
}

/// The item's current version, as the origin generates it.
async fn item(State(world): State<Arc<World>>, Path(id): Path<String>) -> String {
    let versions = world.versions.lock().unwrap();
    versions.get(&id).copied().unwrap_or(0).to_string()
}

/// Bumps the item's version and answers it.
async fn put_item(State(world): State<Arc<World>>, Path(id): Path<String>) -> String {
    let mut versions = world.versions.lock().unwrap();
    let v = versions.entry(id).or_default();
    *v += 1;
    v.to_string()
}
