//! The transitions of `crate::state`, as guarded SQL: each statement updates a photo only
//! when the row still holds what the transition expects (the state, the entry, the attempt),
//! so a stale or duplicate delivery changes nothing. Every function here mirrors one arm of
//! [`state::apply`](crate::state::apply); `tests/state_machine.rs` replays random event
//! sequences on both and compares the rows.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Integer, Interval, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::attempts::{self, AttemptRef};
use super::models::{Photo, Variant};
use super::schema::photos;
use super::DbError;
use crate::state::{AttemptOutcome, Lane, PhotoState};

/// Times a transaction over several photos is run again when PostgreSQL aborts it to break
/// a deadlock (two workers holding the same photo twice, in different orders).
const CONFLICT_TRIES: usize = 3;

/// Awaits the transaction `$tx` (an expression making a future), again when PostgreSQL
/// asks for it to be rerun (deadlock, serialization failure), up to `CONFLICT_TRIES` times.
macro_rules! rerun_on_conflict {
    ($tx:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            match $tx.await {
                Err(e) if e.is_conflict() && tries < CONFLICT_TRIES => continue,
                other => break other,
            }
        }
    }};
}

/// One delivery a worker wants to start.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub photo_id: Uuid,
    pub entry: String,
    /// How many times Redis has delivered the entry (this delivery included).
    pub deliveries: i32,
}

/// What starting a read batch did.
#[derive(Debug, Default)]
pub struct Starts {
    /// Photos now `processing`, with their attempt.
    pub started: Vec<(Photo, AttemptRef)>,
    /// Photos whose budget was spent before this start: now `dead`, with the reason.
    pub dead: Vec<(Uuid, String)>,
}

