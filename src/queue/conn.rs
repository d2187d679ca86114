//! Connections to Redis: one server, or a Redis Cluster given some of its nodes. Both are
//! made on first use (photoq starts, and accepts uploads, while Redis is down) and
//! reconnect by themselves; a cluster connection follows slot moves and failovers.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Mutex;

use super::QueueError;
use crate::config::RedisConfig;

/// Attempts to connect before a command gives up (each with the connection timeout).
const CONNECT_RETRIES: usize = 1;
/// Times a command on a cluster is tried again while slots move or a replica is promoted
/// (with waits growing to a few seconds: long enough for a failover to complete).
const CLUSTER_RETRIES: u32 = 8;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 2_000;

/// A connection to either kind of deployment; cheap to clone, shared by concurrent users.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
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
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
enum Target {
    Single(redis::Client, ConnectionManagerConfig),
    /// The client, and one plain client per seed node for pub/sub (a message published on
    /// any node of a cluster reaches subscribers on every node).
    Cluster(ClusterClient, Arc<[redis::Client]>),
}

/// A connection made on first use; once made it reconnects by itself.
#[derive(Clone)]
pub(crate) struct LazyConn {
    target: Target,
    conn: Arc<Mutex<Option<RedisConn>>>,
}

impl LazyConn {
    /// `response_timeout` bounds every reply (a blocking read's included).
    pub(crate) fn new(
        config: &RedisConfig,
        response_timeout: Duration,
    ) -> Result<Self, QueueError> {
        let connect_timeout = Duration::from_secs(config.response_timeout_secs);
        let target = if config.cluster {
            let urls = config.urls();
            let client = ClusterClient::builder(urls.clone())
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                .retries(CLUSTER_RETRIES)
                .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
                .build()?;
            let seeds = urls
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<Result<Vec<_>, _>>()?;
            Target::Cluster(client, seeds.into())
        } else {
            let client = redis::Client::open(config.url.as_str())?;
            let manager = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(connect_timeout))
                .set_number_of_retries(CONNECT_RETRIES);
            Target::Single(client, manager)
        };
        Ok(LazyConn {
            target,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    pub(crate) async fn get(&self) -> Result<RedisConn, QueueError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client, config) => RedisConn::Single(
                ConnectionManager::new_with_config(client.clone(), config.clone()).await?,
            ),
            Target::Cluster(client, _) => RedisConn::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A connection of its own for subscribing to pub/sub channels: to the server, or to
    /// the first cluster node that answers.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, QueueError> {
        match &self.target {
            Target::Single(client, _) => Ok(client.get_async_pubsub().await?),
            Target::Cluster(_, seeds) => {
                let mut last = None;
                for seed in seeds.iter() {
                    match seed.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last
                    .unwrap_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Client, "no cluster nodes"))
                    })
                    .into())
            }
        }
    }
}
