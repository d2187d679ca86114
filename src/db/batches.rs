//! Batches and their per-state counts.

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::Batch;
use super::schema::{batches, photos};
use super::DbError;

/// `owner`'s batch `id`, unless deleted.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<Batch>, DbError> {
    Ok(batches::table
        .filter(batches::id.eq(id))
        .filter(batches::owner_id.eq(owner))
        .filter(batches::deleted_at.is_null())
        .select(Batch::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// (state, number of photos) for every state present in the batch.
pub async fn state_counts(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Vec<(String, i64)>, DbError> {
    Ok(photos::table
        .filter(photos::batch_id.eq(id))
        .group_by(photos::state)
        .select((photos::state, count_star()))
        .load(conn)
        .await?)
}

/// (id, state) of every photo in the batch but the deleted, in upload order.
pub async fn photo_states(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Vec<(Uuid, String)>, DbError> {
    Ok(photos::table
        .filter(photos::batch_id.eq(id))
        .filter(photos::state.ne(crate::state::PhotoState::Deleted.as_str()))
        .order(photos::id.asc())
        .select((photos::id, photos::state))
        .load(conn)
        .await?)
}

/// `owner`'s batches older than `before` (all when `None`), newest first.
pub async fn list(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Batch>, DbError> {
    let mut query = batches::table
        .filter(batches::owner_id.eq(owner))
        .filter(batches::deleted_at.is_null())
        .order(batches::id.desc())
        .limit(limit)
        .select(Batch::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(batches::id.lt(before));
    }
    Ok(query.load(conn).await?)
}

/// (batch, state, number of photos) for every state present in each of `ids`.
pub async fn states_of(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, DbError> {
    Ok(photos::table
        .filter(photos::batch_id.eq_any(ids))
        .group_by((photos::batch_id, photos::state))
        .select((photos::batch_id, photos::state, count_star()))
        .load(conn)
        .await?)
}
