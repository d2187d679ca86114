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
//!
//! Two lanes ([`Lane`]), each its own stream and retry set: interactive work (uploads) and
//! bulk work (imports). Workers read interactive entries first and give bulk entries a
//! configured share of what they read, so neither starves. An entry is named by a token:
//! its stream id, prefixed `bulk:` in the bulk lane; the token is what the rest of photoq
//! (and the photo row) keeps.

mod scripts;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::RedisConfig;
pub use crate::state::Lane;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";
/// The one field of a job entry.
const FIELD_PHOTO_ID: &str = "photo_id";
/// The optional field of a job entry that carries the W3C traceparent of the photo's trace.
const FIELD_TRACEPARENT: &str = "traceparent";
/// Dead-letter entries kept (approximately) for operators; older ones are trimmed. The
/// dead photos themselves stay in PostgreSQL until redriven.
const DEAD_STREAM_MAXLEN: usize = 10_000;
/// Attempts to connect before a command gives up (each with the connection timeout).
const CONNECT_RETRIES: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
}

impl From<redis::RedisError> for QueueError {
    /// Every Redis error a queue operation meets comes through here, and is counted.
    fn from(e: redis::RedisError) -> Self {
        crate::metrics::redis_error(&e);
        QueueError::Redis(e)
    }
}

/// Names of every key photoq keeps in Redis, all under the configured prefix, which is
/// their hash tag: one prefix lives in one Redis Cluster slot.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The interactive job stream (consumer group [`GROUP`]).
    pub jobs: String,
    /// The bulk job stream (consumer group [`GROUP`]).
    pub bulk: String,
    /// Sorted sets of scheduled retries, one per lane: photo id scored by due time (ms
    /// since the epoch).
    pub delayed: String,
    pub bulk_delayed: String,
    /// Dead-letter stream, for operators.
    pub dead: String,
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            jobs: format!("{{{prefix}}}:jobs"),
            bulk: format!("{{{prefix}}}:bulk"),
            delayed: format!("{{{prefix}}}:delayed"),
            bulk_delayed: format!("{{{prefix}}}:bulk-delayed"),
            dead: format!("{{{prefix}}}:dead"),
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of a lane.
    pub fn stream(&self, lane: Lane) -> &str {
        match lane {
            Lane::Interactive => &self.jobs,
            Lane::Bulk => &self.bulk,
        }
    }

    /// The retry set of a lane.
    pub fn retries(&self, lane: Lane) -> &str {
        match lane {
            Lane::Interactive => &self.delayed,
            Lane::Bulk => &self.bulk_delayed,
        }
    }

    /// Another key under the same prefix and hash tag, e.g. `{photoq}:rate:…`.
    pub fn other(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }
}

/// Prefix of the tokens of bulk entries.
const BULK_TOKEN: &str = "bulk:";

/// The lane and stream id an entry token names.
pub fn locate(token: &str) -> (Lane, &str) {
    match token.strip_prefix(BULK_TOKEN) {
        Some(id) => (Lane::Bulk, id),
        None => (Lane::Interactive, token),
    }
}

/// The token of entry `id` of `lane`.
fn token(lane: Lane, id: &str) -> String {
    match lane {
        Lane::Interactive => id.to_owned(),
        Lane::Bulk => format!("{BULK_TOKEN}{id}"),
    }
}

/// Stream ids by lane, each with its position in `tokens`.
fn by_lane<T: AsRef<str>>(tokens: &[T]) -> [(Lane, Vec<(usize, &str)>); 2] {
    let mut lanes = Lane::ALL.map(|l| (l, Vec::new()));
    for (i, t) in tokens.iter().enumerate() {
        let (lane, id) = locate(t.as_ref());
        let slot = match lane {
            Lane::Interactive => 0,
            Lane::Bulk => 1,
        };
        lanes[slot].1.push((i, id));
    }
    lanes
}

/// A job: process this photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub photo_id: Uuid,
}

/// One entry read from the stream. `job` is an error when the entry is malformed.
#[derive(Debug)]
pub struct Delivery {
    /// The entry's token (see [`locate`]).
    pub entry_id: String,
    pub job: Result<Job, String>,
    /// How many times Redis has delivered this entry, this time included.
    pub deliveries: u32,
    /// The trace the job continues, when its entry carries one.
    pub traceparent: Option<String>,
}

