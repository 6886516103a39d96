//! Every counter of the metrics table moves when its event happens
//! (feature `metrics`): the layers are built under a debugging recorder,
//! then driven through each outcome.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redis_layers::idempotency::{IdempotencyLayer, RequestBody};
use tower_redis_layers::key::Header;
use tower_redis_layers::rate_limit::{Policy, RateLimitLayer};
use tower_redis_layers::{BreakerConfig, MemoryStore, RedisStore};

/// Everything recorded so far (the debugging recorder hands each value
/// out once: counters and gauges restart from zero after a snapshot).
type Labels = Vec<(String, String)>;

struct Snap(Vec<(String, Labels, DebugValue)>);

impl Snap {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| {
                    let key = k.key();
                    let labels = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    (key.name().to_owned(), labels, v)
                })
                .collect(),
        )
    }

    /// The value of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(n, ls, v)| {
            let matches = n == name
                && labels
                    .iter()
                    .all(|(lk, lv)| ls.iter().any(|(k, v)| k == lk && v == lv));
            matches.then_some(v)
        })
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }
}

fn req(key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri("/");
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Full::default()).unwrap()
}

#[tokio::test]
async fn rate_limit_counters_move_for_each_outcome() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::builder(MemoryStore::new())
            .policy(Policy::fixed_window(1, Duration::from_secs(3600)).named("hourly"))
            .key(Header::new("x-api-key"))
            .skip(|r| r.uri.path() == "/health")
            .scope("metrics")
            .build()
            .unwrap()
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }));
    for r in [req(Some("a")), req(Some("a")), req(Some("a")), req(None)] {
        svc.clone().oneshot(r).await.unwrap();
    }
    let mut health = req(None);
    *health.uri_mut() = "/health".parse().unwrap();
    svc.clone().oneshot(health).await.unwrap();
    let mut bad = req(Some("a"));
    bad.headers_mut().append("x-api-key", "b".parse().unwrap());
    svc.clone().oneshot(bad).await.unwrap();

    let snap = Snap::take(&snap);
    let n = |outcome| {
        snap.counter(
            "trl_rate_limit_requests_total",
            &[
                ("scope", "metrics"),
                ("plan", "default"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(n("allowed"), 1);
    assert_eq!(n("denied"), 1);
    assert_eq!(n("remembered_denied"), 1);
    assert_eq!(n("no_key"), 1);
    assert_eq!(n("skipped"), 1);
    assert_eq!(n("bad_key"), 1);
    let by_policy = snap.counter(
        "trl_rate_limit_denials_total",
        &[("scope", "metrics"), ("policy", "hourly")],
    );
    assert_eq!(by_policy, 2);
    match snap.value("trl_memory_entries", &[("layer", "rate limit")]) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 1.0),
        other => panic!("entries gauge: {other:?}"),
    }
}

#[tokio::test]
async fn idempotency_counters_move_for_each_outcome() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        IdempotencyLayer::builder(MemoryStore::new())
            .scope("metrics")
            .build()
            .unwrap()
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(
            |_r: Request<RequestBody<Full<Bytes>>>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("created"))))
            },
        ));
    let post = |key: &str, body: &'static str| {
        Request::post("/orders")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    for r in [
        post("\"k1\"", "a"),
        post("\"k1\"", "a"),
        post("\"k1\"", "other"),
        post("\"a\",\"b\"", "a"),
        Request::get("/").body(Full::default()).unwrap(),
    ] {
        svc.clone().oneshot(r).await.unwrap();
    }
    let snap = Snap::take(&snap);
    let n = |outcome| {
        snap.counter(
            "trl_idempotency_requests_total",
            &[("scope", "metrics"), ("outcome", outcome)],
        )
    };
    assert_eq!(n("first_run"), 1);
    assert_eq!(n("replay"), 1);
    assert_eq!(n("mismatch"), 1);
    assert_eq!(n("bad_request"), 1);
    assert_eq!(n("passed"), 1);
}

/// Store latency by layer and outcome, calls skipped while a breaker is
/// open, and the open-breaker gauge, on a real Redis that goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_latency_skips_and_breaker_gauge_follow_redis() {
    let mut server = support::RedisServer::start();
    let store = RedisStore::builder(server.url())
        .breaker(
            BreakerConfig::default()
                .failures(2)
                .probe_every(Duration::from_secs(60)),
        )
        .connect()
        .await
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::builder(store)
            .policy(Policy::fixed_window(100, Duration::from_secs(3600)))
            .key(Header::new("x-api-key"))
            .build()
            .unwrap()
    });
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }));
    svc.ready()
        .await
        .unwrap()
        .call(req(Some("a")))
        .await
        .unwrap();
    let before = Snap::take(&snap);
    match before.value(
        "trl_store_call_duration_seconds",
        &[("layer", "rate limit"), ("outcome", "ok")],
    ) {
        Some(DebugValue::Histogram(h)) => assert_eq!(h.len(), 1),
        other => panic!("latency histogram: {other:?}"),
    }
    server.kill();
    for _ in 0..4 {
        svc.ready()
            .await
            .unwrap()
            .call(req(Some("a")))
            .await
            .unwrap();
    }
    let after = Snap::take(&snap);
    match after.value("trl_store_breakers_open", &[("layer", "rate limit")]) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 1.0),
        other => panic!("breaker gauge: {other:?}"),
    }
    assert!(after.counter("trl_store_calls_skipped_total", &[("layer", "rate limit")]) >= 1);
    let failed_open = after.counter(
        "trl_rate_limit_requests_total",
        &[("outcome", "failed_open")],
    );
    assert_eq!(failed_open, 4);
}

#[tokio::test]
async fn cache_counters_move_for_each_outcome() {
    use tower_redis_layers::cache::ResponseCacheLayer;
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ResponseCacheLayer::builder(MemoryStore::builder().cache_capacity(4096).build())
            .default_ttl(Duration::from_secs(60))
            .scope("metrics")
            .build()
            .unwrap()
    });
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(|_r: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 1500]))))
        }));
    let get = |path: &str, auth: bool| {
        let mut b = Request::get(format!("http://example.com{path}"));
        if auth {
            b = b.header("authorization", "Bearer t");
        }
        b.body(Full::default()).unwrap()
    };
    for (path, auth) in [
        ("/a", false),
        ("/a", false),
        ("/b", true),
        ("/c", false),
        ("/d", false),
        ("/e", false),
    ] {
        svc.clone().oneshot(get(path, auth)).await.unwrap();
    }
    let snap = Snap::take(&snap);
    let n = |outcome| {
        snap.counter(
            "trl_cache_requests_total",
            &[("scope", "metrics"), ("outcome", outcome)],
        )
    };
    assert_eq!(n("miss"), 4, "/a once, /c, /d, /e");
    assert_eq!(n("hit"), 1);
    assert_eq!(n("bypass"), 1, "Authorization");
    assert!(
        snap.counter("trl_cache_evictions_total", &[("tier", "memory")]) >= 1,
        "4 KiB hold two 1.5 KiB entries"
    );
    match snap.value("trl_memory_bytes", &[("layer", "response cache")]) {
        Some(DebugValue::Gauge(g)) => assert!(g.into_inner() <= 4096.0 && g.into_inner() > 0.0),
        other => panic!("bytes gauge: {other:?}"),
    }
}
