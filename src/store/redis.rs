//! The Redis store: one connection (multiplexed, reconnecting), a key prefix,
//! a deadline on every call and a circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::batch::Batcher;
use super::breaker::BreakerConfig;
use super::conn::{manager_config, Connector, RedisConn};
use super::lane::Lane;
use crate::error::{ConfigError, StoreError};

/// Shared state in Redis for every layer of this crate.
///
/// Cheap to clone: clones share one multiplexed connection. Every call has a
/// deadline (default 50 ms) and goes through a circuit breaker (on a cluster,
/// one per range of 256 hash slots), so a slow or
/// absent Redis costs each request at most the deadline, and nothing once the
/// breaker is open. What a layer does when the store fails is the layer's
/// failure policy.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_redis_layers::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .deadline(Duration::from_millis(30))
///     .ping_on_connect(true)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The lane of calls made through the store itself; each layer opens
    /// its own (own breakers; the cache its own connection too).
    lane: Lane,
    /// Makes the connections of lanes that ask for their own.
    connector: Connector,
    prefix: String,
    breaker: BreakerConfig,
    probe_timeout: Duration,
    /// One batcher per script, created when a layer first asks for it.
    batchers: std::sync::Mutex<Vec<Arc<Batcher>>>,
    /// Clients for dedicated connections (pub/sub): the URL, or every seed
    /// node of a cluster (classic pub/sub is cluster-wide, so any node serves).
    pubsub: Vec<redis::Client>,
}

enum Target {
    Url(String),
    Manager(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "cluster")]
    ClusterConnection(redis::cluster_async::ClusterConnection),
}

/// Builds a [`RedisStore`]; see [`RedisStore::builder`].
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    deadline: Duration,
    connect_timeout: Duration,
    reconnect_retries: usize,
    breaker: BreakerConfig,
    ping: bool,
    client: Option<redis::Client>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("breaker", &self.breaker)
            .field("ping", &self.ping)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Starts building a store that connects to `url` (`redis://host:port/db`,
    /// `rediss://` for TLS when redis-rs is built with it).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Url(url.into()))
    }

    /// Starts building a store on a [`ConnectionManager`] the application
    /// already has (its own retry and timeout settings are kept). Add the
    /// [`redis::Client`] it came from with
    /// [`client`](RedisStoreBuilder::client) so the store can open the
    /// connections it needs besides: the cache's own lane and its L1 tier's
    /// pub/sub subscription. Without it, every layer shares the manager's
    /// connection and the L1 tier stays off.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_redis_layers::{redis, RedisStore};
    ///
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let manager = client.get_connection_manager().await?;
    /// let store = RedisStore::from_connection_manager(manager)
    ///     .client(client)
    ///     .connect()
    ///     .await?;
    /// # drop(store); Ok(()) }
    /// ```
    pub fn from_connection_manager(manager: ConnectionManager) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Manager(manager))
    }

    /// Starts building a store on a Redis Cluster, given the URLs of some of
    /// its nodes (the others are discovered). Same layers, same guarantees:
    /// every script's keys share a hash slot. Feature `cluster`.
    #[cfg(feature = "cluster")]
    pub fn cluster_builder<I, U>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        RedisStoreBuilder::new(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    /// Starts building a store on a cluster connection the application
    /// already has. Feature `cluster`.
    #[cfg(feature = "cluster")]
    pub fn from_cluster_connection(
        conn: redis::cluster_async::ClusterConnection,
    ) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::ClusterConnection(conn))
    }

    /// `true` when the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.lane.is_cluster()
    }

    /// Connects to `url` with the default settings (prefix `trl`, 50 ms deadline).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// The prefix of every key this store writes.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The deadline of every call.
    pub fn deadline(&self) -> Duration {
        self.inner.lane.deadline()
    }

    /// A lane of its own for one layer: its own circuit breakers, so its
    /// failures never open another layer's, and with `own_connection` its own
    /// connection too (when the store can make one: not for a store built
    /// from an application's connection), so its payloads never queue ahead
    /// of another layer's calls.
    pub(crate) fn lane(&self, name: &'static str, own_connection: bool) -> Lane {
        let inner = &self.inner;
        let conn = match own_connection {
            true => inner
                .connector
                .connect()
                .unwrap_or_else(|_| inner.lane.conn()),
            false => inner.lane.conn(),
        };
        Lane::new(
            name,
            conn,
            self.deadline(),
            inner.probe_timeout,
            inner.breaker,
        )
    }

    /// The batcher of `script` on this store (one per script, shared by the
    /// store's clones): layers resolve it once when they are built.
    pub(crate) fn batcher(&self, script: &'static redis::Script) -> Arc<Batcher> {
        let mut batchers = super::memory::lock(&self.inner.batchers);
        if let Some(b) = batchers.iter().find(|b| b.runs(script)) {
            return b.clone();
        }
        let b = Arc::new(Batcher::new(script));
        batchers.push(b.clone());
        b
    }

    /// Clients to open dedicated connections (pub/sub) with: empty when the
    /// store was built from an existing connection.
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.inner.pubsub
    }

    pub(crate) fn conn(&self) -> RedisConn {
        self.inner.lane.conn()
    }
}

