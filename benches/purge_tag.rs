//! Purge by tag of many entries on a real `redis-server`, standalone and a
//! 3-master cluster: the time `CacheHandle::purge_tag` (and
//! `soft_purge_tag`) takes, its script calls (one reads the tag, then one
//! per batch of URLs of one hash slot) and the time per batch.
//!
//! ```text
//! cargo bench --features cluster --bench purge_tag              # 10 000 entries, 3 runs per store
//! cargo bench --features cluster --bench purge_tag -- --smoke   # 500 entries, one run
//! ```

#[path = "../tests/support/server.rs"]
#[allow(dead_code)]
mod server;

#[path = "../tests/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tower_redis_layers::cache::{CacheHandle, ResponseCacheLayer, Stored};
use tower_redis_layers::RedisStore;

/// Script calls so far on every node (`INFO commandstats`).
async fn scripts(urls: &[String]) -> u64 {
    let mut n = 0;
    for url in urls {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        n += info
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
    }
    n
}

/// Stores `n` application values tagged `bench`.
async fn fill(handle: &CacheHandle, n: usize) {
    let stored = Stored::ttl(Duration::from_secs(3600)).tag("bench");
    futures_util::stream::iter(0..n)
        .map(|i| {
            let stored = stored.clone();
            async move {
                let value = Bytes::from(format!("value {i}"));
                handle.put(&format!("k{i}"), value, stored).await.unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

struct Row {
    store: &'static str,
    soft: bool,
    took: Duration,
    batches: u64,
}

async fn run(
    store: &'static str,
    redis: RedisStore,
    urls: &[String],
    n: usize,
    runs: usize,
) -> Vec<Row> {
    let handle = ResponseCacheLayer::builder(redis).build().unwrap().handle();
    let mut rows = Vec::new();
    for _ in 0..runs {
        fill(&handle, n).await;
        for soft in [true, false] {
            let before = scripts(urls).await;
            let t = Instant::now();
            let purged = if soft {
                handle.soft_purge_tag("bench").await
            } else {
                handle.purge_tag("bench").await
            };
            let took = t.elapsed();
            assert_eq!(purged.unwrap(), n as u64, "every entry purged");
            // The tag's own read is one call; the rest are URL batches.
            let batches = scripts(urls).await - before - 1;
            rows.push(Row {
                store,
                soft,
                took,
                batches,
            });
        }
    }
    rows
}

#[tokio::main]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (n, runs) = if smoke { (500, 1) } else { (10_000, 3) };
    let single = server::RedisServer::start();
    let redis = RedisStore::builder(single.url())
        .prefix("bench")
        .deadline(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut rows = run("standalone", redis, &[single.url()], n, runs).await;
    let nodes = cluster::RedisCluster::start(3, 0);
    let redis = RedisStore::cluster_builder(nodes.urls())
        .prefix("bench")
        .deadline(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    rows.extend(run("3-master cluster", redis, &nodes.urls(), n, runs).await);

    println!("\npurge by tag of {n} entries, {runs} run(s) each (median)\n");
    println!("| store | purge | time | script calls for URL batches | time per batch |");
    println!("|---|---|---:|---:|---:|");
    for store in ["standalone", "3-master cluster"] {
        for soft in [true, false] {
            let mut mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.store == store && r.soft == soft)
                .collect();
            mine.sort_by_key(|r| r.took);
            let r = mine[mine.len() / 2];
            println!(
                "| {store} | {} | {:.1} ms | {} | {:.0} µs |",
                if soft { "soft" } else { "hard" },
                r.took.as_secs_f64() * 1e3,
                r.batches,
                r.took.as_secs_f64() * 1e6 / r.batches.max(1) as f64,
            );
        }
    }
}
