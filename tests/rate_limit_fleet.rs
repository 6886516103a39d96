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
    let stores = support::redis_fleet(name, INSTANCES).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = stores
        .into_iter()
        .map(|store| {
            let calls = calls.clone();
            ServiceBuilder::new()
                .layer(
                    RateLimitLayer::builder(store)
                        .policy(policy.clone())
                        .key(Header::new("x-api-key"))
                        .build()
                        .unwrap(),
                )
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
                svc.oneshot(req).await.unwrap().status()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected status {other}"),
        }
    }
    (ok, calls.load(Ordering::SeqCst))
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

exact! {
    gcra_fleet_admits_exactly_the_burst: Policy::gcra(50, HOUR) => 50;
    sliding_log_fleet_admits_exactly_the_limit: Policy::sliding_log(50, HOUR) => 50;
    fixed_window_fleet_admits_exactly_the_limit: Policy::fixed_window(50, Duration::from_secs(86_400)) => 50;
    token_bucket_fleet_admits_exactly_the_capacity: Policy::token_bucket(1, HOUR).burst(50) => 50;
    sliding_window_fleet_admits_the_limit_in_a_fresh_window: Policy::sliding_window(50, Duration::from_secs(86_400)) => 50;
}
