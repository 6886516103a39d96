//! Two demo processes (the example binary that `cargo test` builds) sharing
//! one Redis: the rate limit, idempotency, cache and stats invariants of the
//! demo's routes hold across them.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::http::call;

struct Demo {
    child: Child,
    addr: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("examples").join("demo");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds the examples; run the tests with cargo test --all-features",
        bin.display()
    );
    bin
}

fn start(redis_url: &str, prefix: &str, envs: &[(&str, &str)]) -> Demo {
    let mut child = Command::new(demo_binary())
        .env("LISTEN", "127.0.0.1:0")
        .env("REDIS_URL", redis_url)
        .env("KEY_PREFIX", prefix)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the demo printed {line:?}"))
        .to_owned();
    Demo { child, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_instances_share_limits_orders_cache_and_stats() {
    fleet_invariants(&support::redis_url()).await;
}

/// The same, with `REDIS_URL` listing the nodes of a Redis Cluster.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_instances_on_a_redis_cluster() {
    fleet_invariants(&support::cluster::shared_cluster_urls().join(",")).await;
}

async fn fleet_invariants(url: &str) {
    let url = url.to_owned();
    let prefix = support::unique_prefix("demo");
    let a = start(&url, &prefix, &[("ORDER_DELAY_MS", "300")]);
    let b = start(&url, &prefix, &[("ORDER_DELAY_MS", "300")]);

    // Rate limit: 5 per 10 s per API key across both instances.
    let mut ok = 0;
    for i in 0..10 {
        let addr = if i % 2 == 0 { &a.addr } else { &b.addr };
        let (status, headers, body) =
            call(addr, "GET", "/api/limited", &[("x-api-key", "fleet")], "").await;
        match status {
            200 => ok += 1,
            429 => {
                assert!(headers.contains_key("retry-after"));
                assert!(headers.contains_key("ratelimit-policy"));
                assert!(headers.contains_key("ratelimit"));
                assert!(body.contains("quota-exceeded"), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 5, "one quota for the fleet");

    // Idempotency: the same key through both instances, concurrently: one order.
    let key = [("idempotency-key", "\"order-1\""), ("x-api-key", "alice")];
    let (first, second) = tokio::join!(
        call(&a.addr, "POST", "/api/orders", &key, "two apples"),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            call(&b.addr, "POST", "/api/orders", &key, "two apples").await
        }
    );
    assert_eq!(first.0, 201);
    assert_eq!(second.0, 409, "in progress on the other instance");
    let (replay_status, replay_headers, replay_body) =
        call(&b.addr, "POST", "/api/orders", &key, "two apples").await;
    assert_eq!(replay_status, 201);
    assert_eq!(replay_headers["idempotent-replayed"], "true");
    assert_eq!(replay_body, first.2);
    let order: serde_json::Value = serde_json::from_str(&first.2).unwrap();
    assert_eq!(order["echo"], "two apples");

    // Cache: 40 concurrent GETs of a cold item through both instances load it once.
    let gets: Vec<_> = (0..40)
        .map(|i| {
            let addr = if i % 2 == 0 {
                a.addr.clone()
            } else {
                b.addr.clone()
            };
            tokio::spawn(async move { call(&addr, "GET", "/api/items/42", &[], "").await })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for g in gets {
        let (status, _, body) = g.await.unwrap();
        assert_eq!(status, 200);
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "every client saw the one load: {bodies:?}");
    let item: serde_json::Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(item["load"], 1);
    assert_eq!(item["version"], "0");

    // A PUT through A invalidates the GET cached for B.
    let (status, _, _) = call(&a.addr, "PUT", "/api/items/42", &[], "v7").await;
    assert_eq!(status, 204);
    let (_, _, body) = call(&b.addr, "GET", "/api/items/42", &[], "").await;
    let item: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(item["version"], "v7");
    assert_eq!(item["load"], 2);

    // Stats are fleet-wide, whichever instance answers.
    for addr in [&a.addr, &b.addr] {
        let (_, _, stats) = call(addr, "GET", "/api/stats", &[], "").await;
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert_eq!(stats["orders"], 1, "{stats}");
        assert_eq!(stats["loads"]["42"], 2, "{stats}");
    }
}

/// A client that gives up after 3 s: a route that has not answered by then
/// is hung (the demo's contract is an answer within a second).
async fn call_within_3s(addr: &str, method: &str, path: &str) -> (u16, http::HeaderMap, String) {
    tokio::time::timeout(Duration::from_secs(3), call(addr, method, path, &[], ""))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} hung: no answer within 3 s"))
}

/// Redis killed under a running demo: the routes that need the demo's own
/// data answer 503 (problem+json) instead of waiting out a reconnect, the
/// rate limit lets requests through, and everything answers from the store
/// again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_data_routes_answer_503_not_hang() {
    let mut redis = support::RedisServer::start();
    let demo = start(
        &redis.url(),
        &support::unique_prefix("demo-down"),
        &[("ITEM_DELAY_MS", "10")],
    );
    assert_eq!(call_within_3s(&demo.addr, "GET", "/api/stats").await.0, 200);
    assert_eq!(
        call_within_3s(&demo.addr, "GET", "/api/items/1").await.0,
        200
    );

    redis.kill();
    for (method, path) in [
        ("GET", "/api/stats"),
        ("GET", "/api/items/1"), // cached before: the cache store is down too
        ("GET", "/api/items/2"),
        ("PUT", "/api/items/2"),
        ("POST", "/api/orders"), // no Idempotency-Key: the handler runs
    ] {
        // Twice: the first call finds the connection broken, the second
        // meets the reconnect attempt.
        for _ in 0..2 {
            let (status, headers, body) = call_within_3s(&demo.addr, method, path).await;
            assert_eq!(status, 503, "{method} {path}: {body}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert!(headers.contains_key("retry-after"), "{method} {path}");
        }
    }
    let (status, _, _) = call_within_3s(&demo.addr, "GET", "/api/limited").await;
    assert_eq!(status, 200, "the rate limit fails open");

    redis.restart();
    let mut status = 0;
    for _ in 0..100 {
        status = call_within_3s(&demo.addr, "GET", "/api/stats").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the demo reconnects once Redis is back");
}

/// `POST /api/orders` commits the order before its `ORDER_DELAY_MS` of
/// further work: the fleet counter shows it while the response is pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_committed_before_the_order_delay() {
    let demo = start(
        &support::redis_url(),
        &support::unique_prefix("demo-commit"),
        &[("ORDER_DELAY_MS", "20000")],
    );
    let addr = demo.addr.clone();
    let pending = tokio::spawn(async move {
        call(
            &addr,
            "POST",
            "/api/orders",
            &[("x-api-key", "bob")],
            "pear",
        )
        .await
    });
    let mut orders = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, _, body) = call_within_3s(&demo.addr, "GET", "/api/stats").await;
        orders = serde_json::from_str::<serde_json::Value>(&body).unwrap()["orders"].clone();
        if orders == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(orders, 1, "the order is counted");
    assert!(
        !pending.is_finished(),
        "while its response is still pending"
    );
    pending.abort();
}

/// `GET /metrics` (Prometheus text): the layers' decision counters and
/// the store latency, with the embedded store and with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_metrics() {
    for url in ["", &support::redis_url()] {
        let demo = start(url, "metrics-demo", &[("ITEM_DELAY_MS", "0")]);
        for _ in 0..7 {
            call(&demo.addr, "GET", "/api/limited", &[("x-api-key", "m")], "").await;
        }
        call(
            &demo.addr,
            "POST",
            "/api/orders",
            &[("idempotency-key", "\"m1\"")],
            "x",
        )
        .await;
        call(
            &demo.addr,
            "POST",
            "/api/orders",
            &[("idempotency-key", "\"m1\"")],
            "x",
        )
        .await;
        call(&demo.addr, "GET", "/api/items/m", &[], "").await;
        let (status, headers, body) = call(&demo.addr, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200);
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        for line in [
            r#"trl_rate_limit_requests_total{scope="limited",plan="default",outcome="allowed"} 5"#,
            r#"trl_rate_limit_requests_total{scope="limited",plan="default",outcome="denied"} 1"#,
            r#"trl_idempotency_requests_total{scope="default",outcome="first_run"} 1"#,
            r#"trl_idempotency_requests_total{scope="default",outcome="replay"} 1"#,
        ] {
            assert!(body.contains(line), "{line} in\n{body}");
        }
        if !url.is_empty() {
            assert!(
                body.contains(
                    r#"trl_store_call_duration_seconds_count{layer="rate limit",outcome="ok"}"#
                ),
                "store latency in\n{body}"
            );
        }
    }
}
