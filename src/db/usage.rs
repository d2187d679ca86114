//! Quotas: what an owner may add and keep (`[quotas]`, or the owner's own values in
//! `owners`), what it has used — photos added since midnight UTC, bytes in storage — and
//! the admission check an upload or an import makes inside its transaction.
//!
//! Bytes are counted by triggers (migration `2026-12-09-000016_usage`): a total per owner
//! plus changes appended since, which an admission adds in under the owner's row lock and
//! retention adds in for everyone. Photos per day are counted from the ids (UUIDv7, so
//! time-ordered) in the owner's index.

use chrono::{DateTime, Duration, NaiveTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use super::schema::{owners, photos, usage_changes};
use super::DbError;
use crate::config::QuotasConfig;

/// An owner's quotas; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Limits {
    pub photos_per_day: Option<i64>,
    pub bytes_stored: Option<i64>,
}

/// A quota a request would go past.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error(
        "the quota is {limit} photos a day and {used} were added today, so {adding} more \
         cannot be; it starts again at {resets_at}"
    )]
    PhotosPerDay {
        limit: i64,
        used: i64,
        adding: i64,
        resets_at: DateTime<Utc>,
    },
    #[error(
        "the storage quota is {limit} bytes and {used} are in use; delete photos to make room"
    )]
    BytesStored { limit: i64, used: i64 },
}

/// What an owner has used, and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Photos added since midnight UTC (deleted ones too).
    pub photos_today: i64,
    /// Bytes of originals and variants in storage.
    pub bytes_stored: i64,
    pub limits: Limits,
    /// When the day's count starts again.
    pub resets_at: DateTime<Utc>,
}

/// Midnight UTC of `now`'s day, and of the next.
pub fn day_of(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = now.date_naive().and_time(NaiveTime::MIN).and_utc();
    (start, start + Duration::days(1))
}

/// The smallest UUIDv7 of the millisecond `t`: every id made then or later sorts after it.
fn first_id_at(t: DateTime<Utc>) -> Uuid {
    Uuid::from_u128((t.timestamp_millis().max(0) as u128) << 80)
}

/// `owner`'s quotas: its own where set, the configured ones otherwise (0: none).
pub async fn limits(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    defaults: QuotasConfig,
) -> Result<Limits, DbError> {
    let (photos, bytes) = own_limits(conn, owner).await?.unwrap_or_default();
    let pick = |own: Option<i64>, default: u64| {
        Some(own.unwrap_or(i64::try_from(default).unwrap_or(i64::MAX))).filter(|n| *n > 0)
    };
    Ok(Limits {
        photos_per_day: pick(photos, defaults.photos_per_day),
        bytes_stored: pick(bytes, defaults.bytes_stored),
    })
}

/// `owner`'s own quotas (photos per day, bytes stored; `None`: the configured one), or
/// `None` when there is no such owner.
async fn own_limits(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
) -> Result<Option<(Option<i64>, Option<i64>)>, DbError> {
    Ok(owners::table
        .find(owner)
        .select((owners::photos_per_day, owners::bytes_stored))
        .first(conn)
        .await
        .optional()?)
}

async fn photos_since(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    since: DateTime<Utc>,
) -> Result<i64, DbError> {
    Ok(photos::table
        .filter(photos::owner_id.eq(owner))
        .filter(photos::id.ge(first_id_at(since)))
        .count()
        .get_result(conn)
        .await?)
}

