//! Redis out of memory: with `noeviction` every layer follows its failure
//! policy (and the breaker stays closed: Redis answers); with a `volatile-*`
//! policy an evicted rate-limit key or idempotency record behaves as the
//! docs say (a fresh window; the retry runs again).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::RedisServer;
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyOutcome, RequestBody};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{DecisionSource, Policy, RateLimitDecision, RateLimitLayer};
use tower_redis_layers::RedisStore;

async fn config(url: &str, args: &[&str]) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("SET").arg(args);
    cmd.query_async::<()>(&mut conn).await.unwrap();
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("oom")
        .connect()
        .await
        .unwrap()
}

fn limited(
    store: RedisStore,
    limit: u64,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store)
                .policy(Policy::fixed_window(limit, Duration::from_secs(3600)))
                .key(Header::new("x-api-key"))
                .remember_denials(false)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }))
}

fn get() -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", "k")
        .body(Full::default())
        .unwrap()
}

fn idempotent(
    store: RedisStore,
    runs: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(IdempotencyLayer::builder(store).build().unwrap())
        .service(tower::service_fn(
            move |_r: Request<RequestBody<Full<Bytes>>>| {
                runs.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("created")))) }
            },
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noeviction_out_of_memory_follows_each_failure_policy() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let limit = limited(store.clone(), 100);
    let runs = Arc::new(AtomicUsize::new(0));
    let idem = idempotent(store.clone(), runs.clone());
    config(&server.url(), &["maxmemory-policy", "noeviction"]).await;
    config(&server.url(), &["maxmemory", "1"]).await;

    // Many requests: the breaker would open after 5 failures if OOM counted.
    for _ in 0..20 {
        let res = limit.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "rate limit fails open");
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        assert_eq!(d.source, DecisionSource::FailOpen);
    }
    let order = Request::post("/orders")
        .header("idempotency-key", "\"order-1\"")
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let res = idem.clone().oneshot(order).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency fails closed"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the handler did not run unprotected"
    );

    config(&server.url(), &["maxmemory", "0"]).await;
    let res = limit.clone().oneshot(get()).await.unwrap();
    let d = res.extensions().get::<RateLimitDecision>().unwrap();
    assert_eq!(
        d.source,
        DecisionSource::Store,
        "decided by Redis at once: the breaker never opened for OOM"
    );
}

/// Fills Redis with expiring junk under `volatile-lru` until `key` is evicted.
async fn evict(url: &str, key: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    config(url, &["maxmemory-policy", "volatile-lru"]).await;
    config(url, &["maxmemory", &(used + 256 * 1024).to_string()]).await;
    let junk = "x".repeat(4096);
    for i in 0..20_000 {
        let _: Result<(), _> = redis::cmd("SET")
            .arg(format!("junk:{i}"))
            .arg(&junk)
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await;
        if i % 16 == 0 {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !exists {
                config(url, &["maxmemory", "0"]).await;
                return;
            }
        }
    }
    panic!("{key} was never evicted");
}

async fn only_key(url: &str, pattern: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{pattern}: {keys:?}");
    keys.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_rate_limit_key_restarts_its_window() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let limit = limited(store, 2);
    for expected in [200, 200, 429] {
        let res = limit.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status().as_u16(), expected);
    }
    let key = only_key(&server.url(), "oom:rl:*").await;
    evict(&server.url(), &key).await;
    let res = limit.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "a fresh window, as documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_idempotency_record_lets_the_retry_run_again() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let runs = Arc::new(AtomicUsize::new(0));
    // Another instance than the one that stored the response (that one
    // keeps it in process and replays it whatever Redis lost).
    let (writer, idem) = (
        idempotent(store.clone(), runs.clone()),
        idempotent(store.clone(), runs.clone()),
    );
    let make = || {
        Request::post("/orders")
            .header("idempotency-key", "\"order-1\"")
            .body(Full::new(Bytes::from("x")))
            .unwrap()
    };
    writer.clone().oneshot(make()).await.unwrap();
    let res = idem.clone().oneshot(make()).await.unwrap();
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::Replayed)
    );
    let key = only_key(&server.url(), "oom:idem:*").await;
    evict(&server.url(), &key).await;
    let res = writer.clone().oneshot(make()).await.unwrap();
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::Replayed),
        "the instance that stored it replays its copy"
    );
    idem.clone().oneshot(make()).await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "elsewhere the retry ran again, as documented"
    );
}
