//! Retention: what photoq keeps, for how long, and the sweeper that removes the rest
//! (`[retention]`, `events.retention_days`).
//!
//! Every process runs [`run`]; each round is claimed in the database, so one process at a
//! time sweeps. Rows go first and objects after the commit: a process stopped in between
//! leaves objects no row records, which the storage walk ([`sweep_orphans`]) removes once
//! they are older than the grace period — as it does the originals of an upload that never
//! committed and the objects a worker wrote for a photo deleted under it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::db::retention::Round;
use crate::db::{self, DbError, DbPool};
use crate::metrics::Metrics;
use crate::storage::{photo_of_key, ObjectInfo, Storage, StorageError};

/// Seconds in a day.
const DAY: u64 = 86_400;

/// `span` before `now`; the earliest time there is when that is further back.
pub fn ago(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Rows removed (or photos changed) per statement.
const CHUNK: i64 = 500;
/// Objects looked up in the database at once during the storage walk.
const WALK_PAGE: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What one sweep removed, by kind (the `what` label of `photoq_retention_removed_total`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// Originals of completed photos past `retention.originals_days`.
    pub originals: u64,
    /// Failed, dead and cancelled photos past `retention.unsuccessful_days`, now tombstones.
    pub photos: u64,
    pub idempotency_records: u64,
    pub events: u64,
    pub webhook_deliveries: u64,
    pub stream_tokens: u64,
    /// Objects no photo records, past `retention.orphan_grace_secs`.
    pub orphans: u64,
    /// Their bytes.
    pub orphan_bytes: u64,
}

impl Removed {
    fn counts(&self) -> [(&'static str, u64); 7] {
        [
            ("originals", self.originals),
            ("photos", self.photos),
            ("idempotency_records", self.idempotency_records),
            ("events", self.events),
            ("webhook_deliveries", self.webhook_deliveries),
            ("stream_tokens", self.stream_tokens),
            ("orphans", self.orphans),
        ]
    }

    fn is_empty(&self) -> bool {
        self.counts().iter().all(|(_, n)| *n == 0)
    }

    /// Adds what another sweep removed.
    pub fn add(&mut self, other: &Removed) {
        self.originals += other.originals;
        self.photos += other.photos;
        self.idempotency_records += other.idempotency_records;
        self.events += other.events;
        self.webhook_deliveries += other.webhook_deliveries;
        self.stream_tokens += other.stream_tokens;
        self.orphans += other.orphans;
        self.orphan_bytes += other.orphan_bytes;
    }
}

/// Sweeps, one process at a time, every `retention.sweep_interval_secs` (rows) and
/// `retention.orphan_interval_secs` (the storage walk), until `shutdown`.
pub async fn run(
    pool: DbPool,
    storage: Storage,
    config: Arc<Config>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let r = &config.retention;
    let rows_every = Duration::from_secs(r.sweep_interval_secs);
    let orphans_every = Duration::from_secs(r.orphan_interval_secs);
    // Asked often enough that a round is seldom late by more than a tenth of its interval.
    let poll = (rows_every.min(orphans_every) / 10).clamp(Duration::from_secs(1), rows_every);
    loop {
        for (round, every) in [(Round::Rows, rows_every), (Round::Orphans, orphans_every)] {
            let result = claimed_sweep(&pool, &storage, &config, round, every).await;
            match result {
                Ok(Some(removed)) => {
                    metrics.retention_removed(&removed.counts());
                    if !removed.is_empty() {
                        tracing::info!(
                            ?round,
                            ?removed,
                            "retention removed what was past its lifetime"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => metrics.background_failure("retention", &e),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// A round of `round` if this process claims it.
async fn claimed_sweep(
    pool: &DbPool,
    storage: &Storage,
    config: &Config,
    round: Round,
    every: Duration,
) -> Result<Option<Removed>, SweepError> {
    let now = Utc::now();
    let claimed = {
        let mut conn = db::conn(pool).await?;
        db::retention::claim(&mut conn, round, every, now).await?
    };
    if !claimed {
        return Ok(None);
    }
    Ok(Some(match round {
        Round::Rows => sweep_rows(pool, storage, config, now).await?,
        Round::Orphans => {
            let grace = Duration::from_secs(config.retention.orphan_grace_secs);
            sweep_orphans(pool, storage, grace, now).await?
        }
    }))
}

/// Removes, as of `now`, every row past its lifetime, and the originals and photos retention
/// ends (their objects after the rows are committed).
pub async fn sweep_rows(
    pool: &DbPool,
    storage: &Storage,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Removed, SweepError> {
    let r = &config.retention;
    let mut removed = Removed::default();
    if r.originals_days > 0 {
        let before = ago(now, Duration::from_secs(u64::from(r.originals_days) * DAY));
        loop {
            let marked = {
                let mut conn = db::conn(pool).await?;
                let ids = db::retention::expired_originals(&mut conn, before, CHUNK).await?;
                db::retention::mark_originals_removed(&mut conn, &ids, now).await?
            };
            if marked.is_empty() {
                break;
            }
            let keys: Vec<String> = marked
                .iter()
                .map(|id| crate::storage::original_key(*id))
                .collect();
            storage.delete_many(&keys).await?;
            removed.originals += marked.len() as u64;
        }
    }
    if r.unsuccessful_days > 0 {
        let before = ago(
            now,
            Duration::from_secs(u64::from(r.unsuccessful_days) * DAY),
        );
        loop {
            let ended = {
                let mut conn = db::conn(pool).await?;
                db::retention::tombstone_unsuccessful(&mut conn, before, CHUNK, now).await?
            };
            if ended.is_empty() {
                break;
            }
            storage.remove_photos(&ended).await?;
            removed.photos += ended.len() as u64;
        }
    }
    let mut conn = db::conn(pool).await?;
    let idempotency_before = ago(
        now,
        Duration::from_secs(u64::from(r.idempotency_hours) * 3600),
    );
    let events_before = ago(
        now,
        Duration::from_secs(u64::from(config.events.retention_days) * DAY),
    );
    removed.idempotency_records = drain(&mut conn, Rows::Idempotency, idempotency_before).await?;
    removed.events = drain(&mut conn, Rows::Events, events_before).await?;
    removed.webhook_deliveries = drain(&mut conn, Rows::Deliveries, events_before).await?;
    removed.stream_tokens = db::events::prune_tokens(&mut conn, now).await? as u64;
    // Not counted as removals: finished reprocessing runs, kept as long as events; the
    // byte counts of quotas (`db::usage`) kept short.
    while db::reprocess::prune(&mut conn, events_before, CHUNK).await? as i64 >= CHUNK {}
    db::usage::fold(&mut conn, CHUNK).await?;
    Ok(removed)
}

/// Rows removed by age, a chunk at a time.
#[derive(Clone, Copy)]
enum Rows {
    Idempotency,
    Events,
    Deliveries,
}

/// Removes the `rows` older than `before`, chunk after chunk until none is left; the total.
async fn drain(
    conn: &mut diesel_async::AsyncPgConnection,
    rows: Rows,
    before: DateTime<Utc>,
) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let n = match rows {
            Rows::Idempotency => db::retention::prune_idempotency(conn, before, CHUNK).await?,
            Rows::Events => db::events::prune(conn, before, CHUNK).await?,
            Rows::Deliveries => db::retention::prune_deliveries(conn, before, CHUNK).await?,
        };
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Walks storage and removes, as of `now`, the objects older than `grace` that no photo
/// records: the originals and variants of photos absent or deleted, originals retention
/// removed, variants no row names. Objects of photos still queued or processing are left
/// to their job, whatever their age.
pub async fn sweep_orphans(
    pool: &DbPool,
    storage: &Storage,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<Removed, SweepError> {
    let cutoff = ago(now, grace);
    let mut removed = Removed::default();
    let mut page: Vec<(ObjectInfo, Uuid, bool)> = Vec::with_capacity(WALK_PAGE);
    let mut listing = storage.list();
    loop {
        let next = listing.next().await.transpose()?;
        let end = next.is_none();
        if let Some(object) = next {
            if object.modified < cutoff {
                if let Some((id, original)) = photo_of_key(&object.key) {
                    page.push((object, id, original));
                }
            }
        }
        if page.len() == WALK_PAGE || (end && !page.is_empty()) {
            let page = std::mem::take(&mut page);
            removed.add(&remove_unrecorded(pool, storage, page, cutoff).await?);
        }
        if end {
            return Ok(removed);
        }
    }
}

/// Of `page`, removes the objects no photo records and still written before `cutoff`
/// (looked at again just before: a photo retried since the listing rewrites its objects).
async fn remove_unrecorded(
    pool: &DbPool,
    storage: &Storage,
    page: Vec<(ObjectInfo, Uuid, bool)>,
    cutoff: DateTime<Utc>,
) -> Result<Removed, SweepError> {
    let ids: Vec<Uuid> = page.iter().map(|(_, id, _)| *id).collect();
    let recorded = {
        let mut conn = db::conn(pool).await?;
        db::retention::recorded(&mut conn, &ids).await?
    };
    let orphans: Vec<ObjectInfo> = page
        .into_iter()
        .filter(|(object, id, original)| {
            !recorded.unfinished.contains(id)
                && if *original {
                    !recorded.originals.contains(id)
                } else {
                    !recorded.variant_keys.contains(&object.key)
                }
        })
        .map(|(object, _, _)| object)
        .collect();
    let mut still = Vec::with_capacity(orphans.len());
    for object in orphans {
        if storage
            .modified(&object.key)
            .await?
            .is_some_and(|m| m < cutoff)
        {
            still.push(object);
        }
    }
    let orphans = still;
    let keys: Vec<String> = orphans.iter().map(|o| o.key.clone()).collect();
    storage.delete_many(&keys).await?;
    for object in &orphans {
        tracing::info!(key = %object.key, bytes = object.size, "removed an object no photo records");
    }
    Ok(Removed {
        orphans: orphans.len() as u64,
        orphan_bytes: orphans.iter().map(|o| o.size).sum(),
        ..Removed::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_stops_at_the_earliest_time_instead_of_overflowing() {
        let now = Utc::now();
        assert_eq!(
            ago(now, Duration::from_secs(60)),
            now - chrono::Duration::seconds(60)
        );
        // `retention.originals_days = 4294967295` must not stop the sweeper.
        let far = Duration::from_secs(u64::from(u32::MAX) * DAY);
        assert_eq!(ago(now, far), DateTime::<Utc>::MIN_UTC);
        assert_eq!(ago(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
