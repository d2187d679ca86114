//! `GET /v1/operator/overview`, for operator keys: the queue as a whole (lanes, workers,
//! dead letters, what waits, recent error codes). Aggregates only: no owner's photos.

use actix_web::web;
use paperclip::actix::{api_v2_operation, web::Json};

use super::auth::Caller;
use super::error::ApiError;
use super::models::{ErrorCount, LaneView, OperatorOverview, WorkerView};
use super::AppState;
use crate::db;
use crate::queue::{Lane, QueueError, ERROR_WINDOW_MINUTES};

/// Queue overview (operators)
///
/// Each lane's entries, deliveries and scheduled retries; the workers the consumer groups
/// know; dead letters; photos not yet final over every owner and the oldest wait; error
/// codes of the last hour. 403 `forbidden` for a key without the `operator` scope.
#[api_v2_operation(tags(Operations))]
pub async fn overview(
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<Json<OperatorOverview>, ApiError> {
    let queue = &state.queue;
    let unreachable = |e: QueueError| ApiError::Unavailable(format!("redis: {e}"));
    let mut lanes = Vec::new();
    let mut workers = Vec::new();
    for lane in Lane::ALL {
        let s = queue.lane_stats(lane).await.map_err(unreachable)?;
        lanes.push(LaneView {
            lane: lane.as_str().to_owned(),
            entries: s.entries,
            pending: s.pending,
            waiting: s.waiting(),
            scheduled: s.scheduled,
        });
        for c in queue.consumers(lane).await.map_err(unreachable)? {
            workers.push(WorkerView {
                active: c.active(),
                name: c.name,
                lane: lane.as_str().to_owned(),
                pending: c.pending,
                idle_ms: c.idle.as_millis() as u64,
            });
        }
    }
    workers.sort_by_key(|w| w.idle_ms);
    let dead_letters = queue.dead_letters().await.map_err(unreachable)?;
    let recent_errors = queue
        .recent_errors()
        .await
        .map_err(unreachable)?
        .into_iter()
        .map(|(code, attempts)| ErrorCount { code, attempts })
        .collect();
    let mut conn = db::conn(&state.pool).await?;
    let unfinished = super::account::unfinished(&mut conn, None).await?;
    let oldest_waiting_secs = db::photos::oldest_waiting_secs(&mut conn).await?;
    Ok(Json(OperatorOverview {
        lanes,
        dead_letters,
        unfinished,
        oldest_waiting_secs,
        workers,
        recent_errors,
        error_window_minutes: ERROR_WINDOW_MINUTES,
    }))
}
