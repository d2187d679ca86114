//! The attempt log of each photo.

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{Attempt, AttemptOutcome};
use super::schema::photo_attempts;
use super::DbError;

/// Closes attempts left `running` by workers that died, then opens the given attempts
/// (photo, attempt number), all by `worker`. Returns each photo's new attempt id.
pub async fn open_many(
    conn: &mut AsyncPgConnection,
    opening: &[(Uuid, i32)],
    worker: &str,
) -> Result<Vec<(Uuid, i64)>, DbError> {
    if opening.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    // Only a photo on its second attempt or later can have an attempt left running.
    let again: Vec<Uuid> = opening
        .iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| *id)
        .collect();
    if !again.is_empty() {
        diesel::update(photo_attempts::table)
            .filter(photo_attempts::photo_id.eq_any(&again))
            .filter(photo_attempts::outcome.eq(AttemptOutcome::Running.as_str()))
            .set((
                photo_attempts::outcome.eq(AttemptOutcome::Interrupted.as_str()),
                photo_attempts::finished_at.eq(now),
            ))
            .execute(conn)
            .await?;
    }
    let rows: Vec<_> = opening
        .iter()
        .map(|&(photo_id, n)| {
            (
                photo_attempts::photo_id.eq(photo_id),
                photo_attempts::attempt.eq(n),
                photo_attempts::worker.eq(worker),
                photo_attempts::started_at.eq(now),
            )
        })
        .collect();
    Ok(diesel::insert_into(photo_attempts::table)
        .values(&rows)
        .returning((photo_attempts::photo_id, photo_attempts::id))
        .get_results(conn)
        .await?)
}

/// An attempt in progress, as the worker knows it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRef {
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
