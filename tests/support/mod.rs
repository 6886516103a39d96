//! Test support: a real `redis-server` per test binary (or `TEST_REDIS_URL`),
//! dedicated servers for fault tests, and the conformance macro that runs one
//! behaviour test against every store.
#![allow(dead_code)]

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod http;
pub mod server;

use std::sync::atomic::{AtomicU32, Ordering};

use tower_redis_layers::{MemoryStore, RedisStore};

#[allow(unused_imports)]
pub use server::RedisServer;

/// Web-cache-poisoning vectors: request headers (and a `Host`) that an
/// origin may reflect or act on but that a clean client does not send.
pub const POISON_VECTORS: &[(&str, &str)] = &[
    ("host", "evil.example"),
    ("forwarded", "host=evil.example;proto=http"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-scheme", "http"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-prefix", "/evil"),
    ("x-forwarded-server", "evil.example"),
    ("x-host", "evil.example"),
    ("x-original-url", "/admin"),
    ("x-rewrite-url", "/admin"),
    ("x-http-method-override", "DELETE"),
    ("x-http-method", "DELETE"),
    ("x-method-override", "DELETE"),
    ("cookie", "session=alice"),
];

/// A page reflecting every poisoning vector the request carries, as apps
/// do with `Host`, `X-Forwarded-*` and the like: `page host=... ...`.
pub fn reflected_page(headers: &::http::HeaderMap) -> String {
    let mut page = String::from("page");
    for (name, _) in POISON_VECTORS {
        if let Some(v) = headers.get(*name) {
            page.push_str(&format!(" {name}={}", v.to_str().unwrap()));
        }
    }
    page
}

/// The Redis server shared by the tests of this binary.
pub fn redis_url() -> String {
    server::shared_url()
}

/// A key prefix no other test of this run uses.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &name[..name.len().min(32)]
    )
}

/// A store on the shared server with a prefix of its own.
pub async fn redis_store(name: &str) -> RedisStore {
    RedisStore::builder(redis_url())
        .prefix(unique_prefix(name))
        .deadline(std::time::Duration::from_secs(2))
        .ping_on_connect(true)
        .connect()
        .await
        .expect("connect to the test redis-server")
}

/// Several stores (as several instances would have) sharing one prefix.
pub async fn redis_fleet(name: &str, n: usize) -> Vec<RedisStore> {
    fleet_at(&redis_url(), &unique_prefix(name), n).await
}

/// Several stores on the Redis at `url`, sharing `prefix`.
pub async fn fleet_at(url: &str, prefix: &str, n: usize) -> Vec<RedisStore> {
    let mut stores = Vec::new();
    for _ in 0..n {
        stores.push(
            RedisStore::builder(url)
                .prefix(prefix)
                .deadline(std::time::Duration::from_secs(2))
                .ping_on_connect(true)
                .connect()
                .await
                .expect("connect to the test redis-server"),
        );
    }
    stores
}

/// A store on the shared 3-master cluster with a prefix of its own.
#[cfg(feature = "cluster")]
pub async fn cluster_store(name: &str) -> RedisStore {
    RedisStore::cluster_builder(cluster::shared_cluster_urls())
        .prefix(unique_prefix(name))
        .deadline(std::time::Duration::from_secs(2))
        .connect_timeout(std::time::Duration::from_secs(2))
        .ping_on_connect(true)
        .connect()
        .await
        .expect("connect to the test cluster")
}

pub fn memory_store(_name: &str) -> MemoryStore {
    MemoryStore::new()
}

/// `CLIENT PAUSE ms ALL` on the Redis at `url`: it holds every client's
/// commands, unanswered, for `ms`.
pub async fn pause_clients(url: &str, ms: u64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Sum of `calls` for the commands of `INFO commandstats` matching `pred`.
pub async fn command_calls(url: &str, pred: impl Fn(&str) -> bool) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?;
            pred(name).then(|| calls.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// Runs each behaviour test against every store: `MemoryStore`,
/// `RedisStore` on the shared server, and (feature `cluster`) `RedisStore`
/// on the shared 3-master cluster. The body gets `$store` (a fresh store
/// of the home under test) and must only use what both stores offer.
#[macro_export]
macro_rules! conformance {
    ($(async fn $name:ident($store:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test]
                async fn memory() {
                    let $store = $crate::support::memory_store(stringify!($name));
                    $body
                }

                #[tokio::test]
                async fn redis() {
                    let $store = $crate::support::redis_store(stringify!($name)).await;
                    $body
                }

                #[cfg(feature = "cluster")]
                #[tokio::test]
                async fn cluster() {
                    let $store = $crate::support::cluster_store(stringify!($name)).await;
                    $body
                }
            }
        )*
    };
}