/// `Start` for several deliveries, in one statement: each photo that is `queued`, or
/// `processing` from this very entry (taken over from a worker that died), moves to
/// `processing` with a new attempt, or to `dead` when its attempt budget is spent (by
/// attempts recorded, or by Redis deliveries that never got as far as recording a start).
/// Photos in any other state are left out: their deliveries are stale.
pub async fn start_many(
    conn: &mut AsyncPgConnection,
    delivered: &[Delivered],
    worker: &str,
    max_attempts: i32,
) -> Result<Starts, DbError> {
    if delivered.is_empty() {
        return Ok(Starts::default());
    }
    let started = std::time::Instant::now();
    let ids: Vec<Uuid> = delivered.iter().map(|d| d.photo_id).collect();
    let entries: Vec<&str> = delivered.iter().map(|d| d.entry.as_str()).collect();
    let counts: Vec<i32> = delivered.iter().map(|d| d.deliveries).collect();
    let spent = spent_reason(max_attempts);
    let now = Utc::now();
    // One statement (atomic without a transaction of its own): a photo whose budget is
    // spent ($4 attempts recorded, or more deliveries than that) goes to `dead`, any other
    // it may take to `processing` with a new attempt (`o`). Only a take-over (a delivery
    // after the first) can find the photo `processing` with an attempt still `running`:
    // every other way out of `processing` closes its attempt; `x` closes it as interrupted.
    let photos: Vec<Photo> = rerun_on_conflict!(async {
        diesel::sql_query(
            "WITH p AS ( \
           UPDATE photos AS p \
           SET state = CASE WHEN p.attempts >= $4 OR v.n > $4 \
                 THEN 'dead' ELSE 'processing' END, \
               attempts = CASE WHEN p.attempts >= $4 OR v.n > $4 \
                 THEN p.attempts ELSE p.attempts + 1 END, \
               attempt_id = CASE WHEN p.attempts >= $4 OR v.n > $4 \
                 THEN NULL ELSE nextval(pg_get_serial_sequence('photo_attempts', 'id')) END, \
               started_at = CASE WHEN p.attempts >= $4 OR v.n > $4 \
                 THEN p.started_at ELSE $5 END, \
               completed_at = CASE WHEN p.attempts >= $4 OR v.n > $4 \
                 THEN $5 ELSE p.completed_at END, \
               error = CASE \
                 WHEN p.attempts >= $4 THEN $6 || coalesce('; last error: ' || p.error, '') \
                 WHEN v.n > $4 THEN 'delivered ' || v.n || ' times without a recorded \
                      start: the job stops its worker before it can begin' \
                 ELSE p.error END, \
               error_code = CASE \
                 WHEN p.attempts >= $4 THEN coalesce(p.error_code, 'attempts_exhausted') \
                 WHEN v.n > $4 THEN 'worker_crashed' \
                 ELSE p.error_code END, \
               entry_id = v.entry, updated_at = $5, next_attempt_at = NULL \
           FROM unnest($1::uuid[], $2::text[], $3::int4[]) AS v(id, entry, n) \
           WHERE p.id = v.id \
             AND (p.state = 'queued' OR (p.state = 'processing' AND p.entry_id = v.entry)) \
           RETURNING p.*, v.n AS deliveries), \
         x AS ( \
           UPDATE photo_attempts AS a SET outcome = 'interrupted', finished_at = $5 \
           FROM p WHERE p.deliveries > 1 AND a.photo_id = p.id AND a.outcome = 'running'), \
         o AS ( \
           INSERT INTO photo_attempts (id, photo_id, attempt, worker, started_at) \
           SELECT p.attempt_id, p.id, p.attempts, $7, $5 FROM p \
           WHERE p.attempt_id IS NOT NULL) \
         SELECT * FROM p",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Text>, _>(&entries)
        .bind::<Array<Integer>, _>(&counts)
        .bind::<Integer, _>(max_attempts)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(&spent)
        .bind::<Text, _>(worker)
        .load(&mut *conn)
        .await
        .map_err(DbError::from)
    })?;
    let mut starts = Starts::default();
    for photo in photos {
        match photo.attempt_id {
            Some(id) => starts.started.push((photo, AttemptRef { id, started })),
            None => starts
                .dead
                .push((photo.id, photo.error.unwrap_or_default())),
        }
    }
    Ok(starts)
}

#[derive(QueryableByName)]
struct IdOnly {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// What a successful job records.
#[derive(Debug, Clone)]
pub struct Completion {
    pub width: i32,
    pub height: i32,
    pub exif: serde_json::Value,
    /// The photo's ThumbHash, base64.
    pub thumbhash: Option<String>,
    /// The variant configuration the results were made with (`Spec::fingerprint`).
    pub fingerprint: Option<String>,
    /// The photo whose results were copied, if they were.
    pub reused_from: Option<Uuid>,
    pub variants: Vec<Variant>,
    /// For a photo downloaded from a URL: what was downloaded.
    pub original: Option<OriginalInfo>,
}

/// The type, size and hash of an original a worker downloaded.
#[derive(Debug, Clone)]
pub struct OriginalInfo {
    pub content_type: String,
    pub bytes: i64,
    pub sha256: String,
}

impl OriginalInfo {
    pub fn of(data: &[u8], content_type: &str) -> Self {
        use sha2::Digest;
        OriginalInfo {
            content_type: content_type.to_owned(),
            bytes: data.len() as i64,
            sha256: hex::encode(sha2::Sha256::digest(data)),
        }
    }
}

/// `Finish(Completed)` for several jobs, in one statement: results and variants are
/// recorded only for photos still `processing` under the attempt that made them. Returns
/// the photos recorded; the others' results were stale and are dropped.
pub async fn complete_many(
    conn: &mut AsyncPgConnection,
    done: &[(Uuid, &Completion, AttemptRef)],
) -> Result<Vec<Uuid>, DbError> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = done.iter().map(|(id, _, _)| *id).collect();
    let attempt_ids: Vec<i64> = done.iter().map(|(_, _, a)| a.id).collect();
    let ms: Vec<i64> = done
        .iter()
        .map(|(_, _, a)| a.started.elapsed().as_millis() as i64)
        .collect();
    let widths: Vec<i32> = done.iter().map(|(_, c, _)| c.width).collect();
    let heights: Vec<i32> = done.iter().map(|(_, c, _)| c.height).collect();
    let exifs: Vec<&serde_json::Value> = done.iter().map(|(_, c, _)| &c.exif).collect();
    let thumbhashes: Vec<Option<&str>> = done
        .iter()
        .map(|(_, c, _)| c.thumbhash.as_deref())
        .collect();
    let fingerprints: Vec<Option<&str>> = done
        .iter()
        .map(|(_, c, _)| c.fingerprint.as_deref())
        .collect();
    let reused: Vec<Option<Uuid>> = done.iter().map(|(_, c, _)| c.reused_from).collect();
    let originals = done.iter().map(|(_, c, _)| c.original.as_ref());
    let types: Vec<Option<&str>> = originals
        .clone()
        .map(|o| o.map(|o| o.content_type.as_str()))
        .collect();
    let sizes: Vec<Option<i64>> = originals.clone().map(|o| o.map(|o| o.bytes)).collect();
    let hashes: Vec<Option<&str>> = originals.map(|o| o.map(|o| o.sha256.as_str())).collect();
    let variants = VariantColumns::of(done.iter().flat_map(|(_, c, _)| &c.variants));
    // One statement (atomic without a transaction of its own): the photos still held by
    // the attempts that made these results (`p`), their attempts closed (`a`) and their
    // variants recorded, replacing those an earlier run of the same photo wrote (`w`).
    let recorded: Vec<IdOnly> = rerun_on_conflict!(async {
        diesel::sql_query(
            "WITH p AS ( \
           UPDATE photos AS p \
           SET state = 'completed', width = v.width, height = v.height, exif = v.exif, \
               thumbhash = v.thumbhash, variant_fingerprint = v.fingerprint, \
               reused_from = v.reused_from, error = NULL, error_code = NULL, attempt_id = NULL, completed_at = $1, \
               updated_at = $1, content_type = coalesce(v.content_type, p.content_type), \
               bytes = coalesce(v.bytes, p.bytes), sha256 = coalesce(v.sha256, p.sha256) \
           FROM unnest($2::uuid[], $3::int8[], $4::int4[], $5::int4[], $6::jsonb[], \
                       $7::text[], $8::int8[], $9::text[], $10::int8[], $19::text[], \
                       $20::text[], $21::uuid[]) \
                AS v(id, attempt_id, width, height, exif, content_type, bytes, sha256, ms, \
                     thumbhash, fingerprint, reused_from) \
           WHERE p.id = v.id AND p.attempt_id = v.attempt_id \
           RETURNING p.id, v.attempt_id, v.ms), \
         a AS ( \
           UPDATE photo_attempts AS a \
           SET outcome = 'completed', error = NULL, finished_at = $1, duration_ms = p.ms \
           FROM p WHERE a.id = p.attempt_id), \
         w AS ( \
           INSERT INTO variants \
             (photo_id, name, storage_key, content_type, width, height, bytes, etag) \
           SELECT w.* FROM unnest($11::uuid[], $12::text[], $13::text[], $14::text[], \
                                  $15::int4[], $16::int4[], $17::int8[], $18::text[]) \
                AS w(photo_id, name, storage_key, content_type, width, height, bytes, etag) \
           WHERE w.photo_id IN (SELECT id FROM p) \
           ON CONFLICT (photo_id, name) DO UPDATE \
           SET storage_key = excluded.storage_key, content_type = excluded.content_type, \
               width = excluded.width, height = excluded.height, bytes = excluded.bytes, \
               etag = excluded.etag) \
         SELECT id FROM p",
        )
        .bind::<Timestamptz, _>(Utc::now())
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<BigInt>, _>(&attempt_ids)
        .bind::<Array<Integer>, _>(&widths)
        .bind::<Array<Integer>, _>(&heights)
        .bind::<Array<Jsonb>, _>(&exifs)
        .bind::<Array<Nullable<Text>>, _>(&types)
        .bind::<Array<Nullable<BigInt>>, _>(&sizes)
        .bind::<Array<Nullable<Text>>, _>(&hashes)
        .bind::<Array<BigInt>, _>(&ms)
        .bind::<Array<SqlUuid>, _>(&variants.photo_ids)
        .bind::<Array<Text>, _>(&variants.names)
        .bind::<Array<Text>, _>(&variants.keys)
        .bind::<Array<Text>, _>(&variants.types)
        .bind::<Array<Integer>, _>(&variants.widths)
        .bind::<Array<Integer>, _>(&variants.heights)
        .bind::<Array<BigInt>, _>(&variants.bytes)
        .bind::<Array<Text>, _>(&variants.etags)
        .bind::<Array<Nullable<Text>>, _>(&thumbhashes)
        .bind::<Array<Nullable<Text>>, _>(&fingerprints)
        .bind::<Array<Nullable<SqlUuid>>, _>(&reused)
        .load(&mut *conn)
        .await
        .map_err(DbError::from)
    })?;
    Ok(recorded.into_iter().map(|r| r.id).collect())
}

/// Variant rows as one array per column, for `unnest`.
#[derive(Default)]
struct VariantColumns<'a> {
    photo_ids: Vec<Uuid>,
    names: Vec<&'a str>,
    keys: Vec<&'a str>,
    types: Vec<&'a str>,
    widths: Vec<i32>,
    heights: Vec<i32>,
    bytes: Vec<i64>,
    etags: Vec<&'a str>,
}

