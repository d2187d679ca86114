//! The caller's own key, its owner's quotas and use of them, and the work it has not
//! finished: what the dashboard shows first.

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

/// An owner's use of its quotas.
#[derive(Debug, serde::Serialize, serde::Deserialize, paperclip::actix::Apiv2Schema)]
pub struct UsageView {
    /// Photos added since midnight UTC (uploads and import images; deleted ones count).
    pub photos_today: i64,
    /// Photos the owner may add per UTC day; null: no limit.
    pub photos_per_day: Option<i64>,
    /// When the day's count starts again (midnight UTC).
    pub resets_at: chrono::DateTime<chrono::Utc>,
    /// Bytes of originals and variants in storage.
    pub bytes_stored: i64,
    /// Bytes the owner may keep in storage; null: no limit.
    pub bytes_stored_limit: Option<i64>,
}

/// Quotas and their use
///
/// The caller's owner's quotas (all its keys together) and what it has used of them. An
/// upload or an import past the photos of the day is refused with 429
/// `daily_quota_exceeded` (Retry-After: until midnight UTC); once the bytes stored reach
/// their limit, with 403 `storage_quota_exceeded` until photos are deleted.
#[api_v2_operation(tags(Operations))]
pub async fn usage(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<Json<UsageView>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let u = db::usage::usage(
        &mut conn,
        caller.owner,
        state.config.quotas,
        chrono::Utc::now(),
    )
    .await?;
    Ok(Json(UsageView {
        photos_today: u.photos_today,
        photos_per_day: u.limits.photos_per_day,
        resets_at: u.resets_at,
        bytes_stored: u.bytes_stored,
        bytes_stored_limit: u.limits.bytes_stored,
    }))
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
