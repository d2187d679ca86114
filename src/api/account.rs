//! The caller's own key and the work it has not finished: what the dashboard shows first.

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json};

use super::auth::Caller;
use super::error::ApiError;
use super::keys::KeyView;
use super::models::{StateCounts, UnfinishedCounts};
use super::AppState;
use crate::db;

/// Who am I
///
/// The key that made the request: its id, its owner (whose data it reaches), name and
/// scopes. Any active key may ask.
#[api_v2_operation(tags(Operations))]
pub async fn me(state: web::Data<AppState>, caller: Caller) -> Result<Json<KeyView>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let key = db::keys::get(&mut conn, caller.key)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(key.into()))
}

/// Unfinished photos
///
/// How many of the caller's photos wait to start and how many are being processed now.
#[api_v2_operation(tags(Operations))]
pub async fn stats(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<Json<UnfinishedCounts>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    Ok(Json(unfinished(&mut conn, Some(caller.owner)).await?))
}

/// Photos not yet final, of `owner` or (with `None`) of everyone.
pub(super) async fn unfinished(
    conn: &mut diesel_async::AsyncPgConnection,
    owner: Option<uuid::Uuid>,
) -> Result<UnfinishedCounts, ApiError> {
    let counts = StateCounts::from_rows(&db::photos::unfinished_counts(conn, owner).await?);
    Ok(UnfinishedCounts {
        queued: counts.queued,
        processing: counts.processing,
    })
}
