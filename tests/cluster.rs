//! Redis Cluster: the rate limiter's guarantees on a real 3-master cluster,
//! and through a master failover (3 masters + 3 replicas).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::cluster::RedisCluster;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{DecisionSource, Policy, RateLimitDecision, RateLimitLayer};
use tower_redis_layers::{BreakerConfig, RedisStore, ResponseBody};

type Res = Response<ResponseBody<Full<Bytes>>>;

fn service(
    store: RedisStore,
    policy: Policy,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Full<Bytes>>, Response = Res, Error = Infallible, Future: Send> + Clone {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store)
                .policy(policy)
                .key(Header::new("x-api-key"))
                .remember_denials(false)
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(move |_r: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
        }))
}

fn req(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

async fn cluster_fleet(
    urls: Vec<String>,
    prefix: &str,
    n: usize,
    deadline: Duration,
) -> Vec<RedisStore> {
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(
            RedisStore::cluster_builder(urls.clone())
                .prefix(prefix)
                .deadline(deadline)
                // Probe every 250 ms once the breaker opens, so the test sees
                // recovery soon after the promotion.
                .breaker(
                    BreakerConfig::default()
                        .failures(5)
                        .probe_every(Duration::from_millis(250)),
                )
                .connect_timeout(Duration::from_secs(1))
                .ping_on_connect(true)
                .connect()
                .await
                .unwrap(),
        );
    }
    stores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_a_cluster_admit_exactly_the_limit_for_every_client() {
    let urls = support::cluster::shared_cluster_urls();
    let prefix = support::unique_prefix("cluster-fleet");
    let stores = cluster_fleet(urls, &prefix, 3, Duration::from_secs(2)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = stores
        .into_iter()
        .map(|s| {
            service(
                s,
                Policy::sliding_log(20, Duration::from_secs(3600)).named("a"),
                calls.clone(),
            )
        })
        .collect();
    // 12 clients spread over the slots (and so the masters), 50 requests each.
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let svc = services[i % 3].clone();
            let key = format!("client-{}", i % 12);
            tokio::spawn(
                async move { (key.clone(), svc.oneshot(req(&key)).await.unwrap().status()) },
            )
        })
        .collect();
    let mut ok = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let (key, status) = t.await.unwrap();
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
        if status == StatusCode::OK {
            *ok.entry(key).or_default() += 1;
        }
    }
    assert_eq!(ok.len(), 12);
    assert!(ok.values().all(|&n| n == 20), "{ok:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 240);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_failover_answers_within_the_deadline_then_resumes_exact_limits() {
    const DEADLINE: Duration = Duration::from_millis(100);
    let mut cluster = RedisCluster::start(3, 1);
    let stores = cluster_fleet(cluster.urls(), "failover", 2, DEADLINE).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let policy = Policy::fixed_window(1_000_000, Duration::from_secs(3600));
    let a = service(stores[0].clone(), policy.clone(), calls.clone());
    let b = service(stores[1].clone(), policy, calls.clone());

    let res = a.clone().oneshot(req("victim")).await.unwrap();
    let d = res.extensions().get::<RateLimitDecision>().unwrap();
    assert_eq!(d.source, DecisionSource::Store);

    // Kill the master holding the victim's key (the only key written so far).
    let master = {
        let mut found = None;
        for url in cluster.urls() {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("failover:rl:*")
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if let Some(k) = keys.first() {
                found = Some(cluster.master_of(k));
                break;
            }
        }
        found.expect("the victim's key is on some master")
    };
    // Load from 8 concurrent clients on every slot while the master dies.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let outage = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (stop, outage) = (stop.clone(), outage.clone());
            tokio::spawn(async move {
                let (mut n, mut slowest) = (0u64, Duration::ZERO);
                let (mut decided_in_outage, mut open_in_outage) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let key = format!("load-{i}-{}", n % 50);
                    let res = svc.clone().oneshot(req(&key)).await.unwrap();
                    slowest = slowest.max(t.elapsed());
                    assert_eq!(res.status(), StatusCode::OK, "fail-open under load");
                    let source = res.extensions().get::<RateLimitDecision>().unwrap().source;
                    if outage.load(Ordering::Relaxed) {
                        match source {
                            DecisionSource::Store => decided_in_outage += 1,
                            _ => open_in_outage += 1,
                        }
                    }
                    n += 1;
                }
                (n, slowest, decided_in_outage, open_in_outage)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.kill(master);
    outage.store(true, Ordering::Relaxed);

    let start = Instant::now();
    let mut recovered = false;
    let mut failures = 0;
    while start.elapsed() < Duration::from_secs(60) {
        for svc in [&a, &b] {
            let t = Instant::now();
            let res = svc.clone().oneshot(req("victim")).await.unwrap();
            let took = t.elapsed();
            assert!(
                took < DEADLINE + Duration::from_millis(400),
                "a request during failover took {took:?}"
            );
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "fail-open while the master is gone"
            );
            let source = res.extensions().get::<RateLimitDecision>().unwrap().source;
            if source == DecisionSource::FailOpen {
                failures += 1;
            }
        }
        let res = a.clone().oneshot(req("victim")).await.unwrap();
        if res.extensions().get::<RateLimitDecision>().unwrap().source == DecisionSource::Store
            && failures > 0
        {
            recovered = true;
            outage.store(false, Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures > 0, "the failover was visible as store failures");
    assert!(
        recovered,
        "decisions came back from the store after the replica's promotion"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut decided_in_outage, mut open_in_outage) = (0, 0);
    for task in load {
        let (n, slowest, decided, open) = task.await.unwrap();
        open_in_outage += open;
        assert!(n > 0);
        assert!(
            slowest < DEADLINE + Duration::from_millis(400),
            "a request under load took {slowest:?}"
        );
        decided_in_outage += decided;
    }
    // Breakers are per slot range: the two live masters kept deciding for
    // their clients (about 2/3 of the keys) while the third was down.
    assert!(
        decided_in_outage > open_in_outage,
        "during the failover {decided_in_outage} decisions came from Redis, {open_in_outage} failed open"
    );
    cluster.wait_ok();

    // Exact again: a fresh client on the promoted replica's slot gets exactly its limit.
    let calls2 = Arc::new(AtomicUsize::new(0));
    let exact = Policy::sliding_log(5, Duration::from_secs(3600)).named("after");
    let sa = service(stores[0].clone(), exact.clone(), calls2.clone());
    let sb = service(stores[1].clone(), exact, calls2.clone());
    // Both instances' breakers for the victim's slots close once their
    // probes succeed (the same client key, so the same slot, through a and b).
    for svc in [&a, &b] {
        let start = Instant::now();
        loop {
            let res = svc.clone().oneshot(req("victim")).await.unwrap();
            let source = res.extensions().get::<RateLimitDecision>().unwrap().source;
            if source == DecisionSource::Store {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "instance did not recover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut ok = 0;
    for i in 0..20 {
        let svc = if i % 2 == 0 { &sa } else { &sb };
        let res = svc.clone().oneshot(req("victim")).await.unwrap();
        let source = res.extensions().get::<RateLimitDecision>().unwrap().source;
        assert_eq!(source, DecisionSource::Store);
        if res.status() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
}

/// `wait_replicas` on a cluster: the WAIT goes to the master of the
/// record's slot (and nowhere else), and the answer comes once that
/// master's replica has the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_wait_replicas_asks_the_master_of_the_record_slot() {
    use tower_redis_layers::idempotency::{IdempotencyLayer, IdempotencyOutcome, RequestBody};
    let cluster = RedisCluster::start(3, 1);
    let store = RedisStore::cluster_builder(cluster.urls())
        .prefix("wr")
        .deadline(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap();
    let layer = IdempotencyLayer::builder(store)
        .wait_replicas(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("paid"))))
            },
        ));
    let pay = || {
        Request::post("/pay")
            .header("idempotency-key", "k1")
            .body(Full::default())
            .unwrap()
    };
    let res = svc.clone().oneshot(pay()).await.unwrap();
    assert_eq!(
        res.extensions().get::<IdempotencyOutcome>(),
        Some(&IdempotencyOutcome::Stored)
    );
    let mut holders = Vec::new();
    let mut record = String::new();
    for url in cluster.urls() {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("wr:idem:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(k) = keys.first() {
            record = k.clone();
            holders.push(url);
        }
    }
    assert_eq!(holders.len(), 2, "the master and its replica: {holders:?}");
    let master = format!("redis://127.0.0.1:{}", cluster.master_of(&record));
    for url in cluster.urls() {
        let waits = support::command_calls(&url, |n| n == "wait").await;
        assert_eq!(waits, u64::from(url == master), "WAIT calls on {url}");
    }
    let res = svc.clone().oneshot(pay()).await.unwrap();
    assert_eq!(res.headers()["idempotent-replayed"], "true");
}

/// Reservations are batched per hash slot: 3 instances on a cluster, many
/// keys (spread over the slots) each sent 5 times at once across the
/// instances: every key's handler runs exactly once and every request that
/// is answered gets that run's response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_batches_across_slots_run_each_key_once_fleet_wide() {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tower_redis_layers::idempotency::{IdempotencyLayer, RequestBody};
    let urls = support::cluster::shared_cluster_urls();
    let stores = cluster_fleet(urls, "idb", 3, Duration::from_secs(2)).await;
    let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let services: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let runs = runs.clone();
            ServiceBuilder::new()
                .layer(IdempotencyLayer::builder(store).build().unwrap())
                .service(tower::service_fn(
                    move |r: Request<RequestBody<Full<Bytes>>>| {
                        let key = r.headers()["idempotency-key"].to_str().unwrap().to_owned();
                        let n = {
                            let mut runs = runs.lock().unwrap();
                            let n = runs.entry(key.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let body = format!("{key} run {n}");
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                        }
                    },
                ))
        })
        .collect();
    let keys: Vec<String> = (0..60).map(|i| format!("\"order-{i}\"")).collect();
    let mut calls = Vec::new();
    for round in 0..5 {
        for (i, key) in keys.iter().enumerate() {
            let svc = services[(i + round) % 3].clone();
            let req = Request::post("/orders")
                .header("idempotency-key", key.as_str())
                .body(Full::default())
                .unwrap();
            let key = key.clone();
            calls.push(tokio::spawn(async move {
                let res = svc.oneshot(req).await.unwrap();
                let status = res.status();
                let body = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (key, status, body)
            }));
        }
    }
    let mut answered = 0;
    for call in calls {
        let (key, status, body) = call.await.unwrap();
        if status == StatusCode::OK {
            answered += 1;
            assert_eq!(body, format!("{key} run 1"), "the one run's response");
        } else {
            // A concurrent duplicate while the first runs: a conflict.
            assert_eq!(status, StatusCode::CONFLICT, "{key}: {body:?}");
        }
    }
    assert!(answered >= keys.len(), "at least each first run answered");
    // Then retries on every instance, twice: the first wave's replays come
    // from the script or (on the instance that stored it) a plain read, the
    // second wave's all from reads, batched per slot: each the one run's.
    for _ in 0..2 {
        let mut retries = Vec::new();
        for key in &keys {
            for svc in &services {
                let req = Request::post("/orders")
                    .header("idempotency-key", key.as_str())
                    .body(Full::default())
                    .unwrap();
                let (svc, key) = (svc.clone(), key.clone());
                retries.push(tokio::spawn(async move {
                    let res = svc.oneshot(req).await.unwrap();
                    assert_eq!(res.status(), StatusCode::OK, "{key}");
                    assert_eq!(res.headers()["idempotent-replayed"], "true");
                    let body = http_body_util::BodyExt::collect(res.into_body())
                        .await
                        .unwrap()
                        .to_bytes();
                    assert_eq!(body, format!("{key} run 1"));
                }));
            }
        }
        for r in retries {
            r.await.unwrap();
        }
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), keys.len(), "every key ran");
    assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
}