impl<'a> VariantColumns<'a> {
    fn of(rows: impl Iterator<Item = &'a Variant>) -> Self {
        let mut c = VariantColumns::default();
        for v in rows {
            c.photo_ids.push(v.photo_id);
            c.names.push(&v.name);
            c.keys.push(&v.storage_key);
            c.types.push(&v.content_type);
            c.widths.push(v.width);
            c.heights.push(v.height);
            c.bytes.push(v.bytes);
            c.etags.push(&v.etag);
        }
        c
    }
}

/// How a worker ends one attempt other than by completing it.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// The input is at fault: `failed`, with a stable `code` beside the reason.
    Failed { code: &'a str, reason: &'a str },
    /// A transient error: back to `queued`, the next attempt due `after` the moment the
    /// attempt is recorded as finished (so the gap in its history is never shorter).
    Retry {
        code: &'a str,
        error: &'a str,
        after: std::time::Duration,
    },
    /// Out of attempts: `dead`.
    Dead { code: &'a str, reason: &'a str },
    /// Given back unfinished and published again as `entry` (if that worked): `queued`,
    /// and the attempt does not count.
    HandBack { entry: Option<&'a str> },
}

impl<'a> Ending<'a> {
    /// The error code the photo records, for an ending that is an error.
    pub fn code(&self) -> Option<&'a str> {
        match *self {
            Ending::Failed { code, .. }
            | Ending::Retry { code, .. }
            | Ending::Dead { code, .. } => Some(code),
            Ending::HandBack { .. } => None,
        }
    }
}

