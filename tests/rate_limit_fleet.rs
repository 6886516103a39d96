//! Several instances (each its own RedisStore and layer, one Redis) under
//! concurrent load: the fleet admits exactly the quota.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};

const INSTANCES: usize = 3;
const REQUESTS: usize = 300;

async fn fleet_admits(name: &str, policy: Policy) -> (usize, usize) {
    let (ok, calls, _) = fleet_admits_with(name, policy, None, &mut None).await;
    (ok, calls)
}

/// Three instances hammering one client, each layer leasing `lease` when set.
async fn fleet_admits_with(
    name: &str,
    policy: Policy,
    lease: Option<(u64, Duration)>,
    burst: &mut Option<usize>,
) -> (usize, usize, usize) {
    let stores = support::redis_fleet(name, INSTANCES).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let calls = calls.clone();
            ServiceBuilder::new()
                .layer({
                    let b = RateLimitLayer::builder(store)
                        .policy(policy.clone())
                        .key(Header::new("x-api-key"));
                    match lease {
                        // Denials not remembered: once the slices held
                        // elsewhere are back, any instance may admit again.
                        Some((units, age)) => b.lease(units, age).remember_denials(false),
                        None => b,
                    }
                    .build()
                    .unwrap()
                })
                .service(tower::service_fn(move |_r: Request<Full<Bytes>>| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                }))
        })
        .collect();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let svc = services[i % INSTANCES].clone();
            tokio::spawn(async move {
                let req = Request::builder()
                    .header("x-api-key", "one-client")
                    .body(Full::default())
                    .unwrap();
                let res = svc.oneshot(req).await.unwrap();
                let source = res
                    .extensions()
                    .get::<tower_redis_layers::rate_limit::RateLimitDecision>()
                    .map(|d| d.source);
                (res.status(), source)
            })
        })
        .collect();
    let (mut ok, mut leased) = (0, 0);
    for t in tasks {
        let (status, source) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
        if source == Some(tower_redis_layers::rate_limit::DecisionSource::Lease) {
            leased += 1;
        }
    }
    if let Some((units, age)) = lease {
        // An instance may have denied early while another held a slice it
        // then did not spend, for at most the slice's age: then the unspent
        // units are back, and more demand (more than a slice per instance)
        // takes them.
        burst.replace(ok);
        tokio::time::sleep(age + Duration::from_millis(200)).await;
        for i in 0..INSTANCES * (units as usize + 3) {
            let req = Request::builder()
                .header("x-api-key", "one-client")
                .body(Full::default())
                .unwrap();
            let res = services[i % INSTANCES].clone().oneshot(req).await.unwrap();
            if res.status() == StatusCode::OK {
                ok += 1;
            }
        }
    }
    (ok, calls.load(Ordering::SeqCst), leased)
}

const HOUR: Duration = Duration::from_secs(3600);

macro_rules! exact {
    ($($name:ident: $policy:expr => $limit:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (ok, calls) = fleet_admits(stringify!($name), $policy).await;
                assert_eq!(ok, $limit, "admitted responses");
                assert_eq!(calls, $limit, "handler calls");
            }
        )*
    };
}

macro_rules! exact_with_leases {
    ($($name:ident: $policy:expr, $units:expr => $limit:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let lease = Some(($units, Duration::from_millis(400)));
                let mut burst = None;
                let (ok, calls, leased) =
                    fleet_admits_with(stringify!($name), $policy, lease, &mut burst).await;
                let burst = burst.unwrap();
                let held_elsewhere = (INSTANCES - 1) * $units;
                assert!(
                    burst <= $limit && burst + held_elsewhere >= $limit,
                    "the burst admitted {burst}: never more than {}, early by at most {held_elsewhere}",
                    $limit
                );
                assert_eq!(ok, $limit, "admitted responses once the slices' age passed");
                assert_eq!(calls, $limit, "handler calls");
                assert!(leased > 0, "some requests were decided from a lease");
            }
        )*
    };
}

// Each instance takes slices of the client's quota and spends them in
// process: the fleet never admits more than the quota, and once the slices'
// age has passed it has admitted exactly the quota (an instance may deny
// early while another holds a slice it does not spend, never for longer).
exact_with_leases! {
    gcra_fleet_with_leases_admits_exactly_the_burst: Policy::gcra(50, HOUR), 7 => 50;
    fixed_window_fleet_with_leases_admits_exactly_the_limit: Policy::fixed_window(50, Duration::from_secs(86_400)), 7 => 50;
    token_bucket_fleet_with_leases_admits_exactly_the_capacity: Policy::token_bucket(1, HOUR).burst(50), 7 => 50;
    gcra_fleet_with_slices_larger_than_the_quota_admits_exactly_the_burst: Policy::gcra(50, HOUR), 1000 => 50;
}

