//! Redis killed, paused and restarted under a rate-limited service: every
//! request is answered within the deadline (plus a margin) per the failure
//! policy, and the same service recovers when Redis is back.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{
    DecisionSource, FailurePolicy, Policy, RateLimitDecision, RateLimitLayer,
};
use tower_redis_layers::{BreakerConfig, RedisStore};

const DEADLINE: Duration = Duration::from_millis(50);
/// Scheduling noise on a loaded 2-core machine; the point is "not seconds".
const MARGIN: Duration = Duration::from_millis(250);

async fn store(server: &RedisServer) -> RedisStore {
    store_with(server, DEADLINE).await
}

async fn store_with(server: &RedisServer, deadline: Duration) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("faults")
        .deadline(deadline)
        .breaker(
            BreakerConfig::default()
                .failures(3)
                .probe_every(Duration::from_millis(100)),
        )
        .ping_on_connect(true)
        .connect()
        .await
        .unwrap()
}

fn service(
    store: RedisStore,
    on_failure: FailurePolicy,
    limit: u64,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder(store)
                .policy(Policy::fixed_window(limit, Duration::from_secs(86_400)))
                .key(Header::new("x-api-key"))
                .on_store_failure(on_failure)
                .remember_denials(false)
                .scope(format!("{on_failure:?}").to_lowercase())
                .build()
                .unwrap(),
        )
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }))
}

fn req(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

async fn timed<S>(
    svc: &S,
    key: &str,
) -> (
    Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
    Duration,
)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let start = Instant::now();
    let res = svc.clone().oneshot(req(key)).await.unwrap();
    (res, start.elapsed())
}