/// `Finish` other than completed: moves the photo only if it is still `processing` under
/// `attempt`, and closes the attempt. False when the attempt was stale (nothing changed).
pub async fn finish(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
    attempt: AttemptRef,
    ending: Ending<'_>,
) -> Result<bool, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let guarded = photos::table
            .filter(photos::id.eq(photo_id))
            .filter(photos::state.eq(PhotoState::Processing.as_str()))
            .filter(photos::attempt_id.eq(attempt.id));
        let no_id = photos::attempt_id.eq(None::<i64>);
        let (changed, outcome, error) = match ending {
            Ending::Failed { code, reason } | Ending::Dead { code, reason } => {
                let (state, outcome) = match ending {
                    Ending::Failed { .. } => (PhotoState::Failed, AttemptOutcome::Failed),
                    _ => (PhotoState::Dead, AttemptOutcome::Dead),
                };
                let changed = diesel::update(guarded)
                    .set((
                        photos::state.eq(state.as_str()),
                        photos::error.eq(reason),
                        photos::error_code.eq(code),
                        photos::completed_at.eq(now),
                        photos::updated_at.eq(now),
                        no_id,
                    ))
                    .execute(conn)
                    .await?;
                (changed, outcome, Some(reason))
            }
            Ending::Retry { code, error, after } => (
                diesel::update(guarded)
                    .set((
                        photos::state.eq(PhotoState::Queued.as_str()),
                        photos::error.eq(error),
                        photos::error_code.eq(code),
                        photos::next_attempt_at
                            .eq(now + chrono::Duration::from_std(after).unwrap_or_default()),
                        photos::updated_at.eq(now),
                        no_id,
                    ))
                    .execute(conn)
                    .await?,
                AttemptOutcome::Retry,
                Some(error),
            ),
            Ending::HandBack { entry } => {
                let back = (
                    photos::state.eq(PhotoState::Queued.as_str()),
                    photos::attempts.eq(photos::attempts - 1),
                    photos::published_at.eq(now),
                    photos::updated_at.eq(now),
                    no_id,
                );
                let changed = match entry {
                    Some(entry) => {
                        diesel::update(guarded)
                            .set((back, photos::entry_id.eq(entry)))
                            .execute(conn)
                            .await?
                    }
                    None => diesel::update(guarded).set(back).execute(conn).await?,
                };
                (changed, AttemptOutcome::HandedBack, None)
            }
        };
        if changed == 0 {
            return Ok(false);
        }
        attempts::close(conn, attempt, outcome, error).await?;
        Ok(true)
    })
    .await
}

