//! The attempt log of each photo.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{Attempt, AttemptOutcome};
use super::schema::photo_attempts;
use super::DbError;

/// Closes the attempts of these photos still `running`: their workers stopped (the photo
/// was taken over or reclaimed).
pub async fn interrupt_running(
    conn: &mut AsyncPgConnection,
    photo_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if photo_ids.is_empty() {
        return Ok(());
    }
    diesel::update(photo_attempts::table)
        .filter(photo_attempts::photo_id.eq_any(photo_ids))
        .filter(photo_attempts::outcome.eq(AttemptOutcome::Running.as_str()))
        .set((
            photo_attempts::outcome.eq(AttemptOutcome::Interrupted.as_str()),
            photo_attempts::finished_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// An attempt in progress, as the worker knows it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRef {
    /// The `photo_attempts` row, also held in `photos.attempt_id` while it runs.
    pub id: i64,
    pub started: std::time::Instant,
}

/// Records how an attempt ended.
pub async fn close(
    conn: &mut AsyncPgConnection,
    attempt: AttemptRef,
    outcome: AttemptOutcome,
    error: Option<&str>,
) -> Result<(), DbError> {
    diesel::update(photo_attempts::table.find(attempt.id))
        .set((
            photo_attempts::outcome.eq(outcome.as_str()),
            photo_attempts::error.eq(error),
            photo_attempts::finished_at.eq(Utc::now()),
            photo_attempts::duration_ms.eq(attempt.started.elapsed().as_millis() as i64),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Every attempt of a photo, oldest first.
pub async fn of_photo(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
) -> Result<Vec<Attempt>, DbError> {
    Ok(photo_attempts::table
        .filter(photo_attempts::photo_id.eq(photo_id))
        .order(photo_attempts::id.asc())
        .select(Attempt::as_select())
        .load(conn)
        .await?)
}
