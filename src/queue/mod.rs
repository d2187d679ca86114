//! The Redis Streams transport: stream and group names, enqueue, consume, ack, the delayed
//! set of scheduled retries, take-over of abandoned entries, hand-back and dead letters.
//!
//! Redis is a fast, losable transport; PostgreSQL holds the truth (see `db`). Redis keeps an
//! *epoch*, a random id written with the first job; when Redis comes back without its data
//! the epoch is gone, a new one is written, and the reconciler re-publishes every unfinished
//! job whose recorded epoch differs.

mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::RedisConfig;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";
/// The one field of a job entry.
const FIELD_PHOTO_ID: &str = "photo_id";
/// Dead-letter entries kept (approximately) for operators.
const DEAD_STREAM_MAXLEN: usize = 100_000;
/// Attempts to connect before a command gives up (each with the connection timeout).
const CONNECT_RETRIES: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Names of every key photoq keeps in Redis, all under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The job stream (consumer group [`GROUP`]).
    pub jobs: String,
    /// Sorted set of scheduled retries: photo id scored by due time (ms since the epoch).
    pub delayed: String,
    /// Dead-letter stream, for operators.
    pub dead: String,
    /// The epoch of this Redis's data (see the module docs).
    pub epoch: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            jobs: format!("{prefix}:jobs"),
            delayed: format!("{prefix}:delayed"),
            dead: format!("{prefix}:dead"),
            epoch: format!("{prefix}:epoch"),
        }
    }
}

/// A job: process this photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub photo_id: Uuid,
}

/// One entry read from the stream. `job` is an error when the entry is malformed.
#[derive(Debug)]
pub struct Delivery {
    pub entry_id: String,
    pub job: Result<Job, String>,
}

impl Delivery {
    fn from_entry(entry: StreamId) -> Self {
        Delivery {
            job: parse_job(entry.map.get(FIELD_PHOTO_ID)),
            entry_id: entry.id,
        }
    }
}

/// A Redis connection made on first use, so photoq starts (and accepts uploads) while Redis
/// is down; once made it reconnects by itself.
#[derive(Clone)]
struct LazyConn {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: Arc<Mutex<Option<ConnectionManager>>>,
}

