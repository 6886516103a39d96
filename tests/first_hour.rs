//! What a newcomer meets first, over real sockets on axum: the README's key
//! works as written, a forgotten `ConnectInfo` gets a 400 that names what
//! was looked for, a client cannot pick its own bucket past a per-IP layer,
//! stacked limiters all show their fields, and a panicking constructor
//! points at the caller.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use support::http::call;
use tower::ServiceBuilder;
use tower_redis_layers::key::{Header, KeyExtractorExt, PeerIp};
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer, RateLimitStore};
use tower_redis_layers::MemoryStore;

async fn serve(router: Router, connect_info: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, router.into_make_service()).await
        }
    });
    addr.to_string()
}

fn readme_limit(store: impl RateLimitStore, scope: &str, limit: u64) -> RateLimitLayer {
    RateLimitLayer::builder(store)
        .policy(Policy::fixed_window(limit, Duration::from_secs(3600)))
        .key(Header::new("x-api-key").or(PeerIp::new()))
        .scope(scope)
        .build()
        .unwrap()
}

async fn statuses(addr: &str, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(call(addr, "GET", "/", headers, "").await.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_key_limits_per_peer_on_axum_as_written() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(readme_limit(MemoryStore::new(), "readme", 2));
    let addr = serve(app, true).await;
    assert_eq!(statuses(&addr, 3, &[]).await, [200, 200, 429]);
    assert_eq!(
        statuses(&addr, 3, &[("x-api-key", "k1")]).await,
        [200, 200, 429],
        "an API key is a bucket of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_connect_info_gets_a_400_that_says_what_was_looked_for() {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(readme_limit(MemoryStore::new(), "no-connect-info", 2));
    let addr = serve(app, false).await;
    let (status, headers, body) = call(&addr, "GET", "/", &[], "").await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/problem+json");
    for hint in [
        "the x-api-key header",
        "peer address",
        "into_make_service_with_connect_info",
    ] {
        assert!(body.contains(hint), "the detail names {hint:?}: {body}");
    }
}

/// The safe shape: a per-IP layer in front of the per-API-key one, so a
/// client rotating made-up keys is still limited by its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rotating_made_up_api_keys_is_limited_by_the_per_ip_layer() {
    let store = support::redis_store("rotate").await;
    let per_ip = RateLimitLayer::builder(store.clone())
        .policy(Policy::fixed_window(5, Duration::from_secs(3600)))
        .key(PeerIp::new())
        .scope("per-ip")
        .build()
        .unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).layer(
        ServiceBuilder::new()
            .layer(per_ip)
            .layer(readme_limit(store, "per-key", 2)),
    );
    let addr = serve(app, true).await;
    let mut seen = Vec::new();
    for i in 0..8 {
        let key = format!("made-up-{i}");
        seen.push(call(&addr, "GET", "/", &[("x-api-key", &key)], "").await.0);
    }
    assert_eq!(seen, [200, 200, 200, 200, 200, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_limiters_each_list_their_policies() {
    let store = MemoryStore::new();
    let outer = RateLimitLayer::builder(store.clone())
        .policy(Policy::fixed_window(100, Duration::from_secs(3600)).named("hourly"))
        .key(PeerIp::new())
        .scope("outer")
        .build()
        .unwrap();
    let inner = RateLimitLayer::builder(store)
        .policy(Policy::fixed_window(10, Duration::from_secs(60)).named("minute"))
        .key(PeerIp::new())
        .scope("inner")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ServiceBuilder::new().layer(outer).layer(inner));
    let addr = serve(app, true).await;
    let (status, headers, _) = call(&addr, "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    let policy = headers["ratelimit-policy"].to_str().unwrap();
    assert_eq!(policy, r#""minute";q=10;w=60, "hourly";q=100;w=3600"#);
    let state = headers["ratelimit"].to_str().unwrap();
    assert!(
        state.starts_with(r#""minute";r=9;"#) && state.contains(r#""hourly";r=99;"#),
        "{state}"
    );
}

#[test]
fn a_bad_header_name_panics_at_the_callers_line() {
    let hook = std::panic::take_hook();
    let (tx, rx) = std::sync::mpsc::channel();
    std::panic::set_hook(Box::new(move |info| {
        let _ = tx.send(info.location().map(|l| l.file().to_owned()));
    }));
    let result = std::panic::catch_unwind(|| Header::new("x api key"));
    std::panic::set_hook(hook);
    assert!(result.is_err());
    let file = rx.recv().unwrap().unwrap();
    assert!(file.ends_with("first_hour.rs"), "points at {file}");
}

/// The README's "Redis if REDIS_URL, else memory": one `AnyStore` type
/// for both, used by all three layers.
async fn any_store_serves_all_three_layers(store: tower_redis_layers::AnyStore) {
    use tower_redis_layers::cache::ResponseCacheLayer;
    use tower_redis_layers::idempotency::IdempotencyLayer;
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = loads.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move { n.to_string() }
            })
            .post(|| async { "created" }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(readme_limit(store.clone(), "any", 4))
                .layer(IdempotencyLayer::builder(store.clone()).build().unwrap())
                .layer(
                    ResponseCacheLayer::builder(store)
                        .default_ttl(Duration::from_secs(30))
                        .build()
                        .unwrap(),
                ),
        );
    let addr = serve(app, true).await;
    let (_, _, first) = call(&addr, "GET", "/", &[], "").await;
    let (_, h, second) = call(&addr, "GET", "/", &[], "").await;
    assert_eq!((first.as_str(), second.as_str()), ("1", "1"), "a cache hit");
    assert!(h.contains_key("age"));
    let key = [("idempotency-key", "\"k1\"")];
    let (created, _, _) = call(&addr, "POST", "/", &key, "x").await;
    let (replayed, h, _) = call(&addr, "POST", "/", &key, "x").await;
    assert_eq!((created, replayed), (200, 200));
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(
        call(&addr, "GET", "/", &[], "").await.0,
        429,
        "the 5th request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_type_chosen_at_run_time_memory() {
    any_store_serves_all_three_layers(MemoryStore::new().into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_type_chosen_at_run_time_redis() {
    any_store_serves_all_three_layers(support::redis_store("any").await.into()).await;
}