/// `Published` for several photos: records the entry each was put on the stream as, for
/// those still `queued` with the entry the publisher saw (`None` for never published).
pub async fn mark_published(
    conn: &mut AsyncPgConnection,
    published: &[(Uuid, Option<String>, String)],
) -> Result<(), DbError> {
    if published.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = published.iter().map(|p| p.0).collect();
    let seen: Vec<Option<&str>> = published.iter().map(|p| p.1.as_deref()).collect();
    let entries: Vec<&str> = published.iter().map(|p| p.2.as_str()).collect();
    let now = Utc::now();
    // A worker may be starting some of these photos at the same moment, locking their rows
    // in another order: PostgreSQL then aborts one of the two statements, and this one
    // runs again.
    rerun_on_conflict!(async {
        diesel::sql_query(
            "UPDATE photos AS p SET entry_id = v.entry, published_at = $1 \
             FROM unnest($2::uuid[], $3::text[], $4::text[]) AS v(id, seen, entry) \
             WHERE p.id = v.id AND p.state = 'queued' \
               AND p.entry_id IS NOT DISTINCT FROM v.seen",
        )
        .bind::<Timestamptz, _>(now)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Nullable<Text>>, _>(&seen)
        .bind::<Array<Text>, _>(&entries)
        .execute(&mut *conn)
        .await
        .map_err(DbError::from)
    })?;
    Ok(())
}

/// A photo the reconciler looks at: waiting too long, or running with no recent start.
#[derive(Debug, Clone, QueryableByName)]
pub struct Overdue {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub entry_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub attempt_id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub source_url: Option<String>,
}

impl Overdue {
    pub fn lane(&self) -> Lane {
        Lane::of_photo(self.source_url.as_deref())
    }
}

/// Unfinished photos after `after` (a keyset cursor over ids), at most `limit`: `queued`
/// ones whose upload, last publication and due time are all older than `wait`, and
/// `processing` ones started longer ago than `visibility`. Reads only; takes no locks.
pub async fn overdue(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    wait: std::time::Duration,
    visibility: std::time::Duration,
    limit: i64,
) -> Result<Vec<Overdue>, DbError> {
    let secs = |d: std::time::Duration| {
        diesel::data_types::PgInterval::from_microseconds(d.as_micros() as i64)
    };
    Ok(diesel::sql_query(
        "SELECT id, state, entry_id, attempt_id, source_url FROM photos \
         WHERE unfinished AND id > $1 \
           AND CASE state \
             WHEN 'queued' THEN greatest(created_at, published_at, next_attempt_at) < now() - $2 \
             ELSE started_at < now() - $3 END \
         ORDER BY id LIMIT $4",
    )
    .bind::<SqlUuid, _>(after.unwrap_or(Uuid::nil()))
    .bind::<Interval, _>(secs(wait))
    .bind::<Interval, _>(secs(visibility))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

/// `Reclaim` for several lifeless attempts (photo, attempt): each photo still `processing`
/// under that attempt goes back to `queued`, or to `dead` when it was the last attempt
/// allowed; the attempt is closed as interrupted. Returns each photo reclaimed, with the
/// reason it is dead if it is.
pub async fn reclaim_many(
    conn: &mut AsyncPgConnection,
    lifeless: &[(Uuid, i64)],
    max_attempts: i32,
) -> Result<Vec<(Uuid, Option<String>)>, DbError> {
    if lifeless.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = lifeless.iter().map(|l| l.0).collect();
    let attempt_ids: Vec<i64> = lifeless.iter().map(|l| l.1).collect();
    let spent = spent_reason(max_attempts);
    rerun_on_conflict!(conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let rows: Vec<Reclaimed> = diesel::sql_query(
            "UPDATE photos AS p \
                 SET state = CASE WHEN p.attempts >= $3 THEN 'dead' ELSE 'queued' END, \
                     error = CASE WHEN p.attempts >= $3 \
                       THEN $5 || coalesce('; last error: ' || p.error, '') \
                       ELSE p.error END, \
                     error_code = CASE WHEN p.attempts >= $3 \
                       THEN coalesce(p.error_code, 'attempts_exhausted') ELSE p.error_code END, \
                     completed_at = CASE WHEN p.attempts >= $3 THEN $4 END, \
                     attempt_id = NULL, updated_at = $4 \
                 FROM unnest($1::uuid[], $2::int8[]) AS v(id, attempt_id) \
                 WHERE p.id = v.id AND p.attempt_id = v.attempt_id \
                 RETURNING p.id, p.state, p.error",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<BigInt>, _>(&attempt_ids)
        .bind::<Integer, _>(max_attempts)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(&spent)
        .load(conn)
        .await?;
        let reclaimed: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        attempts::interrupt_running(conn, &reclaimed, now).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let dead = r.state == PhotoState::Dead.as_str();
                (r.id, r.error.filter(|_| dead))
            })
            .collect())
    }))
}