fn source(res: &Response<tower_redis_layers::ResponseBody<Full<Bytes>>>) -> DecisionSource {
    res.extensions().get::<RateLimitDecision>().unwrap().source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_fail_open_and_closed_answer_within_the_deadline_then_recover() {
    let mut server = RedisServer::start();
    let store = store(&server).await;
    let open = service(store.clone(), FailurePolicy::Open, 1000);
    let closed = service(store.clone(), FailurePolicy::Closed, 1000);

    let (res, _) = timed(&open, "k").await;
    assert_eq!(source(&res), DecisionSource::Store);

    server.kill();
    for i in 0..40 {
        let (res, took) = timed(&open, "k").await;
        assert!(
            took < DEADLINE + MARGIN,
            "fail-open request {i} took {took:?}"
        );
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(source(&res), DecisionSource::FailOpen);

        let (res, took) = timed(&closed, "k").await;
        assert!(
            took < DEADLINE + MARGIN,
            "fail-closed request {i} took {took:?}"
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }

    server.restart();
    let start = Instant::now();
    loop {
        let (res, took) = timed(&open, "k").await;
        assert!(
            took < DEADLINE + MARGIN,
            "request during recovery took {took:?}"
        );
        if source(&res) == DecisionSource::Store {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the service did not recover within 10 s of Redis restarting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (res, _) = timed(&closed, "k").await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_requests_time_out_at_the_deadline_concurrently() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let open = service(store.clone(), FailurePolicy::Open, 1000);
    timed(&open, "warm").await;

    support::pause_clients(&server.url(), 1500).await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let open = open.clone();
            tokio::spawn(async move { timed(&open, &format!("p{i}")).await })
        })
        .collect();
    for t in tasks {
        let (res, took) = t.await.unwrap();
        assert!(
            took < DEADLINE + MARGIN,
            "a paused Redis held a request {took:?}"
        );
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(source(&res), DecisionSource::FailOpen);
    }
}

/// A Redis of its own and a fail-open service on it with `deadline`, its
/// connection up.
async fn fail_open_with(
    deadline: Duration,
) -> (
    RedisServer,
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<tower_redis_layers::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
            Future: Send,
        > + Clone,
) {
    let server = RedisServer::start();
    let store = store_with(&server, deadline).await;
    let open = service(store, FailurePolicy::Open, 1000);
    timed(&open, "warm").await;
    (server, open)
}

/// A request that queues while a batch is stuck on a paused Redis is
/// answered at its own deadline, counted from when it asked: not a whole
/// deadline after the stuck batch gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_a_stuck_batch_is_answered_at_its_own_deadline() {
    const LONG: Duration = Duration::from_millis(600);
    let (server, open) = fail_open_with(LONG).await;

    support::pause_clients(&server.url(), 3000).await;
    let stuck = {
        let open = open.clone();
        tokio::spawn(async move { timed(&open, "first").await })
    };
    // The first batch is on the wire (and stuck) by now: this one queues.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (res, took) = timed(&open, "second").await;
    assert_eq!(source(&res), DecisionSource::FailOpen);
    // Counting its deadline from when the stuck batch gave up would take
    // LONG + 550 ms.
    assert!(
        took < LONG + Duration::from_millis(250),
        "the queued request took {took:?}"
    );
    let (res, took) = stuck.await.unwrap();
    assert_eq!(source(&res), DecisionSource::FailOpen);
    assert!(
        took < LONG + Duration::from_millis(250),
        "the stuck one took {took:?}"
    );
}

/// A batch Redis answers late answers each of its callers on its own
/// terms: the one whose deadline passed meanwhile times out then, the one
/// that can still wait gets Redis's decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_still_answers_the_callers_whose_deadline_has_not_passed() {
    const LONG: Duration = Duration::from_millis(400);
    let (server, open) = fail_open_with(LONG).await;

    // Redis answers nothing for 600 ms. At 0 ms `a` goes out alone and
    // gives up at 400; `b` (100 ms) and `c` (300 ms) queue behind it and
    // go out together at 400; Redis answers them at 600, after `b`'s
    // deadline (500) and before `c`'s (700).
    support::pause_clients(&server.url(), 600).await;
    let at = |delay: u64, key: &'static str| {
        let open = open.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            timed(&open, key).await
        })
    };
    let (a, b, c) = (at(0, "a"), at(100, "b"), at(300, "c"));
    let (a, took_a) = a.await.unwrap();
    let (b, took_b) = b.await.unwrap();
    let (c, took_c) = c.await.unwrap();
    assert_eq!(source(&a), DecisionSource::FailOpen, "a took {took_a:?}");
    assert_eq!(source(&b), DecisionSource::FailOpen, "b took {took_b:?}");
    assert!(
        took_b < LONG + Duration::from_millis(80),
        "b took {took_b:?}"
    );
    assert_eq!(
        source(&c),
        DecisionSource::Store,
        "c took {took_c:?}: its batch's answer came within its deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fallback_enforces_the_policy_while_redis_is_down() {
    let mut server = RedisServer::start();
    let store = store(&server).await;
    let local = service(store, FailurePolicy::Local, 3);
    server.kill();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (res, took) = timed(&local, "l").await;
        assert!(took < DEADLINE + MARGIN);
        assert_eq!(source(&res), DecisionSource::LocalFallback);
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

/// After an outage, the breaker closes in the background: no request has to
/// probe, and the first request once Redis has answered for a second is
/// decided by Redis, however long the outage was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_a_background_probe_closes_the_breaker_without_requests() {
    let mut server = RedisServer::start();
    let store = store(&server).await;
    let open = service(store.clone(), FailurePolicy::Open, 1000);
    let (res, _) = timed(&open, "k").await;
    assert_eq!(source(&res), DecisionSource::Store);

    server.kill();
    // A long outage with traffic: under a doubling back-off this would
    // leave the breaker open for seconds after Redis returns.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        let (res, _) = timed(&open, "k").await;
        assert_eq!(source(&res), DecisionSource::FailOpen);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.restart();
    // No request for a second: only the background probe talks to Redis.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pings = support::command_calls(&server.url(), |c| c == "ping").await;
    assert!(
        pings >= 1,
        "the background probe asked the restarted server"
    );
    let loads = support::command_calls(&server.url(), |c| c == "script|load").await;
    assert!(
        loads >= 1,
        "the scripts were loaded again once Redis answered"
    );
    let (res, _) = timed(&open, "k").await;
    assert_eq!(
        source(&res),
        DecisionSource::Store,
        "the first request after Redis answered for 1 s is decided by Redis"
    );
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let errors: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !errors.contains("NOSCRIPT"),
        "no decision paid a NOSCRIPT round trip: {errors}"
    );
}
