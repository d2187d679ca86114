//! The queries of retention (`crate::retention`): rounds claimed one process at a time,
//! expired originals and unsuccessful photos found, old rows removed in bounded chunks, and
//! what the database knows of the objects a storage walk finds.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{photos, retention_rounds, variants};
use super::DbError;
use crate::state::PhotoState;

/// The kinds of round in `retention_rounds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Lifetimes of rows (and the originals and photos they name).
    Rows,
    /// The walk over storage for objects no row records.
    Orphans,
}

impl Round {
    fn as_str(self) -> &'static str {
        match self {
            Round::Rows => "rows",
            Round::Orphans => "orphans",
        }
    }
}

/// Claims a round of `round` at `now` when none was claimed in the last `every`: true for
/// exactly one of the processes asking at once.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    round: Round,
    every: Duration,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let since = crate::retention::ago(now, every);
    let n = diesel::update(retention_rounds::table.find(round.as_str()))
        .filter(retention_rounds::claimed_at.le(since))
        .set(retention_rounds::claimed_at.eq(now))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// Up to `limit` completed photos whose originals are still stored and that completed
/// before `before`, oldest first.
pub async fn expired_originals(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, DbError> {
    // `retained` is left out of schema.rs: diesel's tables stop at 32 columns.
    let ids: Vec<Id> = diesel::sql_query(
        "SELECT id FROM photos WHERE retained = 'original' AND completed_at < $1 \
         ORDER BY completed_at LIMIT $2",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(ids.into_iter().map(|r| r.id).collect())
}

/// Deletes (as tombstones) up to `limit` failed, dead or cancelled photos that ended before
/// `before`, oldest first; returns them. The photos are locked as they are chosen, so a
/// retry or redrive asked for meanwhile either comes first (and the photo is no longer
/// chosen) or finds it deleted.
pub async fn tombstone_unsuccessful(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let ids: Vec<Id> = diesel::sql_query(
            "SELECT id FROM photos WHERE retained = 'unsuccessful' AND completed_at < $1 \
             ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?;
        let ids: Vec<Uuid> = ids.into_iter().map(|r| r.id).collect();
        super::lifecycle::tombstone(conn, &ids, now).await
    })
    .await
}

/// Records that the originals of `ids` (completed photos still holding theirs) are
/// removed; returns the photos marked. The objects are removed after this commits (what a
/// crash leaves, the orphan walk removes).
pub async fn mark_originals_removed(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    Ok(diesel::update(photos::table)
        .filter(photos::id.eq_any(ids))
        .filter(photos::state.eq(PhotoState::Completed.as_str()))
        .filter(photos::original_removed_at.is_null())
        .set(photos::original_removed_at.eq(now))
        .returning(photos::id)
        .get_results(conn)
        .await?)
}

/// Removes up to `limit` idempotency records made before `before`; returns how many.
pub async fn prune_idempotency(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DbError> {
    delete_counted(
        conn,
        "DELETE FROM idempotency_keys WHERE ctid IN ( \
             SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        before,
        limit,
    )
    .await
}

/// Removes up to `limit` webhook deliveries that ended (delivered or dead) before
/// `before`, with their attempts; returns how many.
pub async fn prune_deliveries(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DbError> {
    delete_counted(
        conn,
        "DELETE FROM webhook_deliveries WHERE id IN ( \
             SELECT id FROM webhook_deliveries WHERE state IN ('delivered', 'dead') \
             AND updated_at < $1 LIMIT $2)",
        before,
        limit,
    )
    .await
}

/// Runs `delete` (a DELETE taking the age as $1 and the chunk size as $2); the rows removed.
async fn delete_counted(
    conn: &mut AsyncPgConnection,
    delete: &str,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DbError> {
    Ok(diesel::sql_query(delete)
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(limit)
        .execute(conn)
        .await?)
}

/// What the database says of the photos a storage walk found objects of.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Photos that may still write or need their objects (queued or processing).
    pub unfinished: HashSet<Uuid>,
    /// Photos whose original should be stored: not deleted, original not removed.
    pub originals: HashSet<Uuid>,
    /// Storage keys of the variants recorded.
    pub variant_keys: HashSet<String>,
}

/// What is recorded of the photos `ids` (see [`Recorded`]).
pub async fn recorded(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<Recorded, DbError> {
    let rows: Vec<(Uuid, String, Option<DateTime<Utc>>)> = photos::table
        .filter(photos::id.eq_any(ids))
        .select((photos::id, photos::state, photos::original_removed_at))
        .load(conn)
        .await?;
    let mut recorded = Recorded::default();
    for (id, state, removed) in rows {
        match PhotoState::parse(&state) {
            Some(PhotoState::Queued | PhotoState::Processing) => {
                recorded.unfinished.insert(id);
                recorded.originals.insert(id);
            }
            Some(PhotoState::Deleted) => {}
            _ if removed.is_some() => {}
            _ => {
                recorded.originals.insert(id);
            }
        }
    }
    // A completed photo being reprocessed is writing variants no row records yet.
    #[derive(diesel::QueryableByName)]
    struct Reprocessing {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        photo_id: Uuid,
    }
    let reprocessing: Vec<Reprocessing> = diesel::sql_query(
        "SELECT photo_id FROM reprocessing WHERE photo_id = ANY ($1) AND state = 'processing'",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load(conn)
    .await?;
    recorded
        .unfinished
        .extend(reprocessing.into_iter().map(|r| r.photo_id));
    recorded.variant_keys = variants::table
        .filter(variants::photo_id.eq_any(ids))
        .select(variants::storage_key)
        .load::<String>(conn)
        .await?
        .into_iter()
        .collect();
    Ok(recorded)
}
