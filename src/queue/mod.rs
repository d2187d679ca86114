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
//! which touch several keys at once, also run on a Redis Cluster. For capacity on a cluster
//! the job streams can be split in shards (`redis.shards`): shard k > 0 has its streams,
//! retry sets and dead letters under the tag `{prefix:k}`, so in a slot of its own.
//! Producers deal batches out over the shards; every worker reads them all.
//!
//! Two lanes ([`Lane`]), each its own stream and retry set: interactive work (uploads) and
//! bulk work (imports). Workers read interactive entries first and give bulk entries a
//! configured share of what they read, so neither starves. An entry is named by a token:
//! its stream id, prefixed `bulk:` in the bulk lane and `s{k}:` in shard k > 0; the token
//! is what the rest of photoq (and the photo row) keeps.

mod conn;
mod scripts;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use uuid::Uuid;

use conn::LazyConn;
pub use conn::RedisConn;

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
/// Most job stream shards (`redis.shards`).
pub const MAX_SHARDS: u32 = 64;

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

/// Names of the keys of one shard of the queue, all under one hash tag: `{prefix}` for
/// shard 0 (where every other key of photoq lives too), `{prefix:k}` for shard k.
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
    /// The hash tag, without its braces.
    tag: String,
}

impl Keys {
    /// The keys of shard 0.
    pub fn new(prefix: &str) -> Self {
        Self::shard(prefix, 0)
    }

    /// The keys of shard `shard`.
    pub fn shard(prefix: &str, shard: u32) -> Self {
        let tag = if shard == 0 {
            prefix.to_owned()
        } else {
            format!("{prefix}:{shard}")
        };
        Keys {
            jobs: format!("{{{tag}}}:jobs"),
            bulk: format!("{{{tag}}}:bulk"),
            delayed: format!("{{{tag}}}:delayed"),
            bulk_delayed: format!("{{{tag}}}:bulk-delayed"),
            dead: format!("{{{tag}}}:dead"),
            tag,
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

    /// Another key under the same hash tag, e.g. `{photoq}:authfail:…`.
    pub fn other(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.tag)
    }

    /// The request bucket of an owner's keys (`crate::limits`).
    pub fn rate(&self, owner: Uuid) -> String {
        self.other(&format!("rate:{owner}"))
    }
}

/// Prefix of the tokens of bulk entries.
const BULK_TOKEN: &str = "bulk:";
/// Prefix of the tokens of entries in shard k > 0: `s{k}:`.
const SHARD_TOKEN: char = 's';

/// The lane and stream id an entry token names.
pub fn locate(token: &str) -> (Lane, &str) {
    let (_, lane, id) = parse(token);
    (lane, id)
}

/// The shard, lane and stream id an entry token names.
fn parse(token: &str) -> (u32, Lane, &str) {
    let (shard, rest) = token
        .strip_prefix(SHARD_TOKEN)
        .and_then(|t| t.split_once(':'))
        .and_then(|(k, rest)| Some((k.parse::<u32>().ok()?, rest)))
        .unwrap_or((0, token));
    match rest.strip_prefix(BULK_TOKEN) {
        Some(id) => (shard, Lane::Bulk, id),
        None => (shard, Lane::Interactive, rest),
    }
}

/// The token of entry `id` of `lane` in `shard`.
fn token(shard: u32, lane: Lane, id: &str) -> String {
    let shard = if shard == 0 {
        String::new()
    } else {
        format!("{SHARD_TOKEN}{shard}:")
    };
    match lane {
        Lane::Interactive => format!("{shard}{id}"),
        Lane::Bulk => format!("{shard}{BULK_TOKEN}{id}"),
    }
}

/// The stream ids of one shard and lane, each with its position in the tokens grouped.
type Group<'a> = (u32, Lane, Vec<(usize, &'a str)>);

