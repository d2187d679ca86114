//! Photos and their variants: recording uploads and reading them back. The job
//! transitions that move a photo through its states are in `jobs`.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{Batch, NewPhoto, Photo, PhotoState, Variant};
use super::schema::{batches, photos, variants};
use super::DbError;

/// Commits a batch and its photos in one transaction: either all are accepted or none.
/// With `idempotency` (key, answer), the answer is recorded in the same transaction; a
/// concurrent request with the same key makes this fail with a violation of
/// [`idempotency::CONSTRAINT`](super::idempotency::CONSTRAINT).
pub async fn insert_batch(
    conn: &mut AsyncPgConnection,
    batch: &Batch,
    new_photos: &[NewPhoto],
    idempotency: Option<(&str, &serde_json::Value)>,
    quotas: crate::config::QuotasConfig,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let bytes = new_photos.iter().filter_map(|p| p.bytes).sum();
        super::usage::admit(
            conn,
            batch.owner_id,
            new_photos.len() as i64,
            bytes,
            quotas,
            batch.created_at,
        )
        .await?;
        diesel::insert_into(batches::table)
            .values(batch)
            .execute(conn)
            .await?;
        diesel::insert_into(photos::table)
            .values(new_photos)
            .execute(conn)
            .await?;
        if let Some((key, response)) = idempotency {
            super::idempotency::insert(conn, batch.owner_id, key, batch.id, response).await?;
        }
        Ok(())
    })
    .await
}

/// One photo, if `owner` owns it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<Photo>, DbError> {
    get_for(conn, Some(owner), id).await
}

/// The photo `id`, if `owner`'s (any owner's with `None`: a signed URL names the photo),
/// unless it was deleted.
pub async fn get_for(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
    id: Uuid,
) -> Result<Option<Photo>, DbError> {
    let mut query = photos::table
        .filter(photos::id.eq(id))
        .filter(photos::state.ne(PhotoState::Deleted.as_str()))
        .select(Photo::as_select())
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(photos::owner_id.eq(owner));
    }
    Ok(query.first(conn).await.optional()?)
}

/// The given photos, in any order, deleted ones left out.
pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> Result<Vec<Photo>, DbError> {
    Ok(photos::table
        .filter(photos::id.eq_any(ids))
        .filter(photos::state.ne(PhotoState::Deleted.as_str()))
        .select(Photo::as_select())
        .load(conn)
        .await?)
}

/// What `GET /v1/photos` filters on.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub batch: Option<Uuid>,
    pub state: Option<PhotoState>,
    /// Keyset cursor: only photos with a greater id (ids are UUIDv7, so time-ordered).
    pub after: Option<Uuid>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    filter: &ListFilter,
) -> Result<Vec<Photo>, DbError> {
    let mut query = photos::table
        .filter(photos::owner_id.eq(owner))
        .filter(photos::state.ne(PhotoState::Deleted.as_str()))
        .select(Photo::as_select())
        .order(photos::id.asc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(batch) = filter.batch {
        query = query.filter(photos::batch_id.eq(batch));
    }
    match filter.state {
        // Through the partial indexes: their conditions are these generated columns.
        Some(PhotoState::Dead) => query = query.filter(photos::dead),
        Some(s @ (PhotoState::Queued | PhotoState::Processing)) => {
            query = query.filter(photos::unfinished.and(photos::state.eq(s.as_str())))
        }
        Some(state) => query = query.filter(photos::state.eq(state.as_str())),
        None => {}
    }
    if let Some(after) = filter.after {
        query = query.filter(photos::id.gt(after));
    }
    Ok(query.load(conn).await?)
}

/// Dead photos of every owner, oldest first (for operators).
pub async fn list_dead(conn: &mut AsyncPgConnection, limit: i64) -> Result<Vec<Photo>, DbError> {
    Ok(photos::table
        .filter(photos::dead)
        .order(photos::id.asc())
        .limit(limit)
        .select(Photo::as_select())
        .load(conn)
        .await?)
}

/// Variants of the given photos, ordered by photo, then largest first.
/// A completed photo of `owner` (other than `except`) made from the bytes `sha256` with
/// the variant configuration `fingerprint`, with its variants: results to reuse. The
/// oldest such photo, which is never itself a copy's copy unless it was the first.
pub async fn reusable(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    sha256: &str,
    fingerprint: &str,
    except: Uuid,
) -> Result<Option<(Photo, Vec<Variant>)>, DbError> {
    let found: Option<Photo> = photos::table
        .filter(photos::owner_id.eq(owner))
        .filter(photos::sha256.eq(sha256))
        .filter(photos::variant_fingerprint.eq(fingerprint))
        .filter(photos::variant_fingerprint.is_not_null())
        .filter(photos::state.eq(PhotoState::Completed.as_str()))
        .filter(photos::id.ne(except))
        .order(photos::id)
        .select(Photo::as_select())
        .first(conn)
        .await
        .optional()?;
    let Some(photo) = found else {
        return Ok(None);
    };
    let variants = variants_of(conn, &[photo.id]).await?;
    Ok(Some((photo, variants)))
}

pub async fn variants_of(
    conn: &mut AsyncPgConnection,
    photo_ids: &[Uuid],
) -> Result<Vec<Variant>, DbError> {
    Ok(variants::table
        .filter(variants::photo_id.eq_any(photo_ids))
        .order((variants::photo_id, variants::width.desc()))
        .select(Variant::as_select())
        .load(conn)
        .await?)
}

pub async fn variant(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
    name: &str,
) -> Result<Option<Variant>, DbError> {
    Ok(variants::table
        .filter(variants::photo_id.eq(photo_id))
        .filter(variants::name.eq(name))
        .select(Variant::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// How long (seconds) the oldest photo waiting to start has waited since it was due:
/// `queued`, its retry (if any) due, the first in id order (ids grow with time). None when
/// nothing waits.
pub async fn oldest_waiting_secs(conn: &mut AsyncPgConnection) -> Result<Option<f64>, DbError> {
    #[derive(QueryableByName)]
    struct Waited {
        #[diesel(sql_type = diesel::sql_types::Double)]
        secs: f64,
    }
    let row: Option<Waited> = diesel::sql_query(
        "SELECT extract(epoch FROM now() - coalesce(next_attempt_at, created_at))::float8 \
             AS secs \
         FROM photos \
         WHERE unfinished AND state = 'queued' \
           AND (next_attempt_at IS NULL OR next_attempt_at <= now()) \
         ORDER BY id LIMIT 1",
    )
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map(|w| w.secs.max(0.0)))
}

/// (state, photos) of the photos not yet final (`queued`, `processing`): `owner`'s, or
/// every owner's with `None`. Read through the partial index of unfinished photos, so its
/// cost follows the backlog, not the history.
pub async fn unfinished_counts(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
) -> Result<Vec<(String, i64)>, DbError> {
    let mut query = photos::table
        // The index's own condition.
        .filter(photos::unfinished)
        .group_by(photos::state)
        .select((photos::state, diesel::dsl::count_star()))
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(photos::owner_id.eq(owner));
    }
    Ok(query.load(conn).await?)
}
