//! The Redis store: one connection (multiplexed, reconnecting), a key prefix,
//! a deadline on every call and a circuit breaker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::batch::Batcher;
use super::breaker::{Breaker, BreakerConfig};
use crate::error::{ConfigError, StoreError};

/// Shared state in Redis for every layer of this crate.
///
/// Cheap to clone: clones share one multiplexed connection. Every call has a
/// deadline (default 50 ms) and goes through a circuit breaker, so a slow or
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
    conn: RedisConn,
    prefix: String,
    deadline: Duration,
    breaker: Breaker,
    rate_limit: Batcher,
    /// For dedicated connections (pub/sub); `None` on an application's manager.
    client: Option<redis::Client>,
}

/// The connection a [`RedisStore`] talks through.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Standalone(ConnectionManager),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConn::Standalone(_) => f.write_str("Standalone"),
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
        }
    }
}

enum Target {
    Url(String),
    Manager(ConnectionManager),
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
    /// already has (its own retry and timeout settings are kept).
    pub fn from_connection_manager(manager: ConnectionManager) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Manager(manager))
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
        self.inner.deadline
    }

    pub(crate) fn rate_limit_batcher(&self) -> &Batcher {
        &self.inner.rate_limit
    }

    /// The client to open dedicated connections (pub/sub) with, when the
    /// store was built from a URL.
    pub(crate) fn client(&self) -> Option<&redis::Client> {
        self.inner.client.as_ref()
    }

    pub(crate) fn conn(&self) -> RedisConn {
        self.inner.conn.clone()
    }

    /// Runs one store call under the breaker and the deadline.
    pub(crate) async fn call<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        if !inner.breaker.allow() {
            return Err(StoreError::circuit_open());
        }
        match tokio::time::timeout(inner.deadline, fut).await {
            Ok(Ok(v)) => {
                inner.breaker.record_success();
                Ok(v)
            }
            Ok(Err(e)) => {
                inner.breaker.record_failure();
                Err(StoreError::backend(e))
            }
            Err(_) => {
                inner.breaker.record_failure();
                Err(StoreError::timeout(inner.deadline))
            }
        }
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
        }
    }

    /// Prefix of every key (default `trl`). Must not contain `{` or `}`,
    /// which Redis Cluster reads as a hash tag.
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

    /// Fail at connect time when Redis does not answer `PING` (default: off,
    /// the store connects lazily and the layers' failure policies apply).
    pub fn ping_on_connect(mut self, ping: bool) -> Self {
        self.ping = ping;
        self
    }

    /// Checks the settings and connects.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        validate_prefix(&self.prefix).map_err(StoreError::backend)?;
        if self.deadline.is_zero() {
            return Err(StoreError::backend(ConfigError::new(
                "the store deadline must be above zero",
            )));
        }
        let mut pubsub_client = None;
        let manager = match self.target {
            Target::Manager(m) => m,
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(StoreError::backend)?;
                pubsub_client = Some(client.clone());
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(self.reconnect_retries)
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_max_delay(Duration::from_millis(100));
                ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(StoreError::backend)?
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn: RedisConn::Standalone(manager),
                prefix: self.prefix,
                deadline: self.deadline,
                breaker: Breaker::new(self.breaker),
                rate_limit: Batcher::new(&crate::rate_limit::SCRIPT),
                client: pubsub_client,
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

pub(crate) fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.len() > 64 {
        return Err(ConfigError::new(format!(
            "key prefix {prefix:?} must be 1-64 characters without '{{' or '}}'"
        )));
    }
    Ok(())
}
