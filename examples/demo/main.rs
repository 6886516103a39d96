//! The demo: an axum service with the crate's layers, per route.
//!
//! ```text
//! cargo run --release --example demo                        # embedded memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example demo
//! ```
//!
//! Environment: `LISTEN` (default 127.0.0.1:3000), `REDIS_URL` (unset: memory
//! store), `KEY_PREFIX` (default `demo`), `ITEM_DELAY_MS` (default 50),
//! `ORDER_DELAY_MS` (default 0). Try:
//!
//! ```text
//! for i in $(seq 7); do curl -si localhost:3000/api/limited -H 'x-api-key: me' | head -1; done
//! curl -si localhost:3000/api/orders -H 'Idempotency-Key: "o-1"' -d 'two apples'  # twice: one order
//! curl -si localhost:3000/api/items/7      # twice: the second is a hit (Age, Cache-Status)
//! curl -s -XPUT localhost:3000/api/items/7 -d v2; curl -s localhost:3000/api/items/7
//! curl -s localhost:3000/api/stats
//! ```
//!
//! Routes (a fixed interface: tests/demo.rs checks it):
//! - `GET /api/limited`: RateLimitLayer, 5 requests per 10 s per `x-api-key`, else per peer IP.
//! - `POST /api/orders`: IdempotencyLayer (`Idempotency-Key` optional, principal
//!   `x-api-key` else anonymous); creates an order (counter) first, then
//!   waits `ORDER_DELAY_MS` (work after the commit), answers 201 JSON.
//! - `GET /api/items/{id}`: ResponseCacheLayer (TTL 30 s); each origin load waits
//!   `ITEM_DELAY_MS` and is counted. `PUT /api/items/{id}` sets the version and
//!   invalidates the cached GET on every instance.
//! - `GET /api/stats`: fleet-wide counters from the shared store.
//! - `GET /metrics`: this instance's metrics (Prometheus text format).
//!
//! With `REDIS_URL`, the demo's own data is read and written under a 100 ms
//! deadline: while Redis is down the routes that need it answer 503
//! (problem+json, `Retry-After: 1`) at once, and the layers follow their
//! failure policies (the rate limit lets requests through, idempotent
//! requests with a key get 503, the cache serves from the origin).

mod demo_data;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use demo_data::DemoData;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
use tower_redis_layers::key::{Global, Header, KeyExtractorExt, PeerIp};
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::MemoryStore;

#[derive(Clone)]
struct App {
    data: DemoData,
    item_delay: Duration,
    order_delay: Duration,
}

fn env_ms(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn router<St>(
    store: St,
    app: App,
    metrics: PrometheusHandle,
) -> Result<Router, Box<dyn std::error::Error + Send + Sync>>
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    let limit = RateLimitLayer::builder(store.clone())
        .policy(Policy::gcra(5, Duration::from_secs(10)).named("demo"))
        // PeerIp reads axum's ConnectInfo (this crate's `axum` feature).
        .key(Header::new("x-api-key").or(PeerIp::new()))
        .scope("limited")
        .build()?;
    let idempotent = IdempotencyLayer::builder(store.clone())
        .principal(Header::new("x-api-key").or(Global))
        .build()?;
    // GETs cached 30 s; a successful PUT drops the cached GET fleet-wide.
    let cache = ResponseCacheLayer::builder(store)
        .default_ttl(Duration::from_secs(30))
        .build()?;
    Ok(Router::new()
        .route("/api/limited", get(|| async { "ok" }).route_layer(limit))
        .route("/api/orders", post(create_order).route_layer(idempotent))
        .route(
            "/api/items/{id}",
            get(get_item).put(put_item).route_layer(cache),
        )
        .route("/api/stats", get(stats))
        .route("/metrics", get(move || async move { metrics.render() }))
        .with_state(app))
}

/// Commits the order (the side effect), then does the work that follows
/// it (`ORDER_DELAY_MS`, like sending a receipt), then answers.
async fn create_order(State(app): State<App>, body: String) -> Response {
    let n = match app.data.next_order().await {
        Ok(n) => n,
        Err(e) => return unavailable(&*e),
    };
    tokio::time::sleep(app.order_delay).await;
    (StatusCode::CREATED, Json(json!({"order": n, "echo": body}))).into_response()
}

/// 503 problem+json when the demo's own data cannot be read or written in
/// time; never stored by the cache, retryable after a second.
fn unavailable(e: &dyn std::error::Error) -> Response {
    let problem = json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": format!("the demo's data store failed: {e}"),
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (CONTENT_TYPE, "application/problem+json"),
            (RETRY_AFTER, "1"),
            (CACHE_CONTROL, "no-store"),
        ],
        problem.to_string(),
    )
        .into_response()
}

async fn get_item(State(app): State<App>, Path(id): Path<String>) -> Response {
    tokio::time::sleep(app.item_delay).await;
    match app.data.load_item(&id).await {
        Ok((load, version)) => {
            Json(json!({"id": id, "load": load, "version": version})).into_response()
        }
        Err(e) => unavailable(&*e),
    }
}

async fn put_item(State(app): State<App>, Path(id): Path<String>, version: String) -> Response {
    match app.data.set_version(&id, &version).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => unavailable(&*e),
    }
}

async fn stats(State(app): State<App>) -> Response {
    match app.data.stats().await {
        Ok((orders, loads)) => Json(json!({"orders": orders, "loads": loads})).into_response(),
        Err(e) => unavailable(&*e),
    }
}

/// `REDIS_URL`: one URL, or a comma-separated list of cluster nodes.
async fn redis_store(
    url: &str,
    prefix: &str,
) -> Result<tower_redis_layers::RedisStore, Box<dyn std::error::Error + Send + Sync>> {
    use tower_redis_layers::RedisStore;
    let builder = if url.contains(',') {
        #[cfg(feature = "cluster")]
        {
            RedisStore::cluster_builder(url.split(','))
        }
        #[cfg(not(feature = "cluster"))]
        return Err("REDIS_URL lists several nodes: build with --features cluster".into());
    } else {
        RedisStore::builder(url)
    };
    Ok(builder
        .prefix(prefix)
        .ping_on_connect(true)
        .connect()
        .await?)
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Installed before the layers are built: they register their metrics then.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let prefix = std::env::var("KEY_PREFIX").unwrap_or_else(|_| "demo".into());
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let data = DemoData::connect(redis_url.as_deref(), &prefix).await?;
    let app = App {
        data,
        item_delay: env_ms("ITEM_DELAY_MS", 50),
        order_delay: env_ms("ORDER_DELAY_MS", 0),
    };
    let router = match &redis_url {
        None => router(MemoryStore::new(), app, metrics)?,
        Some(url) => router(redis_store(url, &prefix).await?, app, metrics)?,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown())
    .await?;
    Ok(())
}
