//! The event log: reading an owner's events in id order, the owner's counters (the last id
//! handed out, the last id pruned), retention, and the short-lived stream tokens.
//!
//! Events are written by the database itself (the triggers of migration
//! `2026-12-01-000005_events`), in the transaction that changes a photo, a product or a
//! batch; nothing in Rust inserts them. Each owner's ids count up from 1 without gaps, and
//! an id is visible only once every smaller id of the same owner is: the owner's counter
//! row stays locked from the first change to the commit.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{api_keys, event_counters, events, stream_tokens};
use super::DbError;

/// One event, as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events, check_for_backend(diesel::pg::Pg))]
pub struct EventRow {
    pub owner_id: Uuid,
    pub id: i64,
    pub type_: String,
    pub batch_id: Option<Uuid>,
    pub photo_id: Option<Uuid>,
    pub product_id: Option<Uuid>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

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
}

impl Page {
    /// The owner-wide id this page reads up to: every event of the owner with an id up to
    /// here that matches the filter is in this page or an earlier one.
    pub fn covered(&self, limit: i64) -> i64 {
        match self.events.last() {
            Some(last) if self.events.len() as i64 >= limit => last.id,
            _ => self.head.last_id,
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
/// id, have no holes.
pub async fn after(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    batch: Option<Uuid>,
    after: i64,
    limit: i64,
) -> Result<Page, DbError> {
    let head = head(conn, owner).await?;
    if head.last_id <= after {
        return Ok(Page {
            events: Vec::new(),
            head,
        });
    }
    let mut query = events::table
        .filter(events::owner_id.eq(owner))
        .filter(events::id.gt(after))
        .filter(events::id.le(head.last_id))
        .order(events::id.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(batch) = batch {
        query = query.filter(events::batch_id.eq(batch));
    }
    Ok(Page {
        events: query.load(conn).await?,
        head,
    })
}

/// Takes `owner`'s event counter for the rest of the transaction. A transaction that locks
/// rows the event triggers lock too (products, batches) must take it first, as the triggers
/// do, so that two transactions never wait for each other.
pub async fn lock_owner(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<(), DbError> {
    diesel::sql_query("SELECT photoq_lock_owners(ARRAY[$1]::uuid[])")
        .bind::<SqlUuid, _>(owner)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes up to `limit` events created before `before`, and records per owner the highest
/// id removed. Returns how many were removed.
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
             DELETE FROM events WHERE ctid IN ( \
                 SELECT ctid FROM events WHERE created_at < $1 LIMIT $2) \
             RETURNING owner_id, id), \
         per_owner AS (SELECT owner_id, max(id) AS id, count(*) AS n FROM gone \
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

/// The owner a stream token opens streams for: unexpired, and its key not revoked.
pub async fn token_owner(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
) -> Result<Option<Uuid>, DbError> {
    Ok(stream_tokens::table
        .inner_join(api_keys::table)
        .filter(stream_tokens::token_hash.eq(token_hash))
        .filter(stream_tokens::expires_at.gt(Utc::now()))
        .filter(api_keys::revoked_at.is_null())
        .select(api_keys::id)
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

/// The progress counters of a batch, kept by the photo trigger.
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
    use super::schema::batches;
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
    Ok(events::table
        .filter(events::owner_id.eq(owner))
        .filter(events::id.eq(id))
        .select(EventRow::as_select())
        .first(conn)
        .await
        .optional()?)
}
