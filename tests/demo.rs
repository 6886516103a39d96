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