impl LazyConn {
    fn new(config: &RedisConfig, response_timeout: Duration) -> Result<Self, QueueError> {
        let client = redis::Client::open(config.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(config.response_timeout_secs)))
            .set_number_of_retries(CONNECT_RETRIES);
        Ok(LazyConn {
            client,
            config,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    async fn get(&self) -> Result<ConnectionManager, QueueError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn =
            ConnectionManager::new_with_config(self.client.clone(), self.config.clone()).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// A handle for producers (the API), acks and bookkeeping; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    conn: LazyConn,
    keys: Keys,
}

impl Queue {
    /// Does not contact Redis; the connection is made on first use.
    pub fn new(config: &RedisConfig) -> Result<Self, QueueError> {
        Ok(Queue {
            conn: LazyConn::new(config, Duration::from_secs(config.response_timeout_secs))?,
            keys: Keys::new(&config.prefix),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates the stream and the consumer group if they do not exist. The group starts at the
    /// beginning of the stream, so entries added before any worker started are delivered.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let res: Result<(), _> = conn
            .xgroup_create_mkstream(&self.keys.jobs, GROUP, "0")
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The current epoch, written first if Redis has none.
    pub async fn epoch(&self) -> Result<String, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(scripts::EPOCH
            .key(&self.keys.epoch)
            .arg(Uuid::new_v4().to_string())
            .invoke_async(&mut conn)
            .await?)
    }

    /// Puts jobs on the stream in one round trip; returns the epoch they were published in.
    pub async fn enqueue(&self, photo_ids: &[Uuid]) -> Result<String, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ENQUEUE.key(&self.keys.epoch);
        invocation
            .key(&self.keys.jobs)
            .arg(Uuid::new_v4().to_string());
        for id in photo_ids {
            invocation.arg(id.to_string());
        }
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// Schedules a photo's next attempt at `due_ms` (milliseconds since the Unix epoch).
    pub async fn schedule(&self, photo_id: Uuid, due_ms: i64) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: i64 = conn
            .zadd(&self.keys.delayed, photo_id.to_string(), due_ms)
            .await?;
        Ok(())
    }

    /// Moves up to `limit` retries due by `now_ms` onto the stream; returns how many.
    pub async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(scripts::PROMOTE
            .key(&self.keys.delayed)
            .key(&self.keys.jobs)
            .arg(now_ms)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?)
    }

    pub async fn ack(&self, entry_id: &str) -> Result<(), QueueError> {
        self.ack_many(&[entry_id]).await
    }

    /// Acknowledges several entries with one command.
    pub async fn ack_many(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = entry_ids.iter().map(AsRef::as_ref).collect();
        let mut conn = self.conn.get().await?;
        let _: i64 = conn.xack(&self.keys.jobs, GROUP, &ids).await?;
        Ok(())
    }

    /// Puts the job back at the end of the stream and acknowledges the old entry, atomically:
    /// it is delivered again at once, to whichever worker reads next.
    pub async fn hand_back(&self, entry_id: &str, photo_id: Uuid) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: Value = scripts::HAND_BACK
            .key(&self.keys.jobs)
            .arg(GROUP)
            .arg(entry_id)
            .arg(photo_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Records a dead letter for operators and acknowledges the entry, atomically.
    pub async fn dead_letter(
        &self,
        entry_id: &str,
        photo_id: Uuid,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: Value = scripts::DEAD_LETTER
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .arg(GROUP)
            .arg(entry_id)
            .arg(photo_id.to_string())
            .arg(reason)
            .arg(DEAD_STREAM_MAXLEN)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Entries delivered to a consumer and not yet acknowledged.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        let reply: redis::streams::StreamPendingReply =
            conn.xpending(&self.keys.jobs, GROUP).await?;
        Ok(reply.count() as u64)
    }

    /// Retries waiting in the delayed set.
    pub async fn scheduled(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(conn.zcard(&self.keys.delayed).await?)
    }

    /// Entries in the dead-letter stream.
    pub async fn dead_letters(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(conn.xlen(&self.keys.dead).await?)
    }
}

/// A worker's own side of the stream: reads (on a connection of its own, since XREADGROUP
/// BLOCK holds it), take-overs and heartbeats under its consumer name.
pub struct Consumer {
    reader: LazyConn,
    queue: Queue,
    name: String,
    block_ms: u64,
}

impl Consumer {
    pub fn new(config: &RedisConfig, queue: Queue, name: String) -> Result<Self, QueueError> {
        // The read blocks for block_ms; give the reply that much longer to arrive.
        let timeout = Duration::from_millis(config.block_ms)
            + Duration::from_secs(config.response_timeout_secs);
        Ok(Consumer {
            reader: LazyConn::new(config, timeout)?,
            queue,
            name,
            block_ms: config.block_ms,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads up to `count` new entries, blocking up to the configured time for the first.
    /// Recreates the group if Redis lost it.
    pub async fn read(&self, count: usize) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(count)
            .block(self.block_ms as usize);
        let mut conn = self.reader.get().await?;
        let keys = [&self.queue.keys.jobs];
        let reply: Result<Option<StreamReadReply>, _> =
            conn.xread_options(&keys, &[">"], &options).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(Delivery::from_entry)
            .collect())
    }

    /// Takes over up to `count` entries that other consumers left unacknowledged for longer
    /// than `min_idle` (their worker is presumed dead).
    pub async fn take_over(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.queue.conn.get().await?;
        let reply: Result<StreamAutoClaimReply, _> = conn
            .xautoclaim_options(
                &self.queue.keys.jobs,
                GROUP,
                &self.name,
                min_idle.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(count),
            )
            .await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            other => other?,
        };
        Ok(reply
            .claimed
            .into_iter()
            .map(Delivery::from_entry)
            .collect())
    }

    /// Renews this consumer's claim on an entry it is still working on, so it is not taken
    /// over; does not count as a delivery.
    pub async fn heartbeat(&self, entry_id: &str) -> Result<(), QueueError> {
        let mut conn = self.queue.conn.get().await?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.queue.keys.jobs)
            .arg(GROUP)
            .arg(&self.name)
            .arg(0)
            .arg(entry_id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}

fn parse_job(value: Option<&Value>) -> Result<Job, String> {
    let raw = match value {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        Some(other) => return Err(format!("unexpected photo_id value {other:?}")),
        None => return Err("entry has no photo_id".into()),
    };
    Uuid::parse_str(&raw)
        .map(|photo_id| Job { photo_id })
        .map_err(|e| format!("bad photo_id {raw:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_job_entries() {
        let id = Uuid::now_v7();
        let ok = parse_job(Some(&Value::BulkString(id.to_string().into_bytes())));
        assert_eq!(ok, Ok(Job { photo_id: id }));
        assert!(parse_job(None).is_err());
        assert!(parse_job(Some(&Value::BulkString(b"nope".to_vec()))).is_err());
    }
}
