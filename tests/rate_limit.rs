//! RateLimitLayer behaviour, on every store (conformance) and on Redis alone.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{
    DecisionSource, MissingKey, Policy, RateLimitDecision, RateLimitLayer, RateLimitStore,
};
use tower_redis_layers::ResponseBody;

type Res = Response<ResponseBody<Full<Bytes>>>;

fn counting_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
       + Send {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

fn req(api_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri("/api/limited");
    if let Some(k) = api_key {
        b = b.header("x-api-key", k);
    }
    b.body(Full::default()).unwrap()
}

async fn send<S>(svc: &mut S, r: Request<Full<Bytes>>) -> Res
where
    S: Service<Request<Full<Bytes>>, Response = Res>,
    S::Error: Into<BoxError>,
{
    match svc.ready().await {
        Ok(s) => match s.call(r).await {
            Ok(res) => res,
            Err(_) => panic!("service error"),
        },
        Err(_) => panic!("service not ready"),
    }
}

async fn body_json(res: Res) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

fn layer(store: impl RateLimitStore, policy: Policy) -> RateLimitLayer {
    RateLimitLayer::builder(store)
        .policy(policy)
        .key(Header::new("x-api-key"))
        .build()
        .unwrap()
}

async fn count_allowed(store: impl RateLimitStore, policy: Policy, n: usize) -> (usize, Res) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer(store, policy))
        .service(counting_service(calls.clone()));
    let mut last = None;
    for _ in 0..n {
        let res = send(&mut svc, req(Some("client-a"))).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            last = Some(res);
        }
    }
    (
        calls.load(Ordering::SeqCst),
        last.expect("at least one rejection"),
    )
}