impl RedisStoreBuilder {
    fn new(target: Target) -> Self {
        Self {
            target,
            prefix: "trl".to_owned(),
            deadline: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            reconnect_retries: 1,
            breaker: BreakerConfig::default(),
            ping: false,
            client: None,
        }
    }

    /// Prefix of every key (default `trl`): 1-64 characters, no `{` or `}`
    /// (Redis Cluster reads them as a hash tag) and no trailing `:` (the
    /// crate adds the separator). A bad prefix fails `connect()` with
    /// [`StoreErrorKind::Config`](crate::StoreErrorKind::Config).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Deadline of every store call (default 50 ms).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long one connection attempt may take (default 250 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a lost connection is retried per reconnect (default 1).
    /// redis-rs's default of 6 with back-off stalls calls for seconds.
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// Circuit breaker settings.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// The client a store built [`from_connection_manager`](RedisStore::from_connection_manager)
    /// opens its other connections with (the cache's lane, pub/sub). A store
    /// built from a URL has one already.
    pub fn client(mut self, client: redis::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Fail at connect time when Redis does not answer `PING` (default: off,
    /// the store connects lazily and the layers' failure policies apply).
    pub fn ping_on_connect(mut self, ping: bool) -> Self {
        self.ping = ping;
        self
    }

    /// Checks the settings and connects.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        crate::error::check_prefix(&self.prefix).map_err(StoreError::config)?;
        if self.deadline.is_zero() || self.deadline > Duration::from_secs(3600) {
            return Err(StoreError::config(ConfigError::new(
                "the store deadline must be above zero and at most an hour",
            )));
        }
        let mut pubsub = Vec::new();
        let mut connector = Connector::None;
        let conn = match self.target {
            Target::Manager(m) => {
                if let Some(client) = self.client {
                    pubsub.push(client.clone());
                    let config = manager_config(self.reconnect_retries, self.connect_timeout);
                    connector = Connector::Standalone(client, config);
                }
                RedisConn::Standalone(m)
            }
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(StoreError::backend)?;
                pubsub.push(client.clone());
                let config = manager_config(self.reconnect_retries, self.connect_timeout);
                connector = Connector::Standalone(client, config);
                connector.connect().map_err(StoreError::backend)?
            }
            #[cfg(feature = "cluster")]
            Target::ClusterConnection(c) => RedisConn::Cluster(c),
            #[cfg(feature = "cluster")]
            Target::Cluster(nodes) => {
                for node in &nodes {
                    pubsub.push(redis::Client::open(node.as_str()).map_err(StoreError::backend)?);
                }
                let client = redis::cluster::ClusterClient::builder(nodes)
                    .retries(self.reconnect_retries as u32)
                    .max_retry_wait(100)
                    .build()
                    .map_err(StoreError::backend)?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.deadline.max(self.connect_timeout));
                connector = Connector::Cluster(client, config);
                connector.connect().map_err(StoreError::backend)?
            }
        };
        let probe_timeout = self.deadline.max(self.connect_timeout);
        let store = RedisStore {
            inner: Arc::new(Inner {
                lane: Lane::new("store", conn, self.deadline, probe_timeout, self.breaker),
                connector,
                prefix: self.prefix,
                breaker: self.breaker,
                probe_timeout,
                batchers: std::sync::Mutex::default(),
                pubsub,
            }),
        };
        if self.ping {
            let mut conn = store.conn();
            let deadline = store.deadline().max(self.connect_timeout);
            match tokio::time::timeout(deadline, redis::cmd("PING").query_async::<()>(&mut conn))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StoreError::backend(e)),
                Err(_) => return Err(StoreError::timeout(deadline)),
            }
        }
        Ok(store)
    }
}