#[derive(QueryableByName)]
struct Reclaimed {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
}

/// Why a photo whose last allowed attempt ended without an outcome is dead (the photo's
/// last recorded error, if any, is appended).
fn spent_reason(max_attempts: i32) -> String {
    format!(
        "gave up after {max_attempts} attempts; the last ended without an outcome \
         (worker crashed or was killed)"
    )
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

/// `Redrive`: puts dead (and, if asked, failed) photos back in `queued` with a fresh
/// attempt budget. Returns their ids; the caller publishes them.
/// Returns the photos put back, each with its lane.
pub async fn redrive(
    conn: &mut AsyncPgConnection,
    filter: &RedriveFilter,
) -> Result<Vec<(Uuid, Lane)>, DbError> {
    let mut states = vec![PhotoState::Dead.as_str()];
    if filter.include_failed {
        states.push(PhotoState::Failed.as_str());
    }
    let mut query = diesel::update(photos::table)
        .filter(photos::state.eq_any(states))
        .into_boxed();
    if !filter.include_failed {
        // What the partial index of dead photos is defined by.
        query = query.filter(photos::dead);
    }
    if let Some(owner) = filter.owner {
        query = query.filter(photos::owner_id.eq(owner));
    }
    if let Some(batch) = filter.batch {
        query = query.filter(photos::batch_id.eq(batch));
    }
    if let Some(photo) = filter.photo {
        query = query.filter(photos::id.eq(photo));
    }
    let rows: Vec<(Uuid, Option<String>)> = query
        .set((
            photos::state.eq(PhotoState::Queued.as_str()),
            photos::attempts.eq(0),
            photos::error.eq(None::<String>),
            photos::error_code.eq(None::<String>),
            photos::next_attempt_at.eq(None::<DateTime<Utc>>),
            photos::entry_id.eq(None::<String>),
            photos::published_at.eq(None::<DateTime<Utc>>),
            photos::completed_at.eq(None::<DateTime<Utc>>),
            photos::updated_at.eq(Utc::now()),
        ))
        .returning((photos::id, photos::source_url))
        .get_results(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, source)| (id, Lane::of_photo(source.as_deref())))
        .collect())
}

/// The columns `state::apply` decides on, of one photo (for tests and tools).
pub async fn job_row(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
) -> Result<Option<crate::state::JobRow>, DbError> {
    let row: Option<(String, i32, Option<i64>, Option<String>)> = photos::table
        .find(photo_id)
        .select((
            photos::state,
            photos::attempts,
            photos::attempt_id,
            photos::entry_id,
        ))
        .first(conn)
        .await
        .optional()?;
    row.map(|(state, attempts, attempt_id, entry)| {
        let state = PhotoState::parse(&state)
            .ok_or_else(|| DbError::Invariant(format!("unknown state {state:?}")))?;
        Ok(crate::state::JobRow {
            state,
            attempts,
            attempt_id,
            entry,
        })
    })
    .transpose()
}
