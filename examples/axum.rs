//! axum: the three layers on one router, per route with `route_layer`, and
//! stacked on a whole router with `tower::ServiceBuilder`.
//!
//! ```text
//! cargo run --example axum                       # memory store, 127.0.0.1:3002
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum
//!
//! curl -si localhost:3002/items/1 -H 'x-api-key: k'                  # miss, then hit (Cache-Status)
//! curl -si localhost:3002/items/1 -XPUT -H 'x-api-key: k' -d v2      # invalidates the cached GET
//! curl -si localhost:3002/orders -H 'Idempotency-Key: "o1"' -d '{}'  # twice: one order, replayed
//! curl -si localhost:3002/v2/items/1                                 # the stacked router (per-IP limit)
//! ```
//!
//! # Which order
//!
//! Outermost first: **rate limit → idempotency → cache → handler**.
//! - The rate limit goes outside, so that a client over its quota costs
//!   nothing else (no body buffering, no idempotency record, no cache
//!   lookup), and so that retries and replays count against the quota as
//!   Stripe counts them. Put the cache outside the rate limit instead if
//!   cache hits should be free.
//! - Idempotency wraps the cache: it only acts on POST/PATCH, the cache only
//!   stores GETs, and a replayed write must not be re-applied — but a
//!   successful write passing through the cache still invalidates the GETs
//!   of its URI (a replay invalidates again, which is harmless).
//! - No `HandleErrorLayer`: rejections and store failures are responses.
//!
//! Per route, `route_layer` applies a layer to the routes that match only
//! (unmatched paths stay 404, not 429); `Router::layer` wraps everything,
//! fallback included. A layer inside `Router::nest` sees the path with the
//! nest prefix stripped: give a nested cache its own `scope` (or layer the
//! outer router) so that `/v2/items/1` and `/items/1` are not one entry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
use tower_redis_layers::key::{Header, KeyExtractorExt, PeerIp};
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::{MemoryStore, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Default)]
struct Db {
    orders: Arc<AtomicU64>,
    versions: Arc<Mutex<std::collections::HashMap<String, String>>>,
}

async fn show(State(db): State<Db>, Path(id): Path<String>) -> Json<Value> {
    let version = db.versions.lock().unwrap().get(&id).cloned();
    Json(json!({"id": id, "version": version.unwrap_or_else(|| "v1".into())}))
}

async fn update(State(db): State<Db>, Path(id): Path<String>, body: String) -> StatusCode {
    db.versions.lock().unwrap().insert(id, body);
    StatusCode::NO_CONTENT
}

async fn order(State(db): State<Db>, body: String) -> (StatusCode, Json<Value>) {
    let n = db.orders.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, Json(json!({"order": n, "body": body})))
}

fn peer() -> PeerIp {
    // axum's ConnectInfo, from into_make_service_with_connect_info.
    PeerIp::from_extension(|c: &ConnectInfo<SocketAddr>| c.0.ip())
}

fn app<St>(store: St) -> Result<Router, BoxError>
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    let db = Db::default();
    let limit = RateLimitLayer::builder(store.clone())
        .policy(Policy::gcra(20, Duration::from_secs(10)).named("api"))
        .key(Header::new("x-api-key").or(peer()))
        .scope("api")
        .build()?;
    let idempotent = IdempotencyLayer::builder(store.clone())
        .principal(Header::new("x-api-key").or(peer()))
        .build()?;
    let cache = ResponseCacheLayer::builder(store.clone())
        .default_ttl(Duration::from_secs(30))
        .build()?;

    // Per route: each route gets the layers it needs, in the recommended order.
    let per_route = Router::new()
        .route(
            "/items/{id}",
            get(show)
                .put(update)
                .route_layer(cache)
                .route_layer(limit.clone()),
        )
        .route(
            "/orders",
            post(order)
                .route_layer(idempotent.clone())
                .route_layer(limit),
        );

    // Stacked: one ServiceBuilder over a whole (nested) router.
    let store_for_v2 = store.clone();
    let stacked = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store)
                .policy(Policy::gcra(100, Duration::from_secs(60)).named("v2"))
                .key(peer())
                .scope("v2")
                .build()?,
        )
        .layer(idempotent)
        // Inside `nest` the layers see the path with "/v2" stripped: a scope of
        // its own keeps this cache from answering "/items/1" of the other router.
        .layer(
            ResponseCacheLayer::builder(store_for_v2)
                .default_ttl(Duration::from_secs(30))
                .scope("v2")
                .build()?,
        );
    let v2 = Router::new()
        .route("/items/{id}", get(show).put(update))
        .route("/orders", post(order))
        .layer(stacked);

    Ok(per_route.nest("/v2", v2).with_state(db))
}

async fn serve(router: Router, listen: &str) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3002".into());
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        None => serve(app(MemoryStore::new())?, &listen).await,
        Some(url) => {
            let store = RedisStore::builder(url)
                .prefix("axum-example")
                .connect()
                .await?;
            serve(app(store)?, &listen).await
        }
    }
}
