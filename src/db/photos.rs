//! Photos and their variants: the job rows the workers move through their states.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Integer, Jsonb, Text, Timestamptz};
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::attempts::{self, AttemptRef};
use super::models::{AttemptOutcome, Batch, NewPhoto, Photo, PhotoState, Variant};
use super::schema::{batches, photos, variants};
use super::DbError;

/// Commits a batch and its photos in one transaction: either all are accepted or none.
/// With `idempotency` (key, answer), the answer is recorded in the same transaction; a
/// concurrent request with the same key makes this fail with a violation of
/// [`idempotency::CONSTRAINT`](super::idempotency::CONSTRAINT).
pub async fn insert_batch(
    conn: &mut AsyncPgConnection,
    batch: &Batch,
    new_photos: &[NewPhoto],
    idempotency: Option<(&str, &serde_json::Value)>,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::insert_into(batches::table)
            .values(batch)
            .execute(conn)
            .await?;
        diesel::insert_into(photos::table)
            .values(new_photos)
            .execute(conn)
            .await?;
        if let Some((key, response)) = idempotency {
            super::idempotency::insert(conn, batch.owner_id, key, batch.id, response).await?;
        }
        Ok(())
    })
    .await
}

/// One photo, if `owner` owns it.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<Photo>, DbError> {
    Ok(photos::table
        .filter(photos::id.eq(id))
        .filter(photos::owner_id.eq(owner))
        .select(Photo::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// What `GET /v1/photos` filters on.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub batch: Option<Uuid>,
    pub state: Option<PhotoState>,
    /// Keyset cursor: only photos with a greater id (ids are UUIDv7, so time-ordered).
    pub after: Option<Uuid>,
    pub limit: i64,
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    filter: &ListFilter,
) -> Result<Vec<Photo>, DbError> {
    let mut query = photos::table
        .filter(photos::owner_id.eq(owner))
        .select(Photo::as_select())
        .order(photos::id.asc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(batch) = filter.batch {
        query = query.filter(photos::batch_id.eq(batch));
    }
    if let Some(state) = filter.state {
        query = query.filter(photos::state.eq(state.as_str()));
    }
    if let Some(after) = filter.after {
        query = query.filter(photos::id.gt(after));
    }
    Ok(query.load(conn).await?)
}

/// Dead photos of every owner, oldest first (for operators).
pub async fn list_dead(conn: &mut AsyncPgConnection, limit: i64) -> Result<Vec<Photo>, DbError> {
    Ok(photos::table
        .filter(photos::state.eq(PhotoState::Dead.as_str()))
        .order(photos::id.asc())
        .limit(limit)
        .select(Photo::as_select())
        .load(conn)
        .await?)
}

/// Variants of the given photos, ordered by photo, then largest first.
pub async fn variants_of(
    conn: &mut AsyncPgConnection,
    photo_ids: &[Uuid],
) -> Result<Vec<Variant>, DbError> {
    Ok(variants::table
        .filter(variants::photo_id.eq_any(photo_ids))
        .order((variants::photo_id, variants::width.desc()))
        .select(Variant::as_select())
        .load(conn)
        .await?)
}

pub async fn variant(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
    name: &str,
) -> Result<Option<Variant>, DbError> {
    Ok(variants::table
        .filter(variants::photo_id.eq(photo_id))
        .filter(variants::name.eq(name))
        .select(Variant::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Steers the rest of the transaction to primary-key lookups. The batch statements touch a
/// few hundred rows by id; on a table of modest size the planner otherwise prefers a
/// sequential scan or a hash of the whole table, which costs more than the update itself.
async fn prefer_key_lookups(conn: &mut AsyncPgConnection) -> Result<(), DbError> {
    diesel::sql_query(
        "SELECT set_config('enable_seqscan', 'off', true), \
                set_config('enable_hashjoin', 'off', true), \
                set_config('enable_mergejoin', 'off', true)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Times a transaction over several photos is run again when PostgreSQL aborts it to
/// break a deadlock (two workers holding the same photo twice, in different orders).
const DEADLOCK_TRIES: usize = 3;

/// Marks photos `processing`, counts their attempt and opens its log entry, in one
/// transaction. Photos missing or already final are left out of the answer: their jobs
/// have nothing left to do.
pub async fn start_many(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    worker: &str,
) -> Result<Vec<(Photo, AttemptRef)>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        match start_many_once(conn, ids, worker, started).await {
            Err(e) if e.is_deadlock() && tries < DEADLOCK_TRIES => continue,
            other => return other,
        }
    }
}

async fn start_many_once(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    worker: &str,
    started: std::time::Instant,
) -> Result<Vec<(Photo, AttemptRef)>, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        prefer_key_lookups(conn).await?;
        let now = Utc::now();
        let photos: Vec<Photo> = diesel::update(photos::table)
            .filter(photos::id.eq_any(ids))
            .filter(
                photos::state
                    .eq_any([PhotoState::Queued.as_str(), PhotoState::Processing.as_str()]),
            )
            .set((
                photos::state.eq(PhotoState::Processing.as_str()),
                photos::attempts.eq(photos::attempts + 1),
                photos::started_at.eq(now),
                photos::updated_at.eq(now),
                photos::next_attempt_at.eq(None::<DateTime<Utc>>),
            ))
            .returning(Photo::as_returning())
            .get_results(conn)
            .await?;
        let opening: Vec<(Uuid, i32)> = photos.iter().map(|p| (p.id, p.attempts)).collect();
        let opened: std::collections::HashMap<Uuid, i64> =
            attempts::open_many(conn, &opening, worker)
                .await?
                .into_iter()
                .collect();
        photos
            .into_iter()
            .map(|photo| {
                let id = opened.get(&photo.id).copied().ok_or_else(|| {
                    DbError::Invariant(format!("no attempt opened for photo {}", photo.id))
                })?;
                Ok((photo, AttemptRef { id, started }))
            })
            .collect()
    })
    .await
}

/// What a successful job records.
#[derive(Debug, Clone)]
pub struct Completion {
    pub width: i32,
    pub height: i32,
    pub exif: serde_json::Value,
    pub variants: Vec<Variant>,
}

/// Records the results of several jobs and marks their photos `completed`, in one
/// transaction. Idempotent: variants are upserted, so running the same job twice leaves
/// the same rows.
pub async fn complete_many(
    conn: &mut AsyncPgConnection,
    done: &[(Uuid, &Completion, AttemptRef)],
) -> Result<(), DbError> {
    if done.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = done.iter().map(|(id, _, _)| *id).collect();
    let widths: Vec<i32> = done.iter().map(|(_, c, _)| c.width).collect();
    let heights: Vec<i32> = done.iter().map(|(_, c, _)| c.height).collect();
    let exifs: Vec<&serde_json::Value> = done.iter().map(|(_, c, _)| &c.exif).collect();
    let all_variants: Vec<&Variant> = done.iter().flat_map(|(_, c, _)| &c.variants).collect();
    let attempts: Vec<AttemptRef> = done.iter().map(|(_, _, a)| *a).collect();
    let mut tries = 0;
    loop {
        tries += 1;
        let result = conn
            .transaction::<_, DbError, _>(async |conn| {
                prefer_key_lookups(conn).await?;
                complete_rows(conn, &ids, &widths, &heights, &exifs, &all_variants).await?;
                attempts::close_completed(conn, &attempts).await
            })
            .await;
        match result {
            Err(e) if e.is_deadlock() && tries < DEADLOCK_TRIES => continue,
            other => return other,
        }
    }
}

/// The writes of `complete_many`, inside its transaction.
async fn complete_rows(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    widths: &[i32],
    heights: &[i32],
    exifs: &[&serde_json::Value],
    all_variants: &[&Variant],
) -> Result<(), DbError> {
    if !all_variants.is_empty() {
        diesel::insert_into(variants::table)
            .values(all_variants.to_vec())
            .on_conflict((variants::photo_id, variants::name))
            .do_update()
            .set((
                variants::storage_key.eq(excluded(variants::storage_key)),
                variants::content_type.eq(excluded(variants::content_type)),
                variants::width.eq(excluded(variants::width)),
                variants::height.eq(excluded(variants::height)),
                variants::bytes.eq(excluded(variants::bytes)),
                variants::etag.eq(excluded(variants::etag)),
            ))
            .execute(conn)
            .await?;
    }
    diesel::sql_query(
        "UPDATE photos AS p \
         SET state = $1, width = v.width, height = v.height, exif = v.exif, error = NULL, \
             completed_at = $2, updated_at = $2 \
         FROM unnest($3::uuid[], $4::int4[], $5::int4[], $6::jsonb[]) \
              AS v(id, width, height, exif) \
         WHERE p.id = v.id",
    )
    .bind::<Text, _>(PhotoState::Completed.as_str())
    .bind::<Timestamptz, _>(Utc::now())
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Array<Integer>, _>(widths)
    .bind::<Array<Integer>, _>(heights)
    .bind::<Array<Jsonb>, _>(exifs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves a photo to a final or waiting state and closes its attempt, in one transaction.
async fn transition(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    state: PhotoState,
    error: Option<&str>,
    next_attempt_at: Option<DateTime<Utc>>,
    attempt: Option<(AttemptRef, AttemptOutcome)>,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let completed_at = state.is_final().then_some(now);
        diesel::update(photos::table.find(id))
            .set((
                photos::state.eq(state.as_str()),
                photos::error.eq(error),
                photos::next_attempt_at.eq(next_attempt_at),
                photos::completed_at.eq(completed_at),
                photos::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
        if let Some((attempt, outcome)) = attempt {
            attempts::close(conn, attempt, outcome, error).await?;
        }
        Ok(())
    })
    .await
}

/// Ends a photo in `failed` (a permanent error: the input itself is at fault).
pub async fn fail(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
    attempt: AttemptRef,
) -> Result<(), DbError> {
    let attempt = Some((attempt, AttemptOutcome::Failed));
    transition(conn, id, PhotoState::Failed, Some(reason), None, attempt).await
}

/// Puts a photo back in `queued` after a transient error, its next attempt due at `at`.
pub async fn retry_later(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    error: &str,
    at: DateTime<Utc>,
    attempt: AttemptRef,
) -> Result<(), DbError> {
    let attempt = Some((attempt, AttemptOutcome::Retry));
    transition(conn, id, PhotoState::Queued, Some(error), Some(at), attempt).await
}

/// Ends a photo in `dead`: out of attempts. `attempt` is the one that gave up, if any ran.
pub async fn kill(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    reason: &str,
    attempt: Option<AttemptRef>,
) -> Result<(), DbError> {
    let attempt = attempt.map(|a| (a, AttemptOutcome::Dead));
    transition(conn, id, PhotoState::Dead, Some(reason), None, attempt).await
}

/// Gives an unfinished job back: `queued` again, and the attempt does not count.
pub async fn hand_back(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    attempt: AttemptRef,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::update(photos::table.find(id))
            .filter(photos::state.eq(PhotoState::Processing.as_str()))
            .set((
                photos::state.eq(PhotoState::Queued.as_str()),
                photos::attempts.eq(photos::attempts - 1),
                photos::updated_at.eq(Utc::now()),
            ))
            .execute(conn)
            .await?;
        attempts::close(conn, attempt, AttemptOutcome::HandedBack, None).await
    })
    .await
}

/// Records that these photos' jobs were published in `epoch`.
pub async fn mark_published(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    epoch: &str,
) -> Result<(), DbError> {
    diesel::update(photos::table)
        .filter(photos::id.eq_any(ids))
        .set(photos::published_epoch.eq(epoch))
        .execute(conn)
        .await?;
    Ok(())
}

/// Unfinished photos whose job is not known to be in the current Redis `epoch`, locked for
/// the caller's transaction (others skip them). Photos never published are left alone for
/// `grace` after their upload, while their uploader publishes them.
pub async fn lock_unpublished(
    conn: &mut AsyncPgConnection,
    epoch: &str,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<(Uuid, Option<DateTime<Utc>>)>, DbError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    Ok(photos::table
        .filter(
            photos::state.eq_any([PhotoState::Queued.as_str(), PhotoState::Processing.as_str()]),
        )
        .filter(
            photos::published_epoch.ne(epoch).or(photos::published_epoch
                .is_null()
                .and(photos::created_at.lt(cutoff))),
        )
        .order(photos::id.asc())
        .limit(limit)
        .select((photos::id, photos::next_attempt_at))
        .for_update()
        .skip_locked()
        .load(conn)
        .await?)
}

/// Which photos a redrive takes.
#[derive(Debug, Clone, Default)]
pub struct RedriveFilter {
    /// Only this owner's photos (API callers); `None` for operators.
    pub owner: Option<Uuid>,
    pub batch: Option<Uuid>,
    pub photo: Option<Uuid>,
    /// Also take `failed` photos, not only `dead` ones.
    pub include_failed: bool,
}

/// Puts dead (and, if asked, failed) photos back in `queued` with a fresh attempt budget.
/// Returns their ids; the caller publishes them.
pub async fn requeue(
    conn: &mut AsyncPgConnection,
    filter: &RedriveFilter,
) -> Result<Vec<Uuid>, DbError> {
    let mut states = vec![PhotoState::Dead.as_str()];
    if filter.include_failed {
        states.push(PhotoState::Failed.as_str());
    }
    let mut query = diesel::update(photos::table)
        .filter(photos::state.eq_any(states))
        .into_boxed();
    if let Some(owner) = filter.owner {
        query = query.filter(photos::owner_id.eq(owner));
    }
    if let Some(batch) = filter.batch {
        query = query.filter(photos::batch_id.eq(batch));
    }
    if let Some(photo) = filter.photo {
        query = query.filter(photos::id.eq(photo));
    }
    Ok(query
        .set((
            photos::state.eq(PhotoState::Queued.as_str()),
            photos::attempts.eq(0),
            photos::error.eq(None::<String>),
            photos::next_attempt_at.eq(None::<DateTime<Utc>>),
            photos::published_epoch.eq(None::<String>),
            photos::completed_at.eq(None::<DateTime<Utc>>),
            photos::updated_at.eq(Utc::now()),
        ))
        .returning(photos::id)
        .get_results(conn)
        .await?)
}