exact! {
    gcra_fleet_admits_exactly_the_burst: Policy::gcra(50, HOUR) => 50;
    sliding_log_fleet_admits_exactly_the_limit: Policy::sliding_log(50, HOUR) => 50;
    fixed_window_fleet_admits_exactly_the_limit: Policy::fixed_window(50, Duration::from_secs(86_400)) => 50;
    token_bucket_fleet_admits_exactly_the_capacity: Policy::token_bucket(1, HOUR).burst(50) => 50;
    sliding_window_fleet_admits_the_limit_in_a_fresh_window: Policy::sliding_window(50, Duration::from_secs(86_400)) => 50;
}

/// Three instances, requests of a free and a pro client (plan picked per
/// request) and allowlisted requests interleaved: each plan admits exactly
/// its own quota fleet-wide, and skipped requests are never counted.
async fn plans_and_skip_are_exact(layers: Vec<RateLimitLayer>) {
    use tower_redis_layers::rate_limit::RateLimitDecision;
    let services: Vec<_> = layers
        .into_iter()
        .map(|layer| {
            ServiceBuilder::new()
                .layer(layer)
                .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                }))
        })
        .collect();
    let clients = [
        ("free-client", "free"),
        ("pro-client", "pro"),
        ("probe", "health"),
    ];
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let svc = services[i % INSTANCES].clone();
            let (key, plan) = clients[i % clients.len()];
            tokio::spawn(async move {
                let req = Request::builder()
                    .header("x-api-key", key)
                    .header("x-plan", plan)
                    .body(Full::default())
                    .unwrap();
                let res = svc.oneshot(req).await.unwrap();
                let decided = res.extensions().get::<RateLimitDecision>().is_some();
                (key, res.status(), decided)
            })
        })
        .collect();
    let mut admitted = std::collections::HashMap::new();
    for t in tasks {
        let (key, status, decided) = t.await.unwrap();
        if key == "probe" {
            assert_eq!(status, StatusCode::OK, "allowlisted requests always pass");
            assert!(!decided, "and are not decided at all");
        }
        if status == StatusCode::OK {
            *admitted.entry(key).or_insert(0) += 1;
        }
    }
    assert_eq!(admitted["free-client"], 5, "the default set");
    assert_eq!(admitted["pro-client"], 20, "the pro plan");
    assert_eq!(admitted["probe"], REQUESTS / 3);
}

fn planned(store: impl tower_redis_layers::rate_limit::RateLimitStore) -> RateLimitLayer {
    use tower_redis_layers::rate_limit::Plan;
    RateLimitLayer::builder(store)
        .policy(Policy::fixed_window(5, HOUR))
        .plan("pro", [Policy::fixed_window(20, HOUR)])
        .plan_by(|req| {
            let v = req.headers.get("x-plan")?.to_str().ok()?;
            (v == "pro").then(|| Plan::new("pro"))
        })
        .skip(|req| req.headers.get("x-plan").is_some_and(|v| v == "health"))
        .key(Header::new("x-api-key"))
        .scope("plans")
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_and_skip_are_exact_across_instances_on_redis() {
    let stores = support::redis_fleet("plans", INSTANCES).await;
    plans_and_skip_are_exact(stores.into_iter().map(planned).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_and_skip_are_exact_across_layers_on_one_memory_store() {
    let store = tower_redis_layers::MemoryStore::new();
    plans_and_skip_are_exact((0..INSTANCES).map(|_| planned(store.clone())).collect()).await;
}

#[tokio::test]
async fn a_plan_extension_set_upstream_picks_the_policy_set() {
    use tower_redis_layers::rate_limit::Plan;
    let layer = RateLimitLayer::builder(tower_redis_layers::MemoryStore::new())
        .policy(Policy::fixed_window(1, HOUR))
        .plan("pro", [Policy::fixed_window(3, HOUR)])
        .key(Header::new("x-api-key"))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut req = Request::builder()
            .header("x-api-key", "k")
            .body(Full::default())
            .unwrap();
        req.extensions_mut().insert(Plan::new("pro"));
        statuses.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}
