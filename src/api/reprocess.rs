//! Reprocessing: `POST /v1/photos/{id}/reprocess`, `POST /v1/batches/{id}/reprocess` and
//! `GET /v1/reprocess/{id}` (see `crate::reprocess`).

use actix_web::web;
use chrono::{DateTime, Utc};
use paperclip::actix::{api_v2_operation, web::Json, AcceptedJson, Apiv2Schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;
use crate::db::{self, reprocess::Refusal, reprocess::RunProgress, reprocess::Target};
use crate::reprocess::ReprocessError;

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ReprocessQuery {
    /// Also photos whose variants match the configuration already (default false: only
    /// those made with another configuration).
    force: Option<bool>,
}

/// A reprocessing run and how far it is.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ReprocessRun {
    pub id: Uuid,
    /// `photo`, `batch` or `all`.
    pub target: String,
    pub created_at: DateTime<Utc>,
    /// Photos the run took.
    pub total: i32,
    /// Photos left out: their variants match the configuration already.
    pub up_to_date: i32,
    /// Photos left out: an earlier run is reprocessing them still.
    pub busy: i32,
    /// Of `total`: waiting, being processed, done (new variants in use), failed (the
    /// photo keeps its variants), skipped (deleted, or its original removed, meanwhile).
    pub queued: i64,
    pub processing: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    /// True once no photo of the run waits or runs.
    pub finished: bool,
}

impl From<RunProgress> for ReprocessRun {
    fn from(r: RunProgress) -> Self {
        ReprocessRun {
            finished: r.finished(),
            id: r.id,
            target: r.target,
            created_at: r.created_at,
            total: r.total,
            up_to_date: r.up_to_date,
            busy: r.busy,
            queued: r.queued,
            processing: r.processing,
            done: r.done,
            failed: r.failed,
            skipped: r.skipped,
        }
    }
}

impl From<ReprocessError> for ApiError {
    fn from(e: ReprocessError) -> Self {
        match e {
            ReprocessError::Db(e) => e.into(),
            ReprocessError::Config(e) => ApiError::Internal(e),
        }
    }
}

async fn request(
    state: &AppState,
    owner: Uuid,
    target: Target,
    query: &ReprocessQuery,
) -> Result<AcceptedJson<ReprocessRun>, ApiError> {
    let run = crate::reprocess::request(
        &state.pool,
        &state.queue,
        &state.config,
        Some(owner),
        target,
        query.force.unwrap_or(false),
    )
    .await?;
    match run {
        Ok(run) => Ok(AcceptedJson(run.into())),
        Err(Refusal::NotFound) => Err(ApiError::NotFound(match target {
            Target::Batch(_) => "batch",
            _ => "photo",
        })),
        Err(refusal @ Refusal::NotCompleted) => Err(ApiError::Conflict(refusal.to_string())),
        Err(Refusal::OriginalRemoved) => Err(ApiError::OriginalRemoved),
    }
}

/// Reprocess a photo
///
/// Makes the photo's variants again with the variant configuration of now, on the bulk
/// lane. Unless `force`, only when its variants were made with another configuration
/// (else the run takes nothing and says `up_to_date: 1`). The photo stays `completed` and
/// serves its variants until the new ones replace them (event `photo.reprocessed`; the
/// variants' URLs change with their bytes); nothing else of it changes. `409` for a photo
/// not completed, `410` when retention removed its original. Follow the run at
/// `GET /v1/reprocess/{id}`.
#[api_v2_operation(tags(Photos))]
pub async fn reprocess_photo(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
    query: web::Query<ReprocessQuery>,
) -> Result<AcceptedJson<ReprocessRun>, ApiError> {
    let target = Target::Photo(path.into_inner());
    request(&state, caller.owner, target, &query).await
}

/// Reprocess a batch
///
/// As `POST /v1/photos/{id}/reprocess`, for every completed photo of the batch (or
/// import) that still has its original.
#[api_v2_operation(tags(Batches))]
pub async fn reprocess_batch(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
    query: web::Query<ReprocessQuery>,
) -> Result<AcceptedJson<ReprocessRun>, ApiError> {
    let target = Target::Batch(path.into_inner());
    request(&state, caller.owner, target, &query).await
}

/// Get a reprocessing run
///
/// How far a run of this key's owner is: its photos by state.
#[api_v2_operation(tags(Photos))]
pub async fn get_run(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<ReprocessRun>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    db::reprocess::progress(&mut conn, path.into_inner(), Some(caller.owner))
        .await?
        .map(|r| Json(r.into()))
        .ok_or(ApiError::NotFound("reprocessing run"))
}
