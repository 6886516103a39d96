//! The demo's own data: order and item-load counters and item versions, in
//! memory or in Redis (so instances sharing one Redis report fleet totals).
//!
//! With Redis, every call has a deadline, like the layers' own store calls:
//! while Redis is down a call fails within [`DEADLINE`] (the route answers
//! 503), never after redis-rs's default reconnect back-off of several seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How long the demo's Redis keys live after their last write.
const TTL_SECS: i64 = 86_400;

/// Deadline of each call on the demo's data.
const DEADLINE: Duration = Duration::from_millis(100);

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub enum DemoData {
    Memory(Arc<Mutex<Memory>>),
    Redis { conn: Conn, prefix: String },
}

/// A standalone or cluster connection. All demo keys share one hash tag, so
/// the atomic pipelines below work on a cluster too.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Default)]
pub struct Memory {
    orders: u64,
    loads: BTreeMap<String, u64>,
    versions: HashMap<String, String>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl DemoData {
    pub async fn connect(url: Option<&str>, prefix: &str) -> Result<Self> {
        match url {
            None => Ok(DemoData::Memory(Arc::default())),
            Some(url) => {
                let conn = if url.contains(',') {
                    #[cfg(feature = "cluster")]
                    {
                        let client = redis::cluster::ClusterClient::builder(url.split(','))
                            .retries(1)
                            .max_retry_wait(100)
                            .connection_timeout(CONNECT_TIMEOUT)
                            .response_timeout(DEADLINE)
                            .build()?;
                        Conn::Cluster(client.get_async_connection().await?)
                    }
                    #[cfg(not(feature = "cluster"))]
                    return Err(
                        "REDIS_URL lists several nodes: build with --features cluster".into(),
                    );
                } else {
                    // One quick retry per reconnect, not six with back-off.
                    let config = ConnectionManagerConfig::new()
                        .set_number_of_retries(1)
                        .set_max_delay(Duration::from_millis(100))
                        .set_connection_timeout(Some(CONNECT_TIMEOUT));
                    let client = redis::Client::open(url)?;
                    Conn::Single(ConnectionManager::new_with_config(client, config).await?)
                };
                Ok(DemoData::Redis {
                    conn,
                    prefix: format!("{prefix}:data:{{data}}"),
                })
            }
        }
    }

    pub async fn next_order(&self) -> Result<u64> {
        match self {
            DemoData::Memory(m) => {
                let mut m = m.lock().unwrap();
                m.orders += 1;
                Ok(m.orders)
            }
            DemoData::Redis { conn, prefix } => {
                let key = format!("{prefix}:orders");
                let (n, _): (u64, bool) = query(
                    redis::pipe().atomic().incr(&key, 1).expire(&key, TTL_SECS),
                    conn,
                )
                .await?;
                Ok(n)
            }
        }
    }

    /// Counts one load of `id` and returns it with the current version.
    pub async fn load_item(&self, id: &str) -> Result<(u64, String)> {
        match self {
            DemoData::Memory(m) => {
                let mut m = m.lock().unwrap();
                let n = m.loads.entry(id.to_owned()).or_default();
                *n += 1;
                let n = *n;
                Ok((n, m.versions.get(id).cloned().unwrap_or_else(|| "0".into())))
            }
            DemoData::Redis { conn, prefix } => {
                let loads = format!("{prefix}:loads");
                let versions = format!("{prefix}:versions");
                let (n, _, v): (u64, bool, Option<String>) = query(
                    redis::pipe()
                        .atomic()
                        .hincr(&loads, id, 1)
                        .expire(&loads, TTL_SECS)
                        .hget(&versions, id),
                    conn,
                )
                .await?;
                Ok((n, v.unwrap_or_else(|| "0".into())))
            }
        }
    }

    pub async fn set_version(&self, id: &str, version: &str) -> Result<()> {
        match self {
            DemoData::Memory(m) => {
                m.lock()
                    .unwrap()
                    .versions
                    .insert(id.to_owned(), version.to_owned());
                Ok(())
            }
            DemoData::Redis { conn, prefix } => {
                let versions = format!("{prefix}:versions");
                let _: (u64, bool) = query(
                    redis::pipe()
                        .atomic()
                        .hset(&versions, id, version)
                        .expire(&versions, TTL_SECS),
                    conn,
                )
                .await?;
                Ok(())
            }
        }
    }

    pub async fn stats(&self) -> Result<(u64, BTreeMap<String, u64>)> {
        match self {
            DemoData::Memory(m) => {
                let m = m.lock().unwrap();
                Ok((m.orders, m.loads.clone()))
            }
            DemoData::Redis { conn, prefix } => {
                // One round trip, so one deadline, for both counters.
                let (orders, loads): (Option<u64>, BTreeMap<String, u64>) = query(
                    redis::pipe()
                        .get(format!("{prefix}:orders"))
                        .hgetall(format!("{prefix}:loads")),
                    conn,
                )
                .await?;
                Ok((orders.unwrap_or(0), loads))
            }
        }
    }
}

/// Runs `pipe` on the demo's connection under [`DEADLINE`].
async fn query<T: redis::FromRedisValue>(pipe: &Pipeline, conn: &Conn) -> Result<T> {
    let mut conn = conn.clone();
    match tokio::time::timeout(DEADLINE, pipe.query_async(&mut conn)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(format!("Redis did not answer within {} ms", DEADLINE.as_millis()).into()),
    }
}