impl Delivery {
    fn from_entry(lane: Lane, entry: StreamId) -> Self {
        Delivery {
            traceparent: entry.get(FIELD_TRACEPARENT),
            job: parse_job(entry.map.get(FIELD_PHOTO_ID)),
            entry_id: token(lane, &entry.id),
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
    /// "Changes staged" notices (to the event sequencer) and "events appended" notices
    /// (to the API processes' feeds).
    notices: Arc<[Notifier; 2]>,
}

/// Publishes notices on one pub/sub channel from a background task (started on first use,
/// and again if the runtime it ran on has stopped); notices asked for while one is on its
/// way fold into the next.
struct Notifier {
    channel: String,
    wake: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<()>>>,
}

impl Notifier {
    fn new(channel: String) -> Self {
        Notifier {
            channel,
            wake: std::sync::Mutex::new(None),
        }
    }

    /// Never waits.
    fn notify(&self, conn: &LazyConn) {
        let mut slot = match self.wake.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = slot.as_ref() {
            match tx.try_send(()) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(())) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => {}
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // The connection and the channel only: the task ends when the queue's last handle
        // (holding the sender) goes.
        let lazy = conn.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let sent: Result<(), QueueError> = async {
                    let mut conn = lazy.get().await?;
                    let _: i64 = conn.publish(&channel, 1).await?;
                    Ok(())
                }
                .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, %channel, "notice not published");
                }
            }
        });
        let _ = tx.try_send(());
        *slot = Some(tx);
    }
}

