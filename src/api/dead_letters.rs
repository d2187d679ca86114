//! Dead letters: photos that ran out of attempts, and putting them back in the queue.

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json, AcceptedJson};

use super::auth::Caller;
use super::error::ApiError;
use super::models::{DeadLetterQuery, PhotoPage, PhotoRef, RedriveRequest, RedriveResponse};
use super::photos::page;
use super::AppState;
use crate::db::{jobs::RedriveFilter, models::PhotoState};
use crate::dispatch;

/// List dead letters
///
/// The caller's photos in state `dead` (out of attempts), with their last error; paginated
/// like `GET /v1/photos`.
#[api_v2_operation(tags(DeadLetters))]
pub async fn list_dead_letters(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<DeadLetterQuery>,
) -> Result<Json<PhotoPage>, ApiError> {
    let q = query.into_inner();
    let page = page(
        &state,
        &caller,
        q.batch,
        Some(PhotoState::Dead),
        q.cursor,
        q.limit,
    )
    .await?;
    Ok(Json(page))
}

/// Redrive dead letters
///
/// Puts the caller's dead photos back in the queue with a fresh attempt budget: one
/// batch's with `{"batch": "…"}`, all of them with `{}`; `"include_failed": true` takes
/// failed photos too. The body is required JSON: a malformed one, an unknown field or
/// another Content-Type is a 400 and redrives nothing.
#[api_v2_operation(tags(DeadLetters))]
pub async fn redrive(
    state: web::Data<AppState>,
    caller: Caller,
    body: Json<RedriveRequest>,
) -> Result<AcceptedJson<RedriveResponse>, ApiError> {
    let req = body.into_inner();
    if let Some(batch) = req.batch {
        super::batches::owned(&state, caller.owner, batch).await?;
    }
    let filter = RedriveFilter {
        owner: Some(caller.owner),
        batch: req.batch,
        photo: None,
        include_failed: req.include_failed.unwrap_or(false),
    };
    let ids = dispatch::redrive(&state.pool, &state.queue, &filter).await?;
    Ok(AcceptedJson(RedriveResponse {
        redriven: ids.len(),
        photos: ids
            .into_iter()
            .map(|id| PhotoRef::new(id, PhotoState::Queued.as_str()))
            .collect(),
    }))
}
