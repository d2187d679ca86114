//! Taking data out: deleting a photo, a batch or an import (tombstones in PostgreSQL, the
//! stored objects removed), and cancelling a batch or an import (its waiting photos end
//! `cancelled`; running ones finish).

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json, NoContent};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::models::{BatchSummary, StateCounts};
use super::AppState;
use crate::db::{self, lifecycle::Target};

/// Deletes `target` and removes the stored objects of every photo it names. The rows
/// commit first: a worker still processing one of the photos then finds its result stale
/// and removes what it stored itself; what a stop in between leaves, the orphan walk of
/// `crate::retention` removes.
async fn delete(state: &AppState, owner: Uuid, target: Target) -> Result<bool, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let Some(ids) = db::lifecycle::delete(&mut conn, owner, target).await? else {
        return Ok(false);
    };
    drop(conn);
    state.queue.changes_written();
    state.storage.remove_photos(&ids).await?;
    Ok(true)
}

/// Delete a photo
///
/// Its original and variants are removed from storage, its row kept as a tombstone
/// (state `deleted`, event `photo.deleted`) with its file name, EXIF, hash and placeholder
/// gone; from then on it is a 404. A photo being processed is deleted too: the worker's
/// result is dropped and what it stored removed. Deleting again is harmless (204, and any
/// object a failed earlier delete left is removed).
#[api_v2_operation(tags(Photos))]
pub async fn delete_photo(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<NoContent, ApiError> {
    if !delete(&state, caller.owner, Target::Photo(path.into_inner())).await? {
        return Err(ApiError::NotFound("photo"));
    }
    Ok(NoContent)
}

/// Delete a batch
///
/// Every photo of the batch, as `DELETE /v1/photos/{id}` deletes one; the batch is then a
/// 404 too.
#[api_v2_operation(tags(Batches))]
pub async fn delete_batch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<NoContent, ApiError> {
    if !delete(&state, caller.owner, Target::Batch(path.into_inner())).await? {
        return Err(ApiError::NotFound("batch"));
    }
    Ok(NoContent)
}

/// Delete an import
///
/// Every image the import downloaded, as `DELETE /v1/batches/{id}` deletes a batch. Its
/// products stay, without those images.
#[api_v2_operation(tags(Imports))]
pub async fn delete_import(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<NoContent, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    // Deleted or not: deleting again finishes what an interrupted delete left.
    let known = db::lifecycle::is_import(&mut conn, caller.owner, id).await?;
    drop(conn);
    if !known || !delete(&state, caller.owner, Target::Batch(id)).await? {
        return Err(ApiError::NotFound("import"));
    }
    Ok(NoContent)
}

/// Cancels the batch `id` and answers its counts after.
async fn cancel(state: &AppState, owner: Uuid, id: Uuid) -> Result<Option<BatchSummary>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let Some(batch) = db::batches::get(&mut conn, owner, id).await? else {
        return Ok(None);
    };
    let cancelled = db::lifecycle::cancel(&mut conn, owner, id).await?;
    if !cancelled.is_empty() {
        state.queue.changes_written();
    }
    let counts = StateCounts::from_rows(&db::batches::state_counts(&mut conn, id).await?);
    Ok(Some(BatchSummary::new(&batch, counts)))
}

/// Cancel a batch
///
/// Its photos still waiting (to start, or for a retry) end `cancelled` (event
/// `photo.cancelled`) and are never processed; photos being processed finish. Answers the
/// batch's counts after; cancelling a finished batch changes nothing.
#[api_v2_operation(tags(Batches))]
pub async fn cancel_batch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<BatchSummary>, ApiError> {
    cancel(&state, caller.owner, path.into_inner())
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("batch"))
}

/// Cancel an import
///
/// Its images not yet downloaded and processed end `cancelled`, as a batch's photos do.
#[api_v2_operation(tags(Imports))]
pub async fn cancel_import(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<BatchSummary>, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    if db::imports::get(&mut conn, caller.owner, id)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound("import"));
    }
    drop(conn);
    cancel(&state, caller.owner, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("import"))
}
