//! Layers on one store do not harm each other: each has its own circuit
//! breakers, and the cache's payloads travel on a connection of their own,
//! so neither another layer's failures nor a flood of large cache hits
//! push rate-limit decisions past their deadline or open their breaker.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::RedisServer;
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_layers::cache::ResponseCacheLayer;
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyOutcome, RequestBody};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{DecisionSource, Policy, RateLimitDecision, RateLimitLayer};
use tower_redis_layers::{BreakerConfig, RedisStore};

async fn store(server: &RedisServer, deadline: Duration) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("iso")
        .deadline(deadline)
        .breaker(
            BreakerConfig::default()
                .failures(3)
                .probe_every(Duration::from_secs(30)),
        )
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap()
}

fn limiter(
    store: RedisStore,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store)
                .policy(Policy::gcra(1_000_000, Duration::from_secs(1)))
                .key(Header::new("x-api-key"))
                .scope("iso")
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }))
}

fn keyed(i: usize) -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", format!("client-{i}"))
        .body(Full::default())
        .unwrap()
}

/// The idempotency layer's calls all fail (its record key holds the wrong
/// type, so Redis answers WRONGTYPE): its breaker opens; the rate limiter on
/// the same store keeps deciding from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_layers_failures_never_open_another_layers_breaker() {
    let server = RedisServer::start();
    let store = store(&server, Duration::from_millis(500)).await;
    let limit = limiter(store.clone());
    let instance = || {
        ServiceBuilder::new()
            .layer(IdempotencyLayer::builder(store.clone()).build().unwrap())
            .service(tower::service_fn(
                |_r: Request<RequestBody<Full<Bytes>>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("created"))))
                },
            ))
    };
    // The record is written by another instance (the writer keeps its
    // response in process and would replay it without asking Redis).
    let (writer, idem) = (instance(), instance());
    // Every record key of this run holds a list: each script call errors.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let post = |i: usize| {
        Request::post("/orders")
            .header("idempotency-key", format!("\"k{i}\""))
            .body(Full::new(Bytes::from("x")))
            .unwrap()
    };
    writer.oneshot(post(0)).await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("iso:idem:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in &keys {
        let _: () = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(k)
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for _ in 0..10 {
        let res = idem.clone().oneshot(post(0)).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.extensions().get::<IdempotencyOutcome>(),
            Some(&IdempotencyOutcome::StoreUnavailable)
        );
    }
    for i in 0..20 {
        let res = limit.clone().oneshot(keyed(i)).await.unwrap();
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        assert_eq!(
            d.source,
            DecisionSource::Store,
            "decision {i} came from Redis"
        );
    }
}

/// 1 MiB cache hits from many concurrent clients while rate-limit
/// decisions run: every decision comes from Redis within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_cache_hits_do_not_delay_rate_limit_decisions() {
    let server = RedisServer::start();
    let store = store(&server, Duration::from_millis(200)).await;
    let limit = limiter(store.clone());
    let big = Bytes::from(vec![b'x'; 1 << 20]);
    let cache = ServiceBuilder::new()
        .layer(
            ResponseCacheLayer::builder(store)
                .default_ttl(Duration::from_secs(60))
                .max_body_size(2 << 20)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(move |_r: Request<Full<Bytes>>| {
            let big = big.clone();
            async move { Ok::<_, Infallible>(Response::new(Full::new(big))) }
        }));
    let get = |i: usize| {
        Request::get(format!("http://example.com/big/{i}"))
            .body(Full::default())
            .unwrap()
    };
    for i in 0..8 {
        let body = cache.clone().oneshot(get(i)).await.unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1 << 20);
    }
    let flood: Vec<_> = (0..32)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for round in 0..8 {
                    let res = cache.clone().oneshot(get((t + round) % 8)).await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    let decisions: Vec<_> = (0..200)
        .map(|i| {
            let limit = limit.clone();
            tokio::spawn(async move {
                let res = limit.oneshot(keyed(i)).await.unwrap();
                res.extensions().get::<RateLimitDecision>().unwrap().source
            })
        })
        .collect();
    let mut failed = 0;
    for d in decisions {
        if d.await.unwrap() != DecisionSource::Store {
            failed += 1;
        }
    }
    for f in flood {
        f.await.unwrap();
    }
    assert_eq!(failed, 0, "rate-limit decisions that missed their deadline");
}

/// A lookup that missed its deadline while Redis was paused still runs when
/// the pause ends and takes the URL's fill lock: the layer gives the lock
/// back behind it, so readers after the pause do not wait for a fill that
/// nobody makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_lost_in_a_pause_leaves_no_fill_lock_behind() {
    let server = RedisServer::start();
    let store = store(&server, Duration::from_millis(50)).await;
    let cache = ServiceBuilder::new()
        .layer(
            ResponseCacheLayer::builder(store)
                .default_ttl(Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("origin"))))
        }));
    // The cache's connection is up before the pause.
    let warm = Request::get("http://example.com/warm").body(Full::default());
    cache.clone().oneshot(warm.unwrap()).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let res = cache
        .clone()
        .oneshot(
            Request::get("http://example.com/paused")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the origin served the miss");
    // The pause ends; the lookup and then the release run, in that order.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let locks: Vec<String> = redis::cmd("KEYS")
        .arg("iso:cache:*:l:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(locks.is_empty(), "fill locks left behind: {locks:?}");
}
