//! The event log: reading an owner's events in id order, the owner's counters (the last id
//! handed out, the last id pruned), the sequencer's pass, retention, and the short-lived
//! stream tokens.
//!
//! Nothing in Rust writes events. The database's triggers (migration
//! `2026-12-02-000007_event_sequencer`) stage each statement's changes in `event_changes`,
//! in the changing transaction; [`sequence`] (run by one process at a time:
//! `events::sequencer`) numbers them per owner and appends them to `event_chunks`, one row
//! per staged statement and owner (and one per batch milestone). An owner's ids count up
//! from 1 without gaps, and an id
//! is visible only once every smaller id of the same owner is: passes commit one after
//! another. The chunks hold typed events (`photoq_event`), read here column by column.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{api_keys, batches, event_counters, stream_tokens};
use super::DbError;

/// One event, as stored: which fields are set depends on its type.
#[derive(Debug, Clone, QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub batch_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub photo_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub product_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    pub state: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub previous_state: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub attempts: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error_code: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub width: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub height: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub external_id: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub total: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub completed: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub failed: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub dead: Option<i32>,
}

/// The events of the chunks `c` as rows, `id` first (`u` is the unnested event).
const EVENT_COLUMNS: &str = "c.first_id + u.ordinality - 1 AS id, u.type AS kind, \
     u.created_at, u.batch_id, u.photo_id, u.product_id, u.state, u.previous_state, \
     u.attempts, u.error_code, u.error, u.next_attempt_at, u.width, u.height, u.external_id, \
     u.total, u.completed, u.failed, u.dead";

/// An owner's counters: ids up to `last_id` exist (or were pruned); ids up to
/// `pruned_through` may have been removed by retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub last_id: i64,
    pub pruned_through: i64,
}

/// A page of events after a cursor, with the owner's head read in the same snapshot.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<EventRow>,
    pub head: Head,
    /// Every event up to this id that matches the filter is in this page or an earlier one,
    /// if the page is not full.
    pub through: i64,
}

impl Page {
    /// The owner-wide id this page reads up to: every event of the owner with an id up to
    /// here that matches the filter is in this page or an earlier one.
    pub fn covered(&self, limit: i64) -> i64 {
        match self.events.last() {
            Some(last) if self.events.len() as i64 >= limit => last.id,
            _ => self.through,
        }
    }
}