/// One instance (A) leases 8 of a client's 10 units and spends 2, another
/// (B, no lease) gets the 2 left and is denied early, until A's lease ends
/// and gives its 6 unused units back.
async fn lease_and_give_back(store: impl RateLimitStore + Clone, client: &str, policy: Policy) {
    let calls = Arc::new(AtomicUsize::new(0));
    // Remembering no denial, so that B asks the store each time.
    let instance = |store, lease: bool| {
        let b = RateLimitLayer::builder(store)
            .policy(policy.clone())
            .key(Header::new("x-api-key"))
            .remember_denials(false);
        let layer = match lease {
            true => b.lease(8, Duration::from_millis(100)),
            false => b,
        };
        ServiceBuilder::new()
            .layer(layer.build().unwrap())
            .service(counting_service(calls.clone()))
    };
    let mut a = instance(store.clone(), true);
    let mut b = instance(store, false);
    let decision = |res: &Res| res.extensions().get::<RateLimitDecision>().unwrap().clone();
    // A leases 8 units and spends 2 of them, the second in process; the
    // fields count what the store has left and what A holds.
    let first = decision(&send(&mut a, req(Some(client))).await);
    assert_eq!(
        (first.source, first.policies[0].remaining),
        (DecisionSource::Store, 9),
        "{client}"
    );
    let second = decision(&send(&mut a, req(Some(client))).await);
    assert!(second.allowed);
    assert_eq!(
        (second.source, second.policies[0].remaining),
        (DecisionSource::Lease, 8),
        "{client}"
    );
    // B finds the 2 units left in the store; the 6 that A holds are not for
    // B: it is denied early ...
    for _ in 0..2 {
        assert_eq!(
            send(&mut b, req(Some(client))).await.status(),
            StatusCode::OK
        );
    }
    let early = send(&mut b, req(Some(client))).await.status();
    assert_eq!(early, StatusCode::TOO_MANY_REQUESTS, "{client}");
    // ... until A's lease ends and its 6 unused units go back to the store.
    let mut waited = 0;
    while send(&mut b, req(Some(client))).await.status() != StatusCode::OK {
        waited += 1;
        assert!(waited < 500, "{client}: the unused units never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut more = 0;
    while send(&mut b, req(Some(client))).await.status() == StatusCode::OK {
        more += 1;
    }
    assert_eq!(more, 5, "{client}: the 6 units given back, one spent above");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "{client}: exactly the limit in all"
    );
}

const MINUTE: Duration = Duration::from_secs(60);

conformance! {
    async fn gcra_admits_exactly_the_burst(store) {
        let (allowed, res) = count_allowed(store, Policy::gcra(5, MINUTE), 8).await;
        assert_eq!(allowed, 5);
        let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=12).contains(&retry), "one emission interval (12 s): {retry}");
        assert_eq!(res.headers()["ratelimit-policy"], r#""5-per-60s";q=5;w=60"#);
        let rl = res.headers()["ratelimit"].to_str().unwrap();
        assert!(rl.starts_with(r#""5-per-60s";r=0;t="#), "{rl}");
    }

    async fn sliding_log_admits_exactly_the_limit(store) {
        let (allowed, res) = count_allowed(store, Policy::sliding_log(4, MINUTE), 7).await;
        assert_eq!(allowed, 4);
        let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((59..=60).contains(&retry), "the oldest entry leaves in ~60 s: {retry}");
    }

    async fn fixed_window_admits_exactly_the_limit(store) {
        let (allowed, _) = count_allowed(store, Policy::fixed_window(3, Duration::from_secs(3600)), 6).await;
        assert!(allowed == 3, "{allowed}");
    }

    async fn sliding_window_admits_the_limit_in_a_fresh_window(store) {
        let (allowed, _) = count_allowed(store, Policy::sliding_window(3, Duration::from_secs(3600)), 6).await;
        assert_eq!(allowed, 3);
    }

    async fn token_bucket_admits_exactly_its_capacity(store) {
        let (allowed, res) = count_allowed(store, Policy::token_bucket(2, MINUTE).burst(6), 9).await;
        assert_eq!(allowed, 6);
        let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "one token in 30 s: {retry}");
    }

    async fn rejection_is_problem_json_with_retry_after(store) {
        let (_, res) = count_allowed(store, Policy::gcra(1, MINUTE), 2).await;
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let d = res.extensions().get::<RateLimitDecision>().cloned().unwrap();
        assert!(!d.allowed);
        let body = body_json(res).await;
        assert_eq!(body["status"], 429);
        assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
        assert!(body["retry_after"].as_u64().unwrap() >= 1);
    }

    async fn several_policies_are_all_or_nothing(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RateLimitLayer::builder(store)
            .policy(Policy::sliding_log(3, MINUTE).named("small"))
            .policy(Policy::fixed_window(5, Duration::from_secs(3600)).named("big"))
            .key(Header::new("x-api-key"))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(counting_service(calls.clone()));
        for _ in 0..3 {
            assert_eq!(send(&mut svc, req(Some("k"))).await.status(), StatusCode::OK);
        }
        for _ in 0..4 {
            let res = send(&mut svc, req(Some("k"))).await;
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            let d = res.extensions().get::<RateLimitDecision>().unwrap();
            // The denied requests took nothing from "big": 5 - 3 remain.
            assert_eq!(d.policies[1].remaining, 2, "{:?}", d.policies);
            assert_eq!(d.policies[0].remaining, 0);
            assert!(d.policies[0].retry_after.is_some());
            assert!(d.policies[1].retry_after.is_none());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    async fn clients_have_their_own_quota(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new()
            .layer(layer(store, Policy::gcra(2, MINUTE)))
            .service(counting_service(calls.clone()));
        for key in ["a", "b", "c"] {
            for _ in 0..2 {
                assert_eq!(send(&mut svc, req(Some(key))).await.status(), StatusCode::OK);
            }
            assert_eq!(send(&mut svc, req(Some(key))).await.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    async fn cost_weighs_requests_and_over_capacity_is_refused_at_once(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RateLimitLayer::builder(store)
            .policy(Policy::fixed_window(10, Duration::from_secs(3600)))
            .key(Header::new("x-api-key"))
            .cost(|r| r.headers.get("x-cost").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1))
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(counting_service(calls.clone()));
        let costly = |c: &str| {
            let mut r = req(Some("k"));
            r.headers_mut().insert("x-cost", c.parse().unwrap());
            r
        };
        let res = send(&mut svc, costly("11")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().get("retry-after").is_none(), "waiting cannot help");
        assert_eq!(res.extensions().get::<RateLimitDecision>().unwrap().source, DecisionSource::CostTooHigh);
        assert_eq!(send(&mut svc, costly("7")).await.status(), StatusCode::OK);
        let res = send(&mut svc, costly("4")).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        assert_eq!(d.policies[0].remaining, 3);
        assert_eq!(send(&mut svc, costly("3")).await.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    async fn missing_key_policies(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let reject = layer(store.clone(), Policy::gcra(1, MINUTE));
        let mut svc = ServiceBuilder::new().layer(reject).service(counting_service(calls.clone()));
        let res = send(&mut svc, req(None)).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()["content-type"], "application/problem+json");

        let allow = RateLimitLayer::builder(store.clone())
            .policy(Policy::gcra(1, MINUTE))
            .key(Header::new("x-api-key"))
            .on_missing_key(MissingKey::Allow)
            .scope("allow")
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(allow).service(counting_service(calls.clone()));
        for _ in 0..3 {
            assert_eq!(send(&mut svc, req(None)).await.status(), StatusCode::OK);
        }

        let fallback = RateLimitLayer::builder(store)
            .policy(Policy::gcra(1, MINUTE))
            .key(Header::new("x-api-key"))
            .on_missing_key(MissingKey::Fallback(tower_redis_layers::key::ClientKey::new("anon", "")))
            .scope("fallback")
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(fallback).service(counting_service(calls.clone()));
        assert_eq!(send(&mut svc, req(None)).await.status(), StatusCode::OK);
        assert_eq!(send(&mut svc, req(None)).await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(send(&mut svc, req(Some("x"))).await.status(), StatusCode::OK);
    }

    async fn invalid_keys_get_400_not_a_shared_bucket(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new()
            .layer(layer(store, Policy::gcra(1, MINUTE)))
            .service(counting_service(calls.clone()));
        let res = send(&mut svc, req(Some(&"k".repeat(5000)))).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body = body_json(res).await;
        assert!(body["detail"].as_str().unwrap().contains("longer than 1024"), "{body}");
        // Non-UTF-8 keys are keys of their own, not one shared bucket.
        for bytes in [&b"\xff\x80"[..], &b"\xff\x81"[..]] {
            let mut r = req(None);
            r.headers_mut().insert("x-api-key", http::HeaderValue::from_bytes(bytes).unwrap());
            assert_eq!(send(&mut svc, r).await.status(), StatusCode::OK);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    async fn grpc_requests_get_resource_exhausted(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new()
            .layer(layer(store, Policy::gcra(1, MINUTE)))
            .service(counting_service(calls.clone()));
        let grpc = || {
            let mut r = req(Some("g"));
            r.headers_mut().insert("content-type", "application/grpc+proto".parse().unwrap());
            r
        };
        assert_eq!(send(&mut svc, grpc()).await.status(), StatusCode::OK);
        let res = send(&mut svc, grpc()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "8");
        assert!(res.headers()["grpc-message"].to_str().unwrap().contains("quota exceeded"));
        assert!(res.headers().contains_key("retry-after"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    async fn shadow_mode_never_rejects_but_reports(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RateLimitLayer::builder(store)
            .policy(Policy::gcra(1, MINUTE))
            .key(Header::new("x-api-key"))
            .shadow(true)
            .build()
            .unwrap();
        let mut svc = ServiceBuilder::new().layer(layer).service(counting_service(calls.clone()));
        for _ in 0..3 {
            assert_eq!(send(&mut svc, req(Some("s"))).await.status(), StatusCode::OK);
        }
        let res = send(&mut svc, req(Some("s"))).await;
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        assert!(!d.allowed, "the decision says it would have been rejected");
        assert!(res.headers()["ratelimit"].to_str().unwrap().contains("r=0"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    async fn allowed_responses_carry_the_fields_and_the_decision(store) {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut svc = ServiceBuilder::new()
            .layer(layer(store, Policy::gcra(3, MINUTE)))
            .service(counting_service(calls));
        let res = send(&mut svc, req(Some("h"))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], r#""3-per-60s";q=3;w=60"#);
        let rl = res.headers()["ratelimit"].to_str().unwrap();
        assert!(rl.starts_with(r#""3-per-60s";r=2;t="#), "{rl}");
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        assert_eq!(d.source, DecisionSource::Store);
        assert_eq!(d.policies[0].remaining, 2);
    }

    async fn two_layers_charging_one_counter_share_it_exactly(store) {
        // Two layers with the same scope and policy on one store charge one
        // counter. Their concurrent decisions share batches, in which both
        // name the same key: the script keeps one state for it.
        let hour = Duration::from_secs(3600);
        for (client, policy) in [
            ("shared-fw", Policy::fixed_window(10, hour)),
            ("shared-gcra", Policy::gcra(10, hour)),
        ] {
            let calls = Arc::new(AtomicUsize::new(0));
            let a = ServiceBuilder::new()
                .layer(layer(store.clone(), policy.clone()))
                .service(counting_service(calls.clone()));
            let b = ServiceBuilder::new()
                .layer(layer(store.clone(), policy))
                .service(counting_service(calls.clone()));
            let tasks: Vec<_> = (0..60)
                .map(|i| {
                    let (a, b) = (a.clone(), b.clone());
                    tokio::spawn(async move {
                        let r = req(Some(client));
                        if i % 2 == 0 { a.oneshot(r).await } else { b.oneshot(r).await }
                            .unwrap()
                            .status()
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(calls.load(Ordering::SeqCst), 10, "{client}");
        }
    }

    async fn a_lease_decides_in_process_and_gives_back_what_it_did_not_use(store) {
        let hour = Duration::from_secs(3600);
        for (client, policy) in [
            ("fixed", Policy::fixed_window(10, hour)),
            ("gcra", Policy::gcra(10, hour)),
            ("bucket", Policy::token_bucket(1, hour).burst(10)),
        ] {
            lease_and_give_back(store.clone(), client, policy).await;
        }
    }

    async fn concurrent_requests_on_one_instance_are_exact(store) {
        // Many requests of one client in each batch: decided in order
        // against one read of the state, for every algorithm.
        let hour = Duration::from_secs(3600);
        for (client, policy) in [
            ("log", Policy::sliding_log(25, MINUTE)),
            ("gcra", Policy::gcra(25, hour)),
            ("bucket", Policy::token_bucket(1, hour).burst(25)),
            ("fixed", Policy::fixed_window(25, hour)),
            ("sliding", Policy::sliding_window(25, hour)),
        ] {
            let calls = Arc::new(AtomicUsize::new(0));
            let svc = ServiceBuilder::new()
                .layer(layer(store.clone(), policy))
                .service(counting_service(calls.clone()));
            let tasks: Vec<_> = (0..200)
                .map(|_| {
                    let svc = svc.clone();
                    tokio::spawn(async move { svc.oneshot(req(Some(client))).await.unwrap().status() })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                if t.await.unwrap() == StatusCode::OK {
                    ok += 1;
                }
            }
            assert_eq!(ok, 25, "{client}");
            assert_eq!(calls.load(Ordering::SeqCst), 25, "{client}");
        }
    }
}

#[tokio::test]
async fn a_remembered_denial_costs_no_redis_command() {
    let url = support::redis_url();
    let store = support::redis_store("remembered").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer(store, Policy::gcra(2, MINUTE)))
        .service(counting_service(calls));
    let evals = |n: &str| n.starts_with("eval");
    let before = support::command_calls(&url, evals).await;
    for _ in 0..3 {
        send(&mut svc, req(Some("r"))).await;
    }
    let after_three = support::command_calls(&url, evals).await;
    // Other tests of this binary may run concurrently: count at least ours.
    assert!(after_three - before >= 3);
    let before_more =
        support::command_calls(&url, |n| n.starts_with("eval") || n == "script|load").await;
    let mut remembered = 0;
    for _ in 0..50 {
        let res = send(&mut svc, req(Some("r"))).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let d = res.extensions().get::<RateLimitDecision>().unwrap();
        if d.source == DecisionSource::Remembered {
            remembered += 1;
        }
    }
    assert_eq!(remembered, 50, "every later denial is answered in process");
    let _ = before_more;
}

/// Every key a policy writes on Redis carries an expiry, at most the time
/// its state takes to forget the client (two windows for the sliding
/// window, whose previous window still counts): a client that stops
/// asking leaves nothing behind.
#[tokio::test]
async fn every_algorithm_writes_its_keys_with_an_expiry() {
    let url = support::redis_url();
    let period = Duration::from_secs(60);
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for policy in [
        Policy::gcra(10, period),
        Policy::token_bucket(10, period),
        Policy::sliding_log(10, period),
        Policy::sliding_window(10, period),
        Policy::fixed_window(10, period),
    ] {
        let prefix = support::unique_prefix("expiry");
        let store = support::fleet_at(&url, &prefix, 1).await.remove(0);
        let (allowed, _) = count_allowed(store, policy.clone(), 12).await;
        assert_eq!(allowed, 10, "{policy:?}");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(!keys.is_empty(), "{policy:?} wrote no key");
        for key in keys {
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut admin)
                .await
                .unwrap();
            let most = 2 * period.as_millis() as i64 + 1;
            assert!(
                pttl > 0 && pttl <= most,
                "{policy:?}: {key} expires in {pttl} ms"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn memory_quota_refills_with_time() {
    let store = tower_redis_layers::MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer(store, Policy::gcra(2, Duration::from_secs(10))))
        .service(counting_service(calls.clone()));
    for _ in 0..2 {
        assert_eq!(
            send(&mut svc, req(Some("t"))).await.status(),
            StatusCode::OK
        );
    }
    let res = send(&mut svc, req(Some("t"))).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "5");
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert_eq!(
        send(&mut svc, req(Some("t"))).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(
        send(&mut svc, req(Some("t"))).await.status(),
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn futures_and_services_are_send() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer(
            tower_redis_layers::MemoryStore::new(),
            Policy::gcra(1, MINUTE),
        ))
        .service(counting_service(calls));
    assert_send(&svc);
    let fut = svc.call(req(Some("x")));
    assert_send(&fut);
}

#[test]
fn leases_need_policies_that_can_take_units_back() {
    let build = |policy: Policy, units: u64| {
        RateLimitLayer::builder(tower_redis_layers::MemoryStore::new())
            .policy(policy)
            .lease(units, Duration::from_millis(50))
            .build()
    };
    for policy in [
        Policy::sliding_log(10, MINUTE),
        Policy::sliding_window(10, MINUTE),
    ] {
        let e = build(policy, 5).unwrap_err().to_string();
        assert!(e.contains("cannot take unused units back"), "{e}");
    }
    for policy in [
        Policy::gcra(10, MINUTE),
        Policy::token_bucket(10, MINUTE),
        Policy::fixed_window(10, MINUTE),
    ] {
        assert!(build(policy.clone(), 5).is_ok());
        assert!(build(policy, 0).is_err(), "a lease of no unit");
    }
}

/// Clients that send their next request as soon as the last is answered,
/// each arriving through the I/O driver (a server's connections under
/// load), on a one-worker runtime: a busy batcher lingers a few turns of
/// the runtime, so one script call decides nearly all of them. Without it,
/// batches leapfrog with half of the clients each (measured: 40–60 calls
/// for these 20 rounds).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn clients_in_a_closed_loop_are_decided_in_about_one_script_call_per_round() {
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 20;
    let server = support::RedisServer::start();
    let store = support::fleet_at(&server.url(), "closed-loop", 1)
        .await
        .remove(0);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(layer(
            store,
            Policy::gcra(1_000_000, Duration::from_secs(3600)),
        ))
        .service(counting_service(calls.clone()));
    // The script loaded and the batcher started.
    assert_eq!(
        send(&mut svc, req(Some("warm"))).await.status(),
        StatusCode::OK
    );
    let url = server.url();
    let evals = || support::command_calls(&url, |n| n.starts_with("eval"));
    let before = evals().await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let res = svc.clone().oneshot(req(Some(&format!("client-{c}")))).await;
                    assert_eq!(res.unwrap().status(), StatusCode::OK);
                    // The client's next request comes in through the driver.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let script_calls = evals().await - before;
    assert_eq!(calls.load(Ordering::SeqCst), 1 + CLIENTS * ROUNDS);
    assert!(
        script_calls <= ROUNDS as u64 + 5,
        "{script_calls} script calls for {ROUNDS} rounds of {CLIENTS} clients"
    );
}