impl Queue {
    /// Does not contact Redis; the connection is made on first use.
    pub fn new(config: &RedisConfig) -> Result<Self, QueueError> {
        let keys = Keys::new(&config.prefix);
        Ok(Queue {
            conn: LazyConn::new(config, Duration::from_secs(config.response_timeout_secs))?,
            notices: Arc::new([
                Notifier::new(keys.other("changes")),
                Notifier::new(keys.other("events")),
            ]),
            keys,
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
        for lane in Lane::ALL {
            let res: Result<(), _> = conn
                .xgroup_create_mkstream(self.keys.stream(lane), GROUP, "0")
                .await;
            match res {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Puts jobs on a lane's stream in one round trip; returns each one's entry token, in
    /// order.
    pub async fn enqueue(&self, lane: Lane, photo_ids: &[Uuid]) -> Result<Vec<String>, QueueError> {
        let jobs: Vec<(Uuid, Option<&str>)> = photo_ids.iter().map(|id| (*id, None)).collect();
        self.enqueue_traced(lane, &jobs).await
    }

    /// As [`Queue::enqueue`], each entry carrying its photo's traceparent where given.
    pub async fn enqueue_traced(
        &self,
        lane: Lane,
        jobs: &[(Uuid, Option<&str>)],
    ) -> Result<Vec<String>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ENQUEUE.key(self.keys.stream(lane));
        for (id, traceparent) in jobs {
            invocation
                .arg(id.to_string())
                .arg(traceparent.unwrap_or(""));
        }
        let ids: Vec<String> = invocation.invoke_async(&mut conn).await?;
        Ok(ids.iter().map(|id| token(lane, id)).collect())
    }

    /// Schedules a photo's next attempt at `due_ms` (milliseconds since the Unix epoch), in
    /// the lane of the entry it came from.
    pub async fn schedule(
        &self,
        entry: &str,
        photo_id: Uuid,
        due_ms: i64,
    ) -> Result<(), QueueError> {
        let (lane, _) = locate(entry);
        let mut conn = self.conn.get().await?;
        let _: i64 = conn
            .zadd(self.keys.retries(lane), photo_id.to_string(), due_ms)
            .await?;
        Ok(())
    }

    /// Moves up to `limit` retries per lane due by `now_ms` onto their streams; returns how
    /// many.
    pub async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut moved = 0;
        for lane in Lane::ALL {
            let n: usize = scripts::PROMOTE
                .key(self.keys.retries(lane))
                .key(self.keys.stream(lane))
                .arg(now_ms)
                .arg(limit)
                .invoke_async(&mut conn)
                .await?;
            moved += n;
        }
        Ok(moved)
    }

    pub async fn ack(&self, entry_id: &str) -> Result<(), QueueError> {
        self.ack_many(&[entry_id]).await
    }

    /// Acknowledges and deletes several entries, one round trip per lane.
    pub async fn ack_many(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.get().await?;
        for (lane, ids) in by_lane(entry_ids) {
            if ids.is_empty() {
                continue;
            }
            let mut invocation = scripts::ACK.key(self.keys.stream(lane));
            invocation.arg(GROUP);
            for (_, id) in ids {
                invocation.arg(id);
            }
            let _: i64 = invocation.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Puts the job back at the end of its stream and acknowledges the old entry,
    /// atomically: it is delivered again at once, to whichever worker reads next. Returns
    /// the new entry's token.
    pub async fn hand_back(&self, entry_id: &str, photo_id: Uuid) -> Result<String, QueueError> {
        let (lane, id) = locate(entry_id);
        let mut conn = self.conn.get().await?;
        let new: String = scripts::HAND_BACK
            .key(self.keys.stream(lane))
            .arg(GROUP)
            .arg(id)
            .arg(photo_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(token(lane, &new))
    }

    /// Records a dead letter for operators and, if the job came from an entry, acknowledges
    /// it, atomically.
    pub async fn dead_letter(
        &self,
        entry_id: Option<&str>,
        photo_id: Uuid,
        reason: &str,
    ) -> Result<(), QueueError> {
        let (lane, id) = entry_id.map_or((Lane::Interactive, ""), locate);
        let mut conn = self.conn.get().await?;
        let _: Value = scripts::DEAD_LETTER
            .key(self.keys.stream(lane))
            .key(&self.keys.dead)
            .arg(GROUP)
            .arg(id)
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
        let mut out = vec![EntryStatus::Gone; entry_ids.len()];
        for (lane, ids) in by_lane(entry_ids) {
            if ids.is_empty() {
                continue;
            }
            let mut invocation = scripts::ENTRY_STATUS.key(self.keys.stream(lane));
            invocation.arg(GROUP);
            for (_, id) in &ids {
                invocation.arg(*id);
            }
            let codes: Vec<i64> = invocation.invoke_async(&mut conn).await?;
            for ((at, _), code) in ids.iter().zip(codes) {
                out[*at] = match code {
                    3 => EntryStatus::Pending,
                    2 => EntryStatus::Orphaned,
                    1 => EntryStatus::Waiting,
                    _ => EntryStatus::Gone,
                };
            }
        }
        Ok(out)
    }

    /// Removes consumers that hold no entries and have been idle for `idle` (their workers
    /// are gone); returns how many.
    pub async fn prune_consumers(&self, idle: Duration) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut removed = 0;
        for lane in Lane::ALL {
            let n: u64 = scripts::PRUNE_CONSUMERS
                .key(self.keys.stream(lane))
                .arg(GROUP)
                .arg(idle.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            removed += n;
        }
        Ok(removed)
    }

    /// Entries in the job streams of both lanes (waiting or in flight).
    pub async fn stream_len(&self) -> Result<u64, QueueError> {
        let mut total = 0;
        for lane in Lane::ALL {
            total += self.lane_len(lane).await?;
        }
        Ok(total)
    }

    /// Entries in one lane's stream.
    pub async fn lane_len(&self, lane: Lane) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(conn.xlen(self.keys.stream(lane)).await?)
    }

    /// The pub/sub channel that tells the event sequencer changes were committed.
    pub fn changes_channel(&self) -> &str {
        &self.notices[0].channel
    }

    /// The pub/sub channel that tells API processes new events are in the log.
    pub fn events_channel(&self) -> &str {
        &self.notices[1].channel
    }

    /// Tells the event sequencer, through Redis pub/sub, that changes were committed; call
    /// it after a transaction that changed photos. Never waits. A lost notice delays
    /// events by at most the sequencer's polling, never loses them: the changes are in
    /// PostgreSQL.
    pub fn changes_written(&self) {
        self.notices[0].notify(&self.conn);
    }

    /// Tells every API process that events were appended to the log (the sequencer calls
    /// it). Never waits; a lost notice delays followers by at most their feed's polling.
    pub fn events_appended(&self) {
        self.notices[1].notify(&self.conn);
    }

    /// A connection of its own for subscribing to pub/sub channels.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, QueueError> {
        Ok(self.conn.client.get_async_pubsub().await?)
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// One lane as the metrics see it.
    pub async fn lane_stats(&self, lane: Lane) -> Result<LaneStats, QueueError> {
        let mut conn = self.conn.get().await?;
        let stream = self.keys.stream(lane);
        let entries: u64 = conn.xlen(stream).await?;
        let pending: redis::streams::StreamPendingReply = conn.xpending(stream, GROUP).await?;
        let scheduled: u64 = conn.zcard(self.keys.retries(lane)).await?;
        Ok(LaneStats {
            entries,
            pending: pending.count() as u64,
            scheduled,
        })
    }

    /// Takes the lease `name` for `holder` if nobody holds it, or renews it if `holder`
    /// does, for `ttl`; true while `holder` holds it. For a role one process at a time
    /// plays.
    pub async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.get().await?;
        let held: i64 = scripts::LEASE
            .key(self.keys.other(name))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    /// Entries delivered to a consumer and not yet acknowledged, in both lanes.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let mut total = 0;
        for lane in Lane::ALL {
            total += self.lane_stats(lane).await?.pending;
        }
        Ok(total)
    }

    /// Retries waiting in the delayed sets.
    pub async fn scheduled(&self) -> Result<u64, QueueError> {
        let mut total = 0;
        for lane in Lane::ALL {
            total += self.lane_stats(lane).await?.scheduled;
        }
        Ok(total)
    }

    /// Entries in the dead-letter stream.
    pub async fn dead_letters(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        Ok(conn.xlen(&self.keys.dead).await?)
    }

    /// The workers the consumer group knows in `lane`: name, entries delivered to them and
    /// not acknowledged, and how long since each last read or claimed.
    pub async fn consumers(&self, lane: Lane) -> Result<Vec<ConsumerInfo>, QueueError> {
        let mut conn = self.conn.get().await?;
        let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> =
            conn.xinfo_consumers(self.keys.stream(lane), GROUP).await;
        match reply {
            Ok(reply) => Ok(reply
                .consumers
                .into_iter()
                .map(|c| ConsumerInfo {
                    name: c.name,
                    pending: c.pending as u64,
                    idle: Duration::from_millis(c.idle as u64),
                })
                .collect()),
            // No group yet: nobody has consumed.
            Err(e) if is_nogroup(&e) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

/// How long per-minute error counts are kept, minutes.
pub const ERROR_WINDOW_MINUTES: u64 = 60;

impl Queue {
    /// Counts an attempt that ended in error `code`, in this minute's tally (kept for
    /// [`ERROR_WINDOW_MINUTES`]); operators see the sums per code.
    pub async fn count_error(&self, code: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let key = self.error_key(chrono::Utc::now().timestamp() as u64 / 60);
        redis::pipe()
            .hincr(&key, code, 1)
            .ignore()
            .expire(&key, (ERROR_WINDOW_MINUTES * 60 + 60) as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Attempts ended in each error code over the last [`ERROR_WINDOW_MINUTES`], most
    /// frequent first.
    pub async fn recent_errors(&self) -> Result<Vec<(String, u64)>, QueueError> {
        let mut conn = self.conn.get().await?;
        let now = chrono::Utc::now().timestamp() as u64 / 60;
        let mut pipe = redis::pipe();
        for minute in (now + 1 - ERROR_WINDOW_MINUTES)..=now {
            pipe.hgetall(self.error_key(minute));
        }
        let tallies: Vec<std::collections::HashMap<String, u64>> =
            pipe.query_async(&mut conn).await?;
        let mut sums = std::collections::BTreeMap::<String, u64>::new();
        for (code, n) in tallies.into_iter().flatten() {
            *sums.entry(code).or_default() += n;
        }
        let mut sums: Vec<(String, u64)> = sums.into_iter().collect();
        sums.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(sums)
    }

    fn error_key(&self, minute: u64) -> String {
        self.keys.other(&format!("errors:{minute}"))
    }
}

/// A worker that read or claimed within this long counts as active.
pub const ACTIVE_WITHIN: Duration = Duration::from_secs(60);

/// A worker as the consumer group sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    pub idle: Duration,
}

impl ConsumerInfo {
    /// Read or claimed within [`ACTIVE_WITHIN`].
    pub fn active(&self) -> bool {
        self.idle < ACTIVE_WITHIN
    }
}

/// A lane's stream: `entries` waiting or delivered (acknowledged entries are deleted),
/// `pending` of them delivered and not yet acknowledged, retries `scheduled` for later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub entries: u64,
    pub pending: u64,
    pub scheduled: u64,
}

impl LaneStats {
    /// Entries not yet delivered to any worker: the consumer group's lag.
    pub fn waiting(&self) -> u64 {
        self.entries.saturating_sub(self.pending)
    }
}

/// A worker's own side of the streams: reads (on a connection of its own, since XREADGROUP
/// BLOCK holds it), take-overs and heartbeats under its consumer name.
pub struct Consumer {
    reader: LazyConn,
    queue: Queue,
    name: String,
    block_ms: u64,
    /// Share of reads owed to the bulk lane while both lanes have work (0 to 1).
    bulk_share: f64,
    /// Bulk entries owed: grows by `bulk_share` per entry read, shrinks by one per bulk
    /// entry read, kept between 0 and 1.
    bulk_credit: std::sync::Mutex<f64>,
}

/// Share of reads the bulk lane gets when nothing else is set.
pub const DEFAULT_BULK_SHARE: f64 = 0.2;

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
            bulk_share: DEFAULT_BULK_SHARE,
            bulk_credit: std::sync::Mutex::new(0.0),
        })
    }

    /// The share of reads the bulk lane gets while interactive work waits too.
    pub fn with_bulk_share(mut self, share: f64) -> Self {
        self.bulk_share = share.clamp(0.0, 1.0);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads up to `count` new entries: interactive ones first, bulk ones with what is
    /// left, and bulk ones first when the bulk lane is owed its share. When both lanes are
    /// empty, blocks up to the configured time for the first entry of either. Recreates the
    /// groups if Redis lost them.
    pub async fn read(&self, count: usize) -> Result<Vec<Delivery>, QueueError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let owed = {
            let credit = self.bulk_credit.lock().unwrap_or_else(|p| p.into_inner());
            (*credit as usize).min(count)
        };
        let mut conn = self.queue.conn.get().await?;
        let reply: Result<Vec<(String, String, String, String)>, _> = scripts::READ
            .key(&self.queue.keys.jobs)
            .key(&self.queue.keys.bulk)
            .arg(GROUP)
            .arg(&self.name)
            .arg(owed)
            .arg(count)
            .invoke_async(&mut conn)
            .await;
        let entries = match reply {
            Err(e) if is_nogroup(&e) => {
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let deliveries: Vec<Delivery> = entries
            .into_iter()
            .map(|(lane, id, photo, trace)| {
                let lane = if lane == "bulk" {
                    Lane::Bulk
                } else {
                    Lane::Interactive
                };
                Delivery {
                    job: parse_job(Some(&Value::BulkString(photo.into_bytes()))),
                    entry_id: token(lane, &id),
                    deliveries: 1,
                    traceparent: non_empty(trace),
                }
            })
            .collect();
        if deliveries.is_empty() {
            return self.read_blocking(count).await;
        }
        self.settle(&deliveries);
        Ok(deliveries)
    }

    /// Keeps the bulk lane's credit for what was read.
    fn settle(&self, read: &[Delivery]) {
        let bulk = read
            .iter()
            .filter(|d| locate(&d.entry_id).0 == Lane::Bulk)
            .count();
        let mut credit = self.bulk_credit.lock().unwrap_or_else(|p| p.into_inner());
        *credit = (*credit + self.bulk_share * read.len() as f64 - bulk as f64).clamp(0.0, 1.0);
    }

    /// Blocks until either lane has entries. Redis answers up to `count` from each stream;
    /// bulk entries beyond `count` are handed back (put at the end of their stream).
    async fn read_blocking(&self, count: usize) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(count)
            .block(self.block_ms as usize);
        let mut conn = self.reader.get().await?;
        let keys = [&self.queue.keys.jobs, &self.queue.keys.bulk];
        let reply: Result<Option<StreamReadReply>, _> =
            conn.xread_options(&keys, &[">", ">"], &options).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let mut deliveries: Vec<Delivery> = Vec::new();
        for key in reply.into_iter().flat_map(|r| r.keys) {
            let lane = if key.key == self.queue.keys.bulk {
                Lane::Bulk
            } else {
                Lane::Interactive
            };
            deliveries.extend(key.ids.into_iter().map(|e| Delivery::from_entry(lane, e)));
        }
        // Interactive entries first; what does not fit goes back.
        deliveries.sort_by_key(|d| locate(&d.entry_id).0 == Lane::Bulk);
        for extra in deliveries.split_off(count.min(deliveries.len())) {
            if let Ok(job) = &extra.job {
                self.queue.hand_back(&extra.entry_id, job.photo_id).await?;
            } else {
                self.queue.ack(&extra.entry_id).await?;
            }
        }
        self.settle(&deliveries);
        Ok(deliveries)
    }

    /// Takes over up to `count` entries that other consumers left unacknowledged for longer
    /// than `min_idle` (their worker is presumed dead), with their delivery counts;
    /// interactive ones first.
    pub async fn take_over(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.queue.conn.get().await?;
        let mut out = Vec::new();
        for lane in Lane::ALL {
            let want = count - out.len();
            if want == 0 {
                break;
            }
            let reply: Result<Vec<(String, String, u32, String)>, _> = scripts::TAKE_OVER
                .key(self.queue.keys.stream(lane))
                .arg(GROUP)
                .arg(&self.name)
                .arg(min_idle.as_millis() as u64)
                .arg(want)
                .invoke_async(&mut conn)
                .await;
            let reply = match reply {
                Err(e) if e.code() == Some("NOGROUP") || is_nogroup(&e) => continue,
                other => other?,
            };
            out.extend(
                reply
                    .into_iter()
                    .map(|(entry_id, photo, deliveries, trace)| Delivery {
                        job: parse_job(Some(&Value::BulkString(photo.into_bytes()))),
                        entry_id: token(lane, &entry_id),
                        deliveries,
                        traceparent: non_empty(trace),
                    }),
            );
        }
        Ok(out)
    }

    /// Acknowledges and deletes those of `entry_ids` this consumer still holds; entries
    /// another consumer has taken over are left to it.
    pub async fn release(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.queue.conn.get().await?;
        for (lane, ids) in by_lane(entry_ids) {
            if ids.is_empty() {
                continue;
            }
            let mut invocation = scripts::RELEASE.key(self.queue.keys.stream(lane));
            invocation.arg(GROUP).arg(&self.name);
            for (_, id) in ids {
                invocation.arg(id);
            }
            let _: i64 = invocation.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Renews this consumer's claim on an entry it is still working on, so it is not taken
    /// over; does not count as a delivery. False when another consumer has taken the entry
    /// over meanwhile: this worker's attempt is stale.
    pub async fn heartbeat(&self, entry_id: &str) -> Result<bool, QueueError> {
        let (lane, id) = locate(entry_id);
        let mut conn = self.queue.conn.get().await?;
        let renewed: i64 = scripts::HEARTBEAT
            .key(self.queue.keys.stream(lane))
            .arg(GROUP)
            .arg(&self.name)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(renewed == 1)
    }
}

/// Errors raised inside a script carry the command's error text, not its code.
fn is_nogroup(e: &redis::RedisError) -> bool {
    e.to_string().contains("NOGROUP")
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
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
    fn tokens_name_the_lane() {
        assert_eq!(locate("1-0"), (Lane::Interactive, "1-0"));
        assert_eq!(locate(&token(Lane::Bulk, "1-0")), (Lane::Bulk, "1-0"));
        let lanes = by_lane(&["1-0", "bulk:2-0", "3-0"]);
        assert_eq!(lanes[0].1, [(0, "1-0"), (2, "3-0")]);
        assert_eq!(lanes[1].1, [(1, "2-0")]);
    }

    #[test]
    fn parses_job_entries() {
        let id = Uuid::now_v7();
        let ok = parse_job(Some(&Value::BulkString(id.to_string().into_bytes())));
        assert_eq!(ok, Ok(Job { photo_id: id }));
        assert!(parse_job(None).is_err());
        assert!(parse_job(Some(&Value::BulkString(b"nope".to_vec()))).is_err());
    }
}