/// `owner`'s counters (zero for an owner without events).
pub async fn head(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<Head, DbError> {
    let row: Option<(i64, i64)> = event_counters::table
        .filter(event_counters::owner_id.eq(owner))
        .select((event_counters::last_id, event_counters::pruned_through))
        .first(conn)
        .await
        .optional()?;
    Ok(row
        .map(|(last_id, pruned_through)| Head {
            last_id,
            pruned_through,
        })
        .unwrap_or_default())
}

/// Up to `limit` of `owner`'s events after id `after` (of one batch, with `batch`), in id
/// order, and the owner's head. The head is read first: every id up to its `last_id` had
/// committed by then (an owner's ids commit in order), so the events read next, up to that
/// id, have no holes. Only the chunks that can hold them are read: ids up to `after +
/// limit` (ids have no gaps); for a batch, ids between its first and last event.
pub async fn after(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    batch: Option<Uuid>,
    after: i64,
    limit: i64,
) -> Result<Page, DbError> {
    let head = head(conn, owner).await?;
    let (mut from, mut through) = (after, head.last_id);
    // What a page that is not full covers: up to the head for a batch (its events up to
    // there are all below its last), up to the chunks read for everything.
    let mut covered = head.last_id;
    if let Some(batch) = batch {
        // Read after the head: the batch's last event id is at least what it was then.
        let span: Option<(Option<i64>, Option<i64>)> = batches::table
            .filter(batches::id.eq(batch))
            .filter(batches::owner_id.eq(owner))
            .select((batches::first_event_id, batches::last_event_id))
            .first(conn)
            .await
            .optional()?;
        match span {
            Some((Some(first), Some(last))) => {
                from = from.max(first - 1);
                through = through.min(last);
            }
            _ => through = from,
        }
    } else {
        through = through.min(after.saturating_add(limit));
        covered = through;
    }
    if through <= from {
        return Ok(Page {
            events: Vec::new(),
            head,
            through: covered,
        });
    }
    let events = diesel::sql_query(format!(
        "SELECT {EVENT_COLUMNS} \
         FROM event_chunks AS c CROSS JOIN LATERAL unnest(c.events) WITH ORDINALITY AS u \
         WHERE c.owner_id = $1 AND c.last_id > $2 AND c.first_id <= $3 \
           AND c.first_id + u.ordinality - 1 > $2 AND c.first_id + u.ordinality - 1 <= $3 \
           AND ($4::uuid IS NULL OR u.batch_id = $4) \
         ORDER BY c.last_id, u.ordinality \
         LIMIT $5"
    ))
    .bind::<SqlUuid, _>(owner)
    .bind::<BigInt, _>(from)
    .bind::<BigInt, _>(through)
    .bind::<Nullable<SqlUuid>, _>(batch)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(Page {
        events,
        head,
        through: covered,
    })
}

/// One pass of the sequencer: numbers the changes of up to `max_rows` committed statements
/// and appends their events (and the batch milestones they make) to the log. Returns the
/// statements taken: fewer than `max_rows` means none were left. Passes exclude each other
/// in the database, so running one anywhere is safe.
pub async fn sequence(conn: &mut AsyncPgConnection, max_rows: i32) -> Result<i32, DbError> {
    #[derive(QueryableByName)]
    struct Taken {
        #[diesel(sql_type = Integer)]
        taken: i32,
    }
    let t: Taken = diesel::sql_query("SELECT photoq_sequence_events($1) AS taken")
        .bind::<Integer, _>(max_rows)
        .get_result(conn)
        .await?;
    Ok(t.taken)
}

/// Removes up to `limit` chunks of events whose last event was created before `before`,
/// and records per owner the highest id removed. Returns how many events were removed.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DbError> {
    #[derive(QueryableByName)]
    struct Removed {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let removed: Removed = diesel::sql_query(
        "WITH gone AS ( \
             DELETE FROM event_chunks WHERE ctid IN ( \
                 SELECT ctid FROM event_chunks WHERE created_at < $1 LIMIT $2) \
             RETURNING owner_id, last_id, cardinality(events) AS n), \
         per_owner AS (SELECT owner_id, max(last_id) AS id, sum(n) AS n FROM gone \
                       GROUP BY owner_id), \
         marked AS ( \
             UPDATE event_counters AS c SET pruned_through = greatest(c.pruned_through, p.id) \
             FROM per_owner AS p WHERE c.owner_id = p.owner_id RETURNING c.owner_id) \
         SELECT coalesce(sum(n), 0)::int8 AS n FROM per_owner",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .get_result(conn)
    .await?;
    Ok(removed.n as usize)
}

/// Stores a stream token (by its hash) for `key`, valid until `expires_at`.
pub async fn insert_token(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
    key: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    diesel::insert_into(stream_tokens::table)
        .values((
            stream_tokens::token_hash.eq(token_hash),
            stream_tokens::key_id.eq(key),
            stream_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The key (and its owner) a stream token was issued to: unexpired, and its key not revoked.
pub async fn token_owner(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
) -> Result<Option<(Uuid, Uuid)>, DbError> {
    Ok(stream_tokens::table
        .inner_join(api_keys::table)
        .filter(stream_tokens::token_hash.eq(token_hash))
        .filter(stream_tokens::expires_at.gt(Utc::now()))
        .filter(api_keys::revoked_at.is_null())
        .select((api_keys::id, api_keys::owner_id))
        .first(conn)
        .await
        .optional()?)
}

/// Removes stream tokens that expired before `before`.
pub async fn prune_tokens(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> Result<usize, DbError> {
    Ok(
        diesel::delete(stream_tokens::table.filter(stream_tokens::expires_at.lt(before)))
            .execute(conn)
            .await?,
    )
}

/// The progress counters of a batch, kept by the sequencer with its events.
#[derive(Debug, Clone, Copy, Queryable)]
pub struct BatchProgress {
    pub total: i32,
    pub unfinished: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// `owner`'s batch `id`, with its progress counters.
pub async fn batch_progress(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<BatchProgress>, DbError> {
    Ok(batches::table
        .filter(batches::id.eq(id))
        .filter(batches::owner_id.eq(owner))
        .select((
            batches::total,
            batches::unfinished,
            batches::started_at,
            batches::finished_at,
        ))
        .first(conn)
        .await
        .optional()?)
}

/// One of `owner`'s events, if the log still holds it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: i64,
) -> Result<Option<EventRow>, DbError> {
    Ok(diesel::sql_query(format!(
        "SELECT {EVENT_COLUMNS} \
         FROM (SELECT * FROM event_chunks WHERE owner_id = $1 AND last_id >= $2 \
               ORDER BY last_id LIMIT 1) AS c \
         CROSS JOIN LATERAL unnest(c.events) WITH ORDINALITY AS u \
         WHERE c.first_id + u.ordinality - 1 = $2"
    ))
    .bind::<SqlUuid, _>(owner)
    .bind::<BigInt, _>(id)
    .get_result(conn)
    .await
    .optional()?)
}

/// True while some of `owner`'s committed changes of `batch` wait for the sequencer
/// (their events are not in the log yet, nor counted in the batch). A small table, drained
/// every pass: no index needed.
pub async fn staged(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    batch: Uuid,
) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Staged {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        staged: bool,
    }
    let s: Staged = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM event_changes AS c WHERE c.owner_id = $1 \
                        AND EXISTS (SELECT 1 FROM unnest(c.events) AS u \
                                    WHERE u.batch_id = $2)) AS staged",
    )
    .bind::<SqlUuid, _>(owner)
    .bind::<SqlUuid, _>(batch)
    .get_result(conn)
    .await?;
    Ok(s.staged)
}

/// Statements' changes staged and not yet numbered by the sequencer.
pub async fn unsequenced(conn: &mut AsyncPgConnection) -> Result<i64, DbError> {
    #[derive(QueryableByName)]
    struct Staged {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let s: Staged = diesel::sql_query("SELECT count(*) AS n FROM event_changes")
        .get_result(conn)
        .await?;
    Ok(s.n)
}
