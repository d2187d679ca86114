//! Ending a photo's life early: a batch cancelled (its waiting photos end `cancelled`), a
//! photo or a batch deleted (each photo becomes a tombstone, `deleted`, its personal data
//! and variant rows gone). Both are guarded transitions (`state::Event::Cancel`,
//! `state::Event::Delete`): a worker's start or finish that comes after finds the photo
//! moved and changes nothing.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{batches, imports, photo_attempts, photos, variants};
use super::DbError;
use crate::state::PhotoState;

/// What to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Photo(Uuid),
    /// Every photo of a batch (or an import).
    Batch(Uuid),
}

/// Deletes `owner`'s photos named by `target`: each not deleted yet becomes a tombstone
/// (state `deleted`, its file name, EXIF, hash, placeholder, source URL and error cleared),
/// its variant rows and attempt history removed, and copies made from it no longer name it;
/// a batch is marked deleted too. Returns every photo the target names, deleted now or
/// before (the caller removes their stored objects, again if need be: a repeated delete
/// finishes what an interrupted one left), or `None` when `owner` has no such photo or
/// batch.
pub async fn delete(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    target: Target,
) -> Result<Option<Vec<Uuid>>, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let named: Vec<Uuid> = match target {
            Target::Photo(id) => {
                photos::table
                    .filter(photos::id.eq(id))
                    .filter(photos::owner_id.eq(owner))
                    .select(photos::id)
                    .load(conn)
                    .await?
            }
            Target::Batch(id) => {
                let owned: Option<Option<DateTime<Utc>>> = batches::table
                    .filter(batches::id.eq(id))
                    .filter(batches::owner_id.eq(owner))
                    .select(batches::deleted_at)
                    .first(conn)
                    .await
                    .optional()?;
                match owned {
                    None => return Ok(None),
                    Some(Some(_)) => {}
                    Some(None) => {
                        diesel::update(batches::table.find(id))
                            .set(batches::deleted_at.eq(now))
                            .execute(conn)
                            .await?;
                    }
                }
                photos::table
                    .filter(photos::batch_id.eq(id))
                    .select(photos::id)
                    .load(conn)
                    .await?
            }
        };
        if named.is_empty() && matches!(target, Target::Photo(_)) {
            return Ok(None);
        }
        tombstone_in(conn, &named, now).await?;
        Ok(Some(named))
    })
    .await
}

/// Turns the photos `ids` not deleted yet into tombstones (see [`delete`]), in one
/// transaction (a savepoint inside the caller's); returns those it turned.
pub async fn tombstone(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| tombstone_in(conn, ids, now).await)
        .await
}

async fn tombstone_in(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    let ids: Vec<Uuid> = diesel::update(photos::table)
        .filter(photos::id.eq_any(ids))
        .filter(photos::state.ne(PhotoState::Deleted.as_str()))
        .set((
            (
                photos::state.eq(PhotoState::Deleted.as_str()),
                photos::deleted_at.eq(now),
                photos::updated_at.eq(now),
                photos::attempt_id.eq(None::<i64>),
                photos::next_attempt_at.eq(None::<DateTime<Utc>>),
                photos::filename.eq(None::<String>),
                photos::exif.eq(None::<serde_json::Value>),
                photos::sha256.eq(None::<String>),
                photos::content_type.eq(None::<String>),
                photos::bytes.eq(None::<i64>),
            ),
            (
                photos::width.eq(None::<i32>),
                photos::height.eq(None::<i32>),
                photos::thumbhash.eq(None::<String>),
                photos::source_url.eq(None::<String>),
                photos::error.eq(None::<String>),
                photos::error_code.eq(None::<String>),
                photos::variant_fingerprint.eq(None::<String>),
                photos::reused_from.eq(None::<Uuid>),
                photos::trace_parent.eq(None::<String>),
            ),
        ))
        .returning(photos::id)
        .get_results(conn)
        .await?;
    if ids.is_empty() {
        return Ok(ids);
    }
    diesel::delete(variants::table.filter(variants::photo_id.eq_any(&ids)))
        .execute(conn)
        .await?;
    diesel::delete(photo_attempts::table.filter(photo_attempts::photo_id.eq_any(&ids)))
        .execute(conn)
        .await?;
    diesel::update(photos::table.filter(photos::reused_from.eq_any(&ids)))
        .set(photos::reused_from.eq(None::<Uuid>))
        .execute(conn)
        .await?;
    Ok(ids)
}

/// Cancels the photos of `owner`'s batch `batch` that wait (`queued`, a first attempt or a
/// scheduled retry): they end `cancelled`. Photos being processed finish. Returns the photos
/// cancelled.
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    batch: Uuid,
) -> Result<Vec<Uuid>, DbError> {
    let now = Utc::now();
    Ok(diesel::update(photos::table)
        .filter(photos::owner_id.eq(owner))
        .filter(photos::batch_id.eq(batch))
        .filter(photos::unfinished)
        .filter(photos::state.eq(PhotoState::Queued.as_str()))
        .set((
            photos::state.eq(PhotoState::Cancelled.as_str()),
            photos::next_attempt_at.eq(None::<DateTime<Utc>>),
            photos::completed_at.eq(now),
            photos::updated_at.eq(now),
        ))
        .returning(photos::id)
        .get_results(conn)
        .await?)
}

/// Whether the photo `id` is deleted (a worker whose results came too late asks, to remove
/// what it stored).
pub async fn is_deleted(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, DbError> {
    let state: Option<String> = photos::table
        .find(id)
        .select(photos::state)
        .first(conn)
        .await
        .optional()?;
    Ok(state
        .as_deref()
        .is_none_or(|s| s == PhotoState::Deleted.as_str()))
}

/// Whether `id` is an import of `owner`'s, deleted or not.
pub async fn is_import(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        imports::table
            .filter(imports::id.eq(id))
            .filter(imports::owner_id.eq(owner)),
    ))
    .get_result(conn)
    .await?)
}
