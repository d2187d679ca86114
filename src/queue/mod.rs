//! The Redis Streams transport: stream and group names, enqueue, consume, ack, the delayed
//! set of scheduled retries, take-over of abandoned entries, hand-back and dead letters.
//!
//! Redis is a fast, losable transport; PostgreSQL holds the truth (see `db` and `state`).
//! Each photo row records the entry its job was published as; the reconciler (`dispatch`)
//! asks Redis about those entries one by one and publishes again any job whose entry is
//! gone, whatever the reason (a flushed or failed-over Redis, a deleted or trimmed stream).
//! Acknowledged entries are deleted, so the stream holds only work not yet done.
//!
//! Every key of a prefix carries the same hash tag (`{prefix}:jobs`, ...), so the scripts,
//! which touch several keys at once, also run on a Redis Cluster.

mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::RedisConfig;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";
/// The one field of a job entry.
const FIELD_PHOTO_ID: &str = "photo_id";
/// Dead-letter entries kept (approximately) for operators; older ones are trimmed. The
/// dead photos themselves stay in PostgreSQL until redriven.
const DEAD_STREAM_MAXLEN: usize = 10_000;
/// Attempts to connect before a command gives up (each with the connection timeout).
const CONNECT_RETRIES: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Names of every key photoq keeps in Redis, all under the configured prefix, which is
/// their hash tag: one prefix lives in one Redis Cluster slot.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The job stream (consumer group [`GROUP`]).
    pub jobs: String,
    /// Sorted set of scheduled retries: photo id scored by due time (ms since the epoch).
    pub delayed: String,
    /// Dead-letter stream, for operators.
    pub dead: String,
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            jobs: format!("{{{prefix}}}:jobs"),
            delayed: format!("{{{prefix}}}:delayed"),
            dead: format!("{{{prefix}}}:dead"),
            prefix: prefix.to_owned(),
        }
    }

    /// Another key under the same prefix and hash tag, e.g. `{photoq}:rate:…`.
    pub fn other(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
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
    /// How many times Redis has delivered this entry, this time included.
    pub deliveries: u32,
}

impl Delivery {
    fn from_entry(entry: StreamId) -> Self {
        Delivery {
            job: parse_job(entry.map.get(FIELD_PHOTO_ID)),
            entry_id: entry.id,
            deliveries: 1,
        }
    }
}

/// Where a published entry stands, as far as Redis knows (see [`Queue::entry_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// Not in the stream (acknowledged, trimmed, or lost with Redis's data).
    Gone,
    /// In the stream, not delivered yet.
    Waiting,
    /// In the stream, delivered, but pending with no consumer.
    Orphaned,
    /// Delivered and pending with a consumer.
    Pending,
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

    /// The shared connection, for other users of photoq's Redis keys (`limits`).
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, QueueError> {
        self.conn.get().await
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

    /// Puts jobs on the stream in one round trip; returns each one's entry id, in order.
    pub async fn enqueue(&self, photo_ids: &[Uuid]) -> Result<Vec<String>, QueueError> {
        if photo_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ENQUEUE.key(&self.keys.jobs);
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

    /// Acknowledges and deletes several entries in one round trip.
    pub async fn ack_many(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ACK.key(&self.keys.jobs);
        invocation.arg(GROUP);
        for id in entry_ids {
            invocation.arg(id.as_ref());
        }
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Puts the job back at the end of the stream and acknowledges the old entry, atomically:
    /// it is delivered again at once, to whichever worker reads next. Returns the new entry.
    pub async fn hand_back(&self, entry_id: &str, photo_id: Uuid) -> Result<String, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(scripts::HAND_BACK
            .key(&self.keys.jobs)
            .arg(GROUP)
            .arg(entry_id)
            .arg(photo_id.to_string())
            .invoke_async(&mut conn)
            .await?)
    }

    /// Records a dead letter for operators and, if the job came from an entry, acknowledges
    /// it, atomically.
    pub async fn dead_letter(
        &self,
        entry_id: Option<&str>,
        photo_id: Uuid,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: Value = scripts::DEAD_LETTER
            .key(&self.keys.jobs)
            .key(&self.keys.dead)
            .arg(GROUP)
            .arg(entry_id.unwrap_or(""))
            .arg(photo_id.to_string())
            .arg(reason)
            .arg(DEAD_STREAM_MAXLEN)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Where each of these entries stands (one answer per entry, in order).
    pub async fn entry_status(&self, entry_ids: &[&str]) -> Result<Vec<EntryStatus>, QueueError> {
        if entry_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ENTRY_STATUS.key(&self.keys.jobs);
        invocation.arg(GROUP);
        for id in entry_ids {
            invocation.arg(*id);
        }
        let codes: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        Ok(codes
            .into_iter()
            .map(|c| match c {
                3 => EntryStatus::Pending,
                2 => EntryStatus::Orphaned,
                1 => EntryStatus::Waiting,
                _ => EntryStatus::Gone,
            })
            .collect())
    }

    /// Removes consumers that hold no entries and have been idle for `idle` (their workers
    /// are gone); returns how many.
    pub async fn prune_consumers(&self, idle: Duration) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(scripts::PRUNE_CONSUMERS
            .key(&self.keys.jobs)
            .arg(GROUP)
            .arg(idle.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Entries in the job stream (waiting or in flight).
    pub async fn stream_len(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(conn.xlen(&self.keys.jobs).await?)
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
    /// than `min_idle` (their worker is presumed dead), with their delivery counts.
    pub async fn take_over(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.queue.conn.get().await?;
        let reply: Result<Vec<(String, String, u32)>, _> = scripts::TAKE_OVER
            .key(&self.queue.keys.jobs)
            .arg(GROUP)
            .arg(&self.name)
            .arg(min_idle.as_millis() as u64)
            .arg(count)
            .invoke_async(&mut conn)
            .await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") || is_nogroup(&e) => return Ok(Vec::new()),
            other => other?,
        };
        Ok(reply
            .into_iter()
            .map(|(entry_id, photo, deliveries)| Delivery {
                job: parse_job(Some(&Value::BulkString(photo.into_bytes()))),
                entry_id,
                deliveries,
            })
            .collect())
    }

    /// Acknowledges and deletes those of `entry_ids` this consumer still holds; entries
    /// another consumer has taken over are left to it.
    pub async fn release(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.queue.conn.get().await?;
        let mut invocation = scripts::RELEASE.key(&self.queue.keys.jobs);
        invocation.arg(GROUP).arg(&self.name);
        for id in entry_ids {
            invocation.arg(id.as_ref());
        }
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Renews this consumer's claim on an entry it is still working on, so it is not taken
    /// over; does not count as a delivery. False when another consumer has taken the entry
    /// over meanwhile: this worker's attempt is stale.
    pub async fn heartbeat(&self, entry_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.queue.conn.get().await?;
        let renewed: i64 = scripts::HEARTBEAT
            .key(&self.queue.keys.jobs)
            .arg(GROUP)
            .arg(&self.name)
            .arg(entry_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }
}

/// Errors raised inside a script carry the command's error text, not its code.
fn is_nogroup(e: &redis::RedisError) -> bool {
    e.to_string().contains("NOGROUP")
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
