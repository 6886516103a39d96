//! The connection a [`RedisStore`](super::RedisStore) talks through: a
//! standalone connection manager or (feature `cluster`) a cluster connection.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use crate::error::ConfigError;

/// The connection a [`RedisStore`] talks through.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Standalone(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConn::Standalone(_) => f.write_str("Standalone"),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl RedisConn {
    /// Runs a keyless command on the node that holds `key`: the one server
    /// of a standalone Redis, the master of `key`'s slot on a cluster (a
    /// keyless command would otherwise go to a random or every node).
    #[cfg_attr(not(feature = "cluster"), allow(unused_variables))]
    pub(crate) async fn query_on_master_of<T: FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match self {
            RedisConn::Standalone(c) => cmd.query_async(c).await,
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(redis::from_redis_value(
                    c.route_command(cmd, routing).await?,
                )?)
            }
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
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
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            #[cfg(feature = "cluster")]
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Few retries and short waits: redis-rs's defaults stall calls for seconds.
pub(crate) fn manager_config(retries: usize, connect_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(retries)
        .set_connection_timeout(Some(connect_timeout))
        .set_max_delay(Duration::from_millis(100))
}

/// What new connections are made from: the store's URL or cluster nodes.
/// None for a store built on an application's connection.
pub(crate) enum Connector {
    None,
    Standalone(redis::Client, ConnectionManagerConfig),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster::ClusterClient, redis::cluster::ClusterConfig),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::None => "None",
            Connector::Standalone(..) => "Standalone",
            #[cfg(feature = "cluster")]
            Connector::Cluster(..) => "Cluster",
        })
    }
}

impl Connector {
    /// A new connection, made lazily: a Redis that is down is a store
    /// failure per call, not an error here.
    pub(crate) fn connect(&self) -> Result<RedisConn, ConfigError> {
        match self {
            Connector::None => Err(ConfigError::new(
                "a store built on an existing connection makes no other",
            )),
            Connector::Standalone(client, config) => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(RedisConn::Standalone)
                    .map_err(|e| ConfigError::new(e.to_string()))
            }
            // Connects in the background: a cluster that is down at start-up
            // is a store failure per request, like a standalone Redis.
            #[cfg(feature = "cluster")]
            Connector::Cluster(client, config) => Ok(RedisConn::Cluster(
                client.get_pending_async_connection_with_config(config.clone()),
            )),
        }
    }
}