#[derive(QueryableByName)]
struct Bytes {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// `owner`'s bytes in storage, the changes not yet added in included.
async fn bytes_stored(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<i64, DbError> {
    let b: Option<Bytes> = diesel::sql_query(
        "SELECT (o.bytes_used + coalesce((SELECT sum(c.bytes) FROM usage_changes AS c \
                                          WHERE c.owner_id = o.id), 0))::int8 AS n \
         FROM owners AS o WHERE o.id = $1",
    )
    .bind::<SqlUuid, _>(owner)
    .get_result(conn)
    .await
    .optional()?;
    Ok(b.map_or(0, |b| b.n))
}

/// What `owner` has used as of `now`.
pub async fn usage(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    defaults: QuotasConfig,
    now: DateTime<Utc>,
) -> Result<Usage, DbError> {
    let (today, tomorrow) = day_of(now);
    Ok(Usage {
        photos_today: photos_since(conn, owner, today).await?,
        bytes_stored: bytes_stored(conn, owner).await?,
        limits: limits(conn, owner, defaults).await?,
        resets_at: tomorrow,
    })
}

/// Whether `owner` may add `photos` photos holding `bytes` bytes now; inside the caller's
/// transaction. With no quota only the owner's settings are read and nothing is locked.
/// Otherwise the owner's row is locked until the transaction ends, so that its admissions
/// are decided one after the other and a quota is never overrun by requests racing each
/// other.
pub async fn admit(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    photos: i64,
    bytes: i64,
    defaults: QuotasConfig,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let limits = limits(conn, owner, defaults).await?;
    if limits == Limits::default() {
        return Ok(());
    }
    // Locks the row and adds the owner's changes in.
    let used = fold_owner(conn, owner).await?.unwrap_or(0);
    if let Some(limit) = limits.bytes_stored {
        if used >= limit || (bytes > 0 && used + bytes > limit) {
            return Err(Exceeded::BytesStored { limit, used }.into());
        }
    }
    if let Some(limit) = limits.photos_per_day {
        let (today, tomorrow) = day_of(now);
        let used = photos_since(conn, owner, today).await?;
        if used + photos > limit {
            return Err(Exceeded::PhotosPerDay {
                limit,
                used,
                adding: photos,
                resets_at: tomorrow,
            }
            .into());
        }
    }
    Ok(())
}

/// Adds the pending changes of up to `limit` owners into their totals, each owner's row
/// locked before its changes are taken (the order `admit` takes them in, so the two never
/// wait for each other in a cycle); changes of owners that no longer exist are dropped.
/// Returns the owners whose changes were taken.
pub async fn fold(conn: &mut AsyncPgConnection, limit: i64) -> Result<usize, DbError> {
    #[derive(QueryableByName)]
    struct Owner {
        #[diesel(sql_type = SqlUuid)]
        owner_id: Uuid,
    }
    let owners: Vec<Owner> =
        diesel::sql_query("SELECT DISTINCT owner_id FROM usage_changes LIMIT $1")
            .bind::<BigInt, _>(limit)
            .load(conn)
            .await?;
    for o in &owners {
        if fold_owner(conn, o.owner_id).await?.is_none() {
            diesel::delete(usage_changes::table.filter(usage_changes::owner_id.eq(o.owner_id)))
                .execute(conn)
                .await?;
        }
    }
    Ok(owners.len())
}

/// Locks `owner`'s row and adds its pending changes into its total; the total, or `None`
/// when there is no such owner.
async fn fold_owner(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<Option<i64>, DbError> {
    let used: Option<Bytes> = diesel::sql_query(
        "WITH locked AS (SELECT id FROM owners WHERE id = $1 FOR UPDATE), \
              gone AS (DELETE FROM usage_changes WHERE owner_id = (SELECT id FROM locked) \
                       RETURNING bytes) \
         UPDATE owners SET bytes_used = bytes_used + coalesce((SELECT sum(bytes) FROM gone), 0) \
         WHERE id = (SELECT id FROM locked) RETURNING bytes_used AS n",
    )
    .bind::<SqlUuid, _>(owner)
    .get_result(conn)
    .await
    .optional()?;
    Ok(used.map(|b| b.n))
}

/// Changes `owner`'s own quotas: each `Some` given replaces that quota (`Some(None)`: the
/// configured one again; `Some(Some(0))`: no limit). False when there is no such owner.
pub async fn set_limits(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    photos_per_day: Option<Option<i64>>,
    bytes_stored: Option<Option<i64>>,
) -> Result<bool, DbError> {
    let Some((photos, bytes)) = own_limits(conn, owner).await? else {
        return Ok(false);
    };
    diesel::update(owners::table.find(owner))
        .set((
            owners::photos_per_day.eq(photos_per_day.unwrap_or(photos)),
            owners::bytes_stored.eq(bytes_stored.unwrap_or(bytes)),
        ))
        .execute(conn)
        .await?;
    Ok(true)
}
