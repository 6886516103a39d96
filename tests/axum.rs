//! axum over real sockets: the three layers per route (`route_layer`), on a
//! whole router (`Router::layer` with a `ServiceBuilder`), in nested
//! routers, keyed by `ConnectInfo`, with extractor-using handlers behind the
//! cache — and no `HandleErrorLayer` anywhere. Plus compile-time checks that
//! every layer's service and future are `Send + 'static` with axum's and
//! tonic's bodies and with a body that is neither `Sync`, `Default` nor
//! `From<Bytes>`.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use support::http::call;
use tower::{Service, ServiceBuilder};
use tower_redis_layers::cache::{CacheStore, ResponseCacheLayer};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyStore};
use tower_redis_layers::key::PeerIp;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::MemoryStore;

#[derive(Clone, Default)]
struct Counts {
    loads: Arc<AtomicU64>,
    orders: Arc<AtomicU64>,
}

fn peer() -> PeerIp {
    PeerIp::from_extension(|c: &ConnectInfo<SocketAddr>| c.0.ip())
}

fn layers<St>(
    store: St,
    scope: &str,
    limit: u64,
) -> (RateLimitLayer, IdempotencyLayer, ResponseCacheLayer)
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    (
        RateLimitLayer::builder(store.clone())
            .policy(Policy::fixed_window(limit, Duration::from_secs(3600)))
            .key(peer())
            .scope(scope)
            .build()
            .unwrap(),
        IdempotencyLayer::builder(store.clone())
            .scope(scope)
            .build()
            .unwrap(),
        ResponseCacheLayer::builder(store)
            .default_ttl(Duration::from_secs(60))
            .scope(scope)
            .build()
            .unwrap(),
    )
}

async fn item(
    State(c): State<Counts>,
    Path(id): Path<u32>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> String {
    let n = c.loads.fetch_add(1, Ordering::SeqCst) + 1;
    format!(
        "item {id} lang={} load={n}",
        q.get("lang").map_or("-", String::as_str)
    )
}

async fn order(State(c): State<Counts>, body: String) -> (http::StatusCode, String) {
    let n = c.orders.fetch_add(1, Ordering::SeqCst) + 1;
    (http::StatusCode::CREATED, format!("order {n}: {body}"))
}

fn router<St>(store: St, counts: Counts) -> Router
where
    St: RateLimitStore + IdempotencyStore + CacheStore + Clone,
{
    let (limit, idem, cache) = layers(store.clone(), "routes", 50);
    let per_route = Router::new()
        .route(
            "/items/{id}",
            get(item).route_layer(cache).route_layer(limit.clone()),
        )
        .route("/orders", post(order).route_layer(idem).route_layer(limit));
    let (limit, idem, cache) = layers(store, "nested", 50);
    let nested = Router::new()
        .route("/items/{id}", get(item))
        .route("/orders", post(order))
        .layer(ServiceBuilder::new().layer(limit).layer(idem).layer(cache));
    per_route.nest("/api", nested).with_state(counts)
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    addr
}

async fn check(store: impl RateLimitStore + IdempotencyStore + CacheStore + Clone) {
    let counts = Counts::default();
    let addr = serve(router(store, counts.clone())).await.to_string();
    for prefix in ["", "/api"] {
        // Path and query extractors still work behind the cache; hits are served.
        let path = &format!("{prefix}/items/7?lang=fr");
        let (s, h, first) = call(&addr, "GET", path, &[], "").await;
        assert_eq!(s, 200, "{prefix}");
        assert!(first.starts_with("item 7 lang=fr load="), "{first}");
        assert!(h.contains_key("ratelimit"), "the rate limit ran: {h:?}");
        let (_, h, again) = call(&addr, "GET", path, &[], "").await;
        assert_eq!(again, first);
        // A hit, or (when the first fill's write was still landing) collapsed
        // onto it: either way served from the cache, not a second load.
        let status = h["cache-status"].to_str().unwrap();
        assert!(
            status.contains("hit") || status.contains("collapsed"),
            "{prefix}: {status}"
        );

        // Idempotency through the same stack.
        let path = &format!("{prefix}/orders");
        let key = [("idempotency-key", "\"k\"")];
        let (s, _, a) = call(&addr, "POST", path, &key, "tea").await;
        let (s2, h2, b) = call(&addr, "POST", path, &key, "tea").await;
        assert_eq!((s, s2), (201, 201));
        assert_eq!(a, b);
        assert_eq!(h2["idempotent-replayed"], "true");
    }
    assert_eq!(
        counts.loads.load(Ordering::SeqCst),
        2,
        "one load per router"
    );
    assert_eq!(
        counts.orders.load(Ordering::SeqCst),
        2,
        "one order per router"
    );
    // Unmatched paths are not rate-limited by route_layer: 404, not 429.
    assert_eq!(call(&addr, "GET", "/nope", &[], "").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_per_route_stacked_and_nested_memory() {
    check(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_per_route_stacked_and_nested_redis() {
    check(support::redis_store("axum").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_info_keys_the_rate_limit_per_peer() {
    let counts = Counts::default();
    let (limit, _, _) = layers(MemoryStore::new(), "peer", 2);
    let app = Router::new()
        .route("/items/{id}", get(item).route_layer(limit))
        .with_state(counts);
    let addr = serve(app).await.to_string();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(call(&addr, "GET", "/items/1", &[], "").await.0);
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429], "127.0.0.1 is one client");
}

/// A body that is only a body: not `Sync`, not `Default`, not `From<Bytes>`.
struct BareBody(#[allow(dead_code)] std::cell::Cell<bool>);

impl http_body::Body for BareBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }
}

fn assert_send_static<T: Send + 'static>(_: &T) {}

fn check_stack<B: http_body::Body<Data = Bytes> + Send + 'static>()
where
    B::Error: Into<tower::BoxError>,
{
    let (limit, idem, cache) = layers(MemoryStore::new(), "types", 1);
    let mut svc = ServiceBuilder::new()
        .layer(limit)
        .layer(idem)
        .layer(cache)
        .service_fn(|_req: http::Request<_>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(BareBody(std::cell::Cell::new(
                false,
            ))))
        });
    assert_send_static(&svc);
    let fut = svc.call(http::Request::new(Full::new(Bytes::new())).map(|b| b));
    assert_send_static(&fut);
    let _ = std::marker::PhantomData::<B>;
}

#[test]
fn services_and_futures_are_send_with_axum_tonic_and_bare_bodies() {
    check_stack::<axum::body::Body>();
    check_stack::<tonic::body::Body>();
    fn axum_stack() {
        let (limit, idem, cache) = layers(MemoryStore::new(), "axum-types", 1);
        let router: Router = Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(ServiceBuilder::new().layer(limit).layer(idem).layer(cache));
        let mut svc = router.into_service::<axum::body::Body>();
        let fut = svc.call(http::Request::new(axum::body::Body::empty()));
        assert_send_static(&fut);
    }
    axum_stack();
}