/// Stream ids grouped by shard and lane, each with its position in `tokens`.
fn grouped<T: AsRef<str>>(tokens: &[T]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let (shard, lane, id) = parse(t.as_ref());
        match groups
            .iter_mut()
            .find(|(s, l, _)| *s == shard && *l == lane)
        {
            Some((_, _, ids)) => ids.push((i, id)),
            None => groups.push((shard, lane, vec![(i, id)])),
        }
    }
    groups
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
    /// An entry as the READ and TAKE_OVER scripts return it: its id, its photo id (or ''),
    /// and its traceparent (or '').
    fn from_script(
        shard: u32,
        lane: Lane,
        id: &str,
        photo: String,
        deliveries: u32,
        trace: String,
    ) -> Self {
        Delivery {
            job: parse_job(Some(&Value::BulkString(photo.into_bytes()))),
            entry_id: token(shard, lane, id),
            deliveries,
            traceparent: non_empty(trace),
        }
    }

    fn from_entry(shard: u32, lane: Lane, entry: StreamId) -> Self {
        Delivery {
            traceparent: entry.get(FIELD_TRACEPARENT),
            job: parse_job(entry.map.get(FIELD_PHOTO_ID)),
            entry_id: token(shard, lane, &entry.id),
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

/// A handle for producers (the API), acks and bookkeeping; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    conn: LazyConn,
    prefix: Arc<str>,
    /// The keys of each shard, shard 0 first.
    shards: Arc<[Keys]>,
    /// The shard the next enqueue goes to (modulo their number).
    next_shard: Arc<AtomicUsize>,
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
        let shards: Vec<Keys> = (0..config.shards.max(1))
            .map(|k| Keys::shard(&config.prefix, k))
            .collect();
        Ok(Queue {
            conn: LazyConn::new(config, Duration::from_secs(config.response_timeout_secs))?,
            notices: Arc::new([
                Notifier::new(shards[0].other("changes")),
                Notifier::new(shards[0].other("events")),
            ]),
            prefix: config.prefix.as_str().into(),
            shards: shards.into(),
            next_shard: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The keys of shard 0, under which photoq's other keys live too.
    pub fn keys(&self) -> &Keys {
        &self.shards[0]
    }

    /// The keys of each shard.
    pub fn shards(&self) -> &[Keys] {
        &self.shards
    }

    /// The keys of a shard an entry token names (past the configured number too, for
    /// entries published before it was lowered: they can still be acknowledged).
    fn keys_of(&self, shard: u32) -> Cow<'_, Keys> {
        match self.shards.get(shard as usize) {
            Some(keys) => Cow::Borrowed(keys),
            None => Cow::Owned(Keys::shard(&self.prefix, shard)),
        }
    }

    /// Every shard with its number.
    fn each_shard(&self) -> impl Iterator<Item = (u32, &Keys)> {
        self.shards
            .iter()
            .enumerate()
            .map(|(k, keys)| (k as u32, keys))
    }

    /// The shared connection, for other users of photoq's Redis keys (`limits`).
    pub(crate) async fn connection(&self) -> Result<RedisConn, QueueError> {
        self.conn.get().await
    }

    /// Creates the streams and the consumer groups if they do not exist. A group starts at
    /// the beginning of its stream, so entries added before any worker started are
    /// delivered.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        for (_, keys) in self.each_shard() {
            for lane in Lane::ALL {
                let res: Result<(), _> = conn
                    .xgroup_create_mkstream(keys.stream(lane), GROUP, "0")
                    .await;
                match res {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e.into()),
                }
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
        let shard = (self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len()) as u32;
        let mut conn = self.conn.get().await?;
        let mut invocation = scripts::ENQUEUE.key(self.keys_of(shard).stream(lane));
        for (id, traceparent) in jobs {
            invocation
                .arg(id.to_string())
                .arg(traceparent.unwrap_or(""));
        }
        let ids: Vec<String> = invocation.invoke_async(&mut conn).await?;
        Ok(ids.iter().map(|id| token(shard, lane, id)).collect())
    }

    /// Schedules a photo's next attempt at `due_ms` (milliseconds since the Unix epoch), in
    /// the shard and lane of the entry it came from.
    pub async fn schedule(
        &self,
        entry: &str,
        photo_id: Uuid,
        due_ms: i64,
    ) -> Result<(), QueueError> {
        let (shard, lane, _) = parse(entry);
        let mut conn = self.conn.get().await?;
        let _: i64 = conn
            .zadd(
                self.keys_of(shard).retries(lane),
                photo_id.to_string(),
                due_ms,
            )
            .await?;
        Ok(())
    }

    /// Moves up to `limit` retries per shard and lane due by `now_ms` onto their streams;
    /// returns how many.
    pub async fn promote_due(&self, now_ms: i64, limit: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut moved = 0;
        for (_, keys) in self.each_shard() {
            for lane in Lane::ALL {
                let n: usize = scripts::PROMOTE
                    .key(keys.retries(lane))
                    .key(keys.stream(lane))
                    .arg(now_ms)
                    .arg(limit)
                    .invoke_async(&mut conn)
                    .await?;
                moved += n;
            }
        }
        Ok(moved)
    }

    pub async fn ack(&self, entry_id: &str) -> Result<(), QueueError> {
        self.ack_many(&[entry_id]).await
    }

    /// Acknowledges and deletes several entries, one round trip per shard and lane.
    pub async fn ack_many(&self, entry_ids: &[impl AsRef<str>]) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.get().await?;
        for (shard, lane, ids) in grouped(entry_ids) {
            let mut invocation = scripts::ACK.key(self.keys_of(shard).stream(lane));
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
        let (shard, lane, id) = parse(entry_id);
        let mut conn = self.conn.get().await?;
        let new: String = scripts::HAND_BACK
            .key(self.keys_of(shard).stream(lane))
            .arg(GROUP)
            .arg(id)
            .arg(photo_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(token(shard, lane, &new))
    }

    /// Records a dead letter for operators and, if the job came from an entry, acknowledges
    /// it, atomically.
    pub async fn dead_letter(
        &self,
        entry_id: Option<&str>,
        photo_id: Uuid,
        reason: &str,
    ) -> Result<(), QueueError> {
        let (shard, lane, id) = entry_id.map_or((0, Lane::Interactive, ""), parse);
        let keys = self.keys_of(shard);
        let mut conn = self.conn.get().await?;
        let _: Value = scripts::DEAD_LETTER
            .key(keys.stream(lane))
            .key(&keys.dead)
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
        for (shard, lane, ids) in grouped(entry_ids) {
            // A shard no longer configured is read by no worker: its entries count as
            // gone, so the reconciler publishes their photos again on the shards in use.
            if shard as usize >= self.shards.len() {
                continue;
            }
            let mut invocation = scripts::ENTRY_STATUS.key(self.keys_of(shard).stream(lane));
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
        for (_, keys) in self.each_shard() {
            for lane in Lane::ALL {
                let n: u64 = scripts::PRUNE_CONSUMERS
                    .key(keys.stream(lane))
                    .arg(GROUP)
                    .arg(idle.as_millis() as u64)
                    .invoke_async(&mut conn)
                    .await?;
                removed += n;
            }
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

    /// Entries in one lane's streams (all shards).
    pub async fn lane_len(&self, lane: Lane) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut total = 0;
        for (_, keys) in self.each_shard() {
            total += conn.xlen::<_, u64>(keys.stream(lane)).await?;
        }
        Ok(total)
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
        self.conn.pubsub().await
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// One lane as the metrics see it (all shards).
    pub async fn lane_stats(&self, lane: Lane) -> Result<LaneStats, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut stats = LaneStats::default();
        for (_, keys) in self.each_shard() {
            let stream = keys.stream(lane);
            let entries: u64 = conn.xlen(stream).await?;
            let pending: redis::streams::StreamPendingReply = conn.xpending(stream, GROUP).await?;
            let scheduled: u64 = conn.zcard(keys.retries(lane)).await?;
            stats.entries += entries;
            stats.pending += pending.count() as u64;
            stats.scheduled += scheduled;
        }
        Ok(stats)
    }

    /// Takes the lease `name` for `holder` if nobody holds it, or renews it if `holder`
    /// does, for `ttl`; true while `holder` holds it. For a role one process at a time
    /// plays.
    pub async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.get().await?;
        let held: i64 = scripts::LEASE
            .key(self.keys().other(name))
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

    /// Removes every trace of the photos `ids` and of `owner` from Redis: the photos'
    /// entries in both lanes' streams (acknowledged first) and in the dead letters of every
    /// shard, their scheduled retries, and the owner's request bucket. Walks whole streams:
    /// for erasure (`photoq purge`), not for a hot path. Returns the entries and retries
    /// removed.
    pub async fn forget(&self, ids: &[Uuid], owner: Uuid) -> Result<u64, QueueError> {
        /// Entries read (and retries removed) per command.
        const PAGE: usize = 500;
        let names: std::collections::HashSet<String> = ids.iter().map(Uuid::to_string).collect();
        let listed: Vec<&String> = names.iter().collect();
        let mut conn = self.conn.get().await?;
        let mut removed = 0;
        for (_, keys) in self.each_shard() {
            for lane in Lane::ALL {
                for chunk in listed.chunks(PAGE) {
                    removed += conn.zrem::<_, _, u64>(keys.retries(lane), chunk).await?;
                }
            }
            let streams = [
                (keys.stream(Lane::Interactive), true),
                (keys.stream(Lane::Bulk), true),
                (keys.dead.as_str(), false),
            ];
            for (stream, grouped) in streams {
                let mut start = "-".to_owned();
                loop {
                    let page: redis::streams::StreamRangeReply =
                        conn.xrange_count(stream, &start, "+", PAGE).await?;
                    let Some(last) = page.ids.last() else { break };
                    start = format!("({}", last.id);
                    let theirs: Vec<&str> = page
                        .ids
                        .iter()
                        .filter(|e| {
                            e.get::<String>("photo_id")
                                .is_some_and(|p| names.contains(&p))
                        })
                        .map(|e| e.id.as_str())
                        .collect();
                    if !theirs.is_empty() {
                        if grouped {
                            match conn.xack::<_, _, _, u64>(stream, GROUP, &theirs).await {
                                Ok(_) => {}
                                Err(e) if is_nogroup(&e) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        removed += conn.xdel::<_, _, u64>(stream, &theirs).await?;
                    }
                    if page.ids.len() < PAGE {
                        break;
                    }
                }
            }
        }
        let _: u64 = conn.del(self.keys().rate(owner)).await?;
        Ok(removed)
    }

    /// Entries in the dead-letter streams.
    pub async fn dead_letters(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut total = 0;
        for (_, keys) in self.each_shard() {
            total += conn.xlen::<_, u64>(&keys.dead).await?;
        }
        Ok(total)
    }

    /// The workers the consumer groups know in `lane`: name, entries delivered to them and
    /// not acknowledged, and how long since each last read or claimed (in any shard).
    pub async fn consumers(&self, lane: Lane) -> Result<Vec<ConsumerInfo>, QueueError> {
        let mut conn = self.conn.get().await?;
        let mut out: Vec<ConsumerInfo> = Vec::new();
        for (_, keys) in self.each_shard() {
            let reply: redis::RedisResult<redis::streams::StreamInfoConsumersReply> =
                conn.xinfo_consumers(keys.stream(lane), GROUP).await;
            let consumers = match reply {
                Ok(reply) => reply.consumers,
                // No group yet: nobody has consumed.
                Err(e) if is_nogroup(&e) => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for c in consumers {
                let idle = Duration::from_millis(c.idle as u64);
                match out.iter_mut().find(|o| o.name == c.name) {
                    Some(o) => {
                        o.pending += c.pending as u64;
                        o.idle = o.idle.min(idle);
                    }
                    None => out.push(ConsumerInfo {
                        name: c.name,
                        pending: c.pending as u64,
                        idle,
                    }),
                }
            }
        }
        Ok(out)
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
        self.keys().other(&format!("errors:{minute}"))
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
    /// The shard reads start from, moved on by every read so all shards get their turn.
    cursor: AtomicUsize,
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
            cursor: AtomicUsize::new(0),
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
    /// left, and bulk ones first when the bulk lane is owed its share; over every shard,
    /// starting from a different one each time. When every stream is empty, blocks up to the
    /// configured time for the first entry of either lane of one shard (the next in turn).
    /// Recreates the groups if Redis lost them.
    pub async fn read(&self, count: usize) -> Result<Vec<Delivery>, QueueError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut owed = {
            let credit = self.bulk_credit.lock().unwrap_or_else(|p| p.into_inner());
            (*credit as usize).min(count)
        };
        let shards = self.queue.shards.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % shards;
        let mut conn = self.queue.conn.get().await?;
        let mut deliveries: Vec<Delivery> = Vec::new();
        // With several shards, interactive entries of every shard come before the bulk
        // entries of any (beyond those owed): a first pass takes only those, a second fills
        // up with bulk ones. With one shard, one pass does both.
        let passes: &[bool] = if shards == 1 { &[true] } else { &[false, true] };
        let order = passes
            .iter()
            .flat_map(|&fill| (0..shards).map(move |i| (((start + i) % shards) as u32, fill)));
        for (shard, fill_with_bulk) in order {
            let want = count - deliveries.len();
            if want == 0 {
                break;
            }
            let keys = self.queue.keys_of(shard);
            let reply: Result<Vec<(String, String, String, String)>, _> = scripts::READ
                .key(&keys.jobs)
                .key(&keys.bulk)
                .arg(GROUP)
                .arg(&self.name)
                .arg(owed.min(want))
                .arg(want)
                .arg(if fill_with_bulk { 1 } else { 0 })
                .invoke_async(&mut conn)
                .await;
            let entries = match reply {
                Err(e) if is_nogroup(&e) => {
                    self.queue.ensure_group().await?;
                    continue;
                }
                other => other?,
            };
            for (lane, id, photo, trace) in entries {
                let lane = if lane == "bulk" {
                    owed = owed.saturating_sub(1);
                    Lane::Bulk
                } else {
                    Lane::Interactive
                };
                deliveries.push(Delivery::from_script(shard, lane, &id, photo, 1, trace));
            }
        }
        if deliveries.is_empty() {
            return self.read_blocking(count, start as u32).await;
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

    /// Blocks until either lane of `shard` has entries. Redis answers up to `count` from
    /// each stream; bulk entries beyond `count` are handed back (put at the end of their
    /// stream).
    async fn read_blocking(&self, count: usize, shard: u32) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(count)
            .block(self.block_ms as usize);
        let mut conn = self.reader.get().await?;
        let keys = self.queue.keys_of(shard);
        let streams = [&keys.jobs, &keys.bulk];
        let reply: Result<Option<StreamReadReply>, _> =
            conn.xread_options(&streams, &[">", ">"], &options).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let mut deliveries: Vec<Delivery> = Vec::new();
        for key in reply.into_iter().flat_map(|r| r.keys) {
            let lane = if key.key == keys.bulk {
                Lane::Bulk
            } else {
                Lane::Interactive
            };
            deliveries.extend(
                key.ids
                    .into_iter()
                    .map(|e| Delivery::from_entry(shard, lane, e)),
            );
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
            for (shard, keys) in self.queue.each_shard() {
                let want = count - out.len();
                if want == 0 {
                    return Ok(out);
                }
                let reply: Result<Vec<(String, String, u32, String)>, _> = scripts::TAKE_OVER
                    .key(keys.stream(lane))
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
                out.extend(reply.into_iter().map(|(id, photo, deliveries, trace)| {
                    Delivery::from_script(shard, lane, &id, photo, deliveries, trace)
                }));
            }
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
        for (shard, lane, ids) in grouped(entry_ids) {
            let mut invocation = scripts::RELEASE.key(self.queue.keys_of(shard).stream(lane));
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
        let (shard, lane, id) = parse(entry_id);
        let mut conn = self.queue.conn.get().await?;
        let renewed: i64 = scripts::HEARTBEAT
            .key(self.queue.keys_of(shard).stream(lane))
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
    fn tokens_name_the_shard_and_lane() {
        assert_eq!(locate("1-0"), (Lane::Interactive, "1-0"));
        assert_eq!(token(0, Lane::Interactive, "1-0"), "1-0");
        assert_eq!(token(0, Lane::Bulk, "1-0"), "bulk:1-0");
        assert_eq!(token(3, Lane::Bulk, "1-0"), "s3:bulk:1-0");
        for shard in [0, 1, 63] {
            for lane in Lane::ALL {
                assert_eq!(parse(&token(shard, lane, "9-1")), (shard, lane, "9-1"));
            }
        }
        let groups = grouped(&["1-0", "bulk:2-0", "3-0", "s2:4-0", "s2:bulk:5-0", "s2:6-0"]);
        assert_eq!(
            groups,
            vec![
                (0, Lane::Interactive, vec![(0, "1-0"), (2, "3-0")]),
                (0, Lane::Bulk, vec![(1, "2-0")]),
                (2, Lane::Interactive, vec![(3, "4-0"), (5, "6-0")]),
                (2, Lane::Bulk, vec![(4, "5-0")]),
            ]
        );
    }

    #[test]
    fn shards_have_tags_of_their_own() {
        let zero = Keys::shard("pq", 0);
        assert_eq!(zero.jobs, "{pq}:jobs");
        assert_eq!(zero.other("rate:x"), "{pq}:rate:x");
        let two = Keys::shard("pq", 2);
        assert_eq!(
            [two.jobs, two.bulk, two.delayed, two.bulk_delayed, two.dead],
            [
                "{pq:2}:jobs",
                "{pq:2}:bulk",
                "{pq:2}:delayed",
                "{pq:2}:bulk-delayed",
                "{pq:2}:dead"
            ]
        );
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
