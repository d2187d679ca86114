//! The attempt log of each photo.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
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

/// Opens attempts (photo, attempt id, attempt number), all run by `worker`. The ids were
/// taken from the table's sequence when the photos were started.
pub async fn open_many(
    conn: &mut AsyncPgConnection,
    opening: &[(Uuid, i64, i32)],
    worker: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if opening.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = opening
        .iter()
        .map(|&(photo_id, id, n)| {
            (
                photo_attempts::id.eq(id),
                photo_attempts::photo_id.eq(photo_id),
                photo_attempts::attempt.eq(n),
                photo_attempts::worker.eq(worker),
                photo_attempts::started_at.eq(now),
            )
        })
        .collect();
    diesel::insert_into(photo_attempts::table)
        .values(&rows)
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

/// Closes these attempts as completed, in one statement.
pub async fn close_completed(
    conn: &mut AsyncPgConnection,
    attempts: &[AttemptRef],
) -> Result<(), DbError> {
    let ids: Vec<i64> = attempts.iter().map(|a| a.id).collect();
    let ms: Vec<i64> = attempts
        .iter()
        .map(|a| a.started.elapsed().as_millis() as i64)
        .collect();
    diesel::sql_query(
        "UPDATE photo_attempts AS a \
         SET outcome = $1, error = NULL, finished_at = $2, duration_ms = v.ms \
         FROM unnest($3::int8[], $4::int8[]) AS v(id, ms) WHERE a.id = v.id",
    )
    .bind::<Text, _>(AttemptOutcome::Completed.as_str())
    .bind::<Timestamptz, _>(Utc::now())
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<BigInt>, _>(ms)
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
