//! `GET /v1/batches` and `GET /v1/batches/{id}`: where the caller's batches stand.

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::models::{BatchListQuery, BatchPage, BatchSummary, BatchView, PhotoRef, StateCounts};
use super::AppState;
use crate::db;

/// Answers 404 unless `owner` owns the batch.
pub(super) async fn owned(state: &AppState, owner: Uuid, batch: Uuid) -> Result<(), ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    db::batches::get(&mut conn, owner, batch)
        .await?
        .map(drop)
        .ok_or(ApiError::NotFound("batch"))
}

/// Get a batch
///
/// Per-state counts, the overall state and every photo's state.
#[api_v2_operation(tags(Batches))]
pub async fn get_batch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<BatchView>, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    let batch = db::batches::get(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    let counts = StateCounts::from_rows(&db::batches::state_counts(&mut conn, id).await?);
    let photos = db::batches::photo_states(&mut conn, id).await?;
    Ok(Json(BatchView {
        summary: BatchSummary::new(&batch, counts),
        photos: photos
            .into_iter()
            .map(|(id, state)| PhotoRef::new(id, &state))
            .collect(),
    }))
}

/// List batches
///
/// The caller's batches, newest first, each with its per-state counts and overall state;
/// paginated with `cursor` and `limit`.
#[api_v2_operation(tags(Batches))]
pub async fn list_batches(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<BatchListQuery>,
) -> Result<Json<BatchPage>, ApiError> {
    let q = query.into_inner();
    let (before, limit) = super::photos::keyset(q.cursor.as_deref(), q.limit)?;
    let mut conn = db::conn(&state.pool).await?;
    let batches = db::batches::list(&mut conn, caller.owner, before, limit).await?;
    let ids: Vec<Uuid> = batches.iter().map(|b| b.id).collect();
    let states = db::batches::states_of(&mut conn, &ids).await?;
    let next_cursor = (batches.len() as i64 == limit)
        .then(|| batches.last().map(|b| b.id.to_string()))
        .flatten();
    let batches = batches
        .into_iter()
        .map(|b| {
            let rows: Vec<(String, i64)> = states
                .iter()
                .filter(|(batch, _, _)| *batch == b.id)
                .map(|(_, state, n)| (state.clone(), *n))
                .collect();
            BatchSummary::new(&b, StateCounts::from_rows(&rows))
        })
        .collect();
    Ok(Json(BatchPage {
        batches,
        next_cursor,
    }))
}
