//! Reprocessing runs and the per-photo rows of `reprocessing` (see the migration
//! `2026-12-10-000017_reprocess` for the states): each move is one guarded statement, so a
//! duplicate or stale delivery, or an attempt whose lease was taken over, changes nothing.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::jobs::Ending;
use super::models::{Photo, Variant};
use super::schema::{batches, photos, variants};
use super::DbError;

/// What a run reprocesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Photo(Uuid),
    Batch(Uuid),
    /// Every photo (of the owner, when the run has one).
    All,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Photo(_) => "photo",
            Target::Batch(_) => "batch",
            Target::All => "all",
        }
    }
}

/// What to take: photos whose variants were made with a configuration other than these
/// fingerprints (uploads', imports'), or every completed photo with `force`.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub upload_fingerprint: &'a str,
    pub import_fingerprint: &'a str,
    pub force: bool,
}

/// A run as it stands.
#[derive(Debug, Clone, QueryableByName)]
pub struct RunProgress {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub owner_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub total: i32,
    #[diesel(sql_type = Integer)]
    pub up_to_date: i32,
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    #[diesel(sql_type = BigInt)]
    pub processing: i64,
    #[diesel(sql_type = BigInt)]
    pub done: i64,
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    #[diesel(sql_type = BigInt)]
    pub skipped: i64,
}

impl RunProgress {
    /// No photo of the run is waiting or running.
    pub fn finished(&self) -> bool {
        self.queued + self.processing == 0
    }
}

/// Why a target cannot be reprocessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such photo or batch")]
    NotFound,
    #[error("only completed photos are reprocessed; this one is not (yet)")]
    NotCompleted,
    #[error("retention removed the photo's original")]
    OriginalRemoved,
}

/// Creates a run over `target` (the owner's photos, or everybody's without one): every
/// completed photo with its original whose variants are outdated (all of them with
/// `force`) gets a `queued` row, unless an earlier run still has it. Returns the run and
/// the photos to publish; a refusal for a single photo that cannot be reprocessed, or a
/// batch that is not the owner's.
pub async fn request(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
    target: Target,
    selection: &Selection<'_>,
) -> Result<Result<(RunProgress, Vec<Uuid>), Refusal>, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        // A run over one photo or batch belongs to its owner, also when an operator asks.
        let owner = match locate(conn, owner, target).await? {
            Ok(found) => found.or(owner),
            Err(refusal) => return Ok(Err(refusal)),
        };
        let run = Uuid::now_v7();
        let now = Utc::now();
        diesel::sql_query(
            "INSERT INTO reprocess_runs (id, owner_id, target, created_at, total, up_to_date, busy) \
             VALUES ($1, $2, $3, $4, 0, 0, 0)",
        )
        .bind::<SqlUuid, _>(run)
        .bind::<Nullable<SqlUuid>, _>(owner)
        .bind::<Text, _>(target.as_str())
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
        let (photo, batch) = match target {
            Target::Photo(id) => (Some(id), None),
            Target::Batch(id) => (None, Some(id)),
            Target::All => (None, None),
        };
        #[derive(QueryableByName)]
        struct Taken {
            #[diesel(sql_type = BigInt)]
            up_to_date: i64,
            #[diesel(sql_type = BigInt)]
            outdated: i64,
            #[diesel(sql_type = Array<SqlUuid>)]
            taken: Vec<Uuid>,
        }
        let taken: Taken = diesel::sql_query(
            "WITH c AS ( \
                 SELECT p.id, \
                        NOT $3 AND p.variant_fingerprint IS NOT DISTINCT FROM \
                            CASE WHEN p.source_url IS NULL THEN $4 ELSE $5 END AS current \
                 FROM photos AS p \
                 WHERE p.state = 'completed' AND p.original_removed_at IS NULL \
                   AND ($6::uuid IS NULL OR p.owner_id = $6) \
                   AND ($7::uuid IS NULL OR p.id = $7) \
                   AND ($8::uuid IS NULL OR p.batch_id = $8)), \
             ins AS ( \
                 INSERT INTO reprocessing AS r (photo_id, run_id, state, queued_at) \
                 SELECT c.id, $1, 'queued', $2 FROM c WHERE NOT c.current ORDER BY c.id \
                 ON CONFLICT (photo_id) DO UPDATE \
                 SET run_id = excluded.run_id, state = 'queued', attempts = 0, \
                     queued_at = excluded.queued_at, lease = NULL, entry_id = NULL, \
                     published_at = NULL, started_at = NULL, \
                     finished_at = NULL, error_code = NULL, error = NULL \
                 WHERE r.state NOT IN ('queued', 'processing') \
                 RETURNING r.photo_id) \
             SELECT (SELECT count(*) FROM c WHERE c.current) AS up_to_date, \
                    (SELECT count(*) FROM c WHERE NOT c.current) AS outdated, \
                    ARRAY(SELECT photo_id FROM ins) AS taken",
        )
        .bind::<SqlUuid, _>(run)
        .bind::<Timestamptz, _>(now)
        .bind::<Bool, _>(selection.force)
        .bind::<Text, _>(selection.upload_fingerprint)
        .bind::<Text, _>(selection.import_fingerprint)
        .bind::<Nullable<SqlUuid>, _>(owner)
        .bind::<Nullable<SqlUuid>, _>(photo)
        .bind::<Nullable<SqlUuid>, _>(batch)
        .get_result(conn)
        .await?;
        let total = taken.taken.len() as i64;
        diesel::sql_query(
            "UPDATE reprocess_runs SET total = $2, up_to_date = $3, busy = $4 WHERE id = $1",
        )
        .bind::<SqlUuid, _>(run)
        .bind::<Integer, _>(clamp(total))
        .bind::<Integer, _>(clamp(taken.up_to_date))
        .bind::<Integer, _>(clamp(taken.outdated - total))
        .execute(conn)
        .await?;
        let progress = progress(conn, run, owner)
            .await?
            .ok_or_else(|| DbError::Invariant("a run just created is missing".into()))?;
        Ok(Ok((progress, taken.taken)))
    })
    .await
}

fn clamp(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The owner of `target` (a photo's or batch's; None for all), or why it cannot be
/// reprocessed for `owner`.
async fn locate(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
    target: Target,
) -> Result<Result<Option<Uuid>, Refusal>, DbError> {
    match target {
        Target::Photo(id) => {
            let mut q = photos::table
                .filter(photos::id.eq(id))
                .filter(photos::state.ne("deleted"))
                .select((photos::owner_id, photos::state, photos::original_removed_at))
                .into_boxed();
            if let Some(owner) = owner {
                q = q.filter(photos::owner_id.eq(owner));
            }
            let found: Option<(Uuid, String, Option<DateTime<Utc>>)> =
                q.first(conn).await.optional()?;
            Ok(match found {
                None => Err(Refusal::NotFound),
                Some((_, state, _)) if state != "completed" => Err(Refusal::NotCompleted),
                Some((_, _, Some(_))) => Err(Refusal::OriginalRemoved),
                Some((owner, _, None)) => Ok(Some(owner)),
            })
        }
        Target::Batch(id) => {
            let mut q = batches::table
                .filter(batches::id.eq(id))
                .filter(batches::deleted_at.is_null())
                .select(batches::owner_id)
                .into_boxed();
            if let Some(owner) = owner {
                q = q.filter(batches::owner_id.eq(owner));
            }
            let found: Option<Uuid> = q.first(conn).await.optional()?;
            Ok(found.map(Some).ok_or(Refusal::NotFound))
        }
        Target::All => Ok(Ok(None)),
    }
}

/// Run `id` with its counts by state; only `owner`'s with one.
pub async fn progress(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<RunProgress>, DbError> {
    Ok(diesel::sql_query(
        "SELECT u.id, u.owner_id, u.target, u.created_at, u.total, u.up_to_date, u.busy, \
                count(*) FILTER (WHERE r.state = 'queued') AS queued, \
                count(*) FILTER (WHERE r.state = 'processing') AS processing, \
                count(*) FILTER (WHERE r.state = 'done') AS done, \
                count(*) FILTER (WHERE r.state = 'failed') AS failed, \
                count(*) FILTER (WHERE r.state = 'skipped') AS skipped \
         FROM reprocess_runs AS u LEFT JOIN reprocessing AS r ON r.run_id = u.id \
         WHERE u.id = $1 AND ($2::uuid IS NULL OR u.owner_id = $2) \
         GROUP BY u.id",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Nullable<SqlUuid>, _>(owner)
    .get_result(conn)
    .await
    .optional()?)
}

/// Records the entry each photo's job was put on the stream as, for rows still `queued`.
pub async fn mark_published(
    conn: &mut AsyncPgConnection,
    published: &[(Uuid, String)],
) -> Result<(), DbError> {
    let (ids, entries): (Vec<Uuid>, Vec<String>) = published.iter().cloned().unzip();
    diesel::sql_query(
        "UPDATE reprocessing AS r SET entry_id = d.entry, published_at = now() \
         FROM unnest($1::uuid[], $2::text[]) AS d (photo_id, entry) \
         WHERE r.photo_id = d.photo_id AND r.state = 'queued'",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(entries)
    .execute(conn)
    .await?;
    Ok(())
}

/// A reprocessing attempt that started.
#[derive(Debug, Clone)]
pub struct Started {
    pub photo: Photo,
    pub lease: Uuid,
    pub attempts: i32,
}

/// One delivery of a reprocessing job: the photo, the entry, and how many times Redis has
/// delivered the entry.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub photo_id: Uuid,
    pub entry: String,
    pub deliveries: i32,
}

/// Starts the reprocessing of delivered photos: rows `queued` (due or not: a retry's
/// due time is kept by Redis, and an early duplicate only starts it sooner, as for photos'
/// jobs), or `processing` from this very entry (taken over from a worker that stopped renewing its claim) or past their
/// lease. A row whose budget is spent (`max_attempts` attempts started, or an entry
/// delivered more often than that: attempts that never got as far as an end, such as a
/// worker killed by the image) ends `failed` instead, the photo keeping its variants. Rows
/// whose photo is no longer completed with its original end `skipped`. Photos with no such
/// row are left out: their deliveries are stale. Returns the attempts started and the
/// photos whose rows ended `failed` here.
pub async fn start(
    conn: &mut AsyncPgConnection,
    delivered: &[Delivery],
    lease: std::time::Duration,
    max_attempts: i32,
) -> Result<(Vec<Started>, Vec<Uuid>), DbError> {
    let ids: Vec<Uuid> = delivered.iter().map(|d| d.photo_id).collect();
    let entries: Vec<String> = delivered.iter().map(|d| d.entry.clone()).collect();
    let counts: Vec<i32> = delivered.iter().map(|d| d.deliveries).collect();
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::sql_query(
            "UPDATE reprocessing AS r \
             SET state = 'skipped', lease = NULL, finished_at = now() \
             FROM photos AS p \
             WHERE r.photo_id = ANY ($1) AND p.id = r.photo_id \
               AND r.state IN ('queued', 'processing') \
               AND (p.state <> 'completed' OR p.original_removed_at IS NOT NULL)",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .execute(conn)
        .await?;
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = SqlUuid)]
            photo_id: Uuid,
            /// None when the budget was spent.
            #[diesel(sql_type = Nullable<SqlUuid>)]
            lease: Option<Uuid>,
            #[diesel(sql_type = Integer)]
            attempts: i32,
        }
        let rows: Vec<Row> = diesel::sql_query(
            "WITH d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[]) \
                        AS d (photo_id, entry, n)), \
             taken AS ( \
                 SELECT r.photo_id, d.entry, d.n, r.attempts >= $5 OR d.n > $5 AS spent \
                 FROM reprocessing AS r JOIN d ON d.photo_id = r.photo_id \
                 WHERE r.state = 'queued' \
                    OR (r.state = 'processing' \
                        AND (r.entry_id = d.entry \
                             OR r.started_at < now() - $4 * interval '1 millisecond')) \
                 ORDER BY r.photo_id \
                 FOR UPDATE OF r) \
             UPDATE reprocessing AS r \
             SET state = CASE WHEN t.spent THEN 'failed' ELSE 'processing' END, \
                 attempts = r.attempts + CASE WHEN t.spent THEN 0 ELSE 1 END, \
                 lease = CASE WHEN t.spent THEN NULL ELSE gen_random_uuid() END, \
                 entry_id = t.entry, started_at = now(), \
                 finished_at = CASE WHEN t.spent THEN now() END, \
                 error_code = CASE WHEN t.spent THEN 'worker_crashed' ELSE r.error_code END, \
                 error = CASE WHEN t.n > $5 \
                     THEN 'delivered ' || t.n || ' times without an end' \
                     WHEN t.spent THEN 'gave up after ' || r.attempts || ' attempts' \
                     ELSE r.error END \
             FROM taken AS t WHERE r.photo_id = t.photo_id \
             RETURNING r.photo_id, r.lease, r.attempts",
        )
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Array<Text>, _>(&entries)
        .bind::<Array<Integer>, _>(&counts)
        .bind::<BigInt, _>(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
        .bind::<Integer, _>(max_attempts)
        .load(conn)
        .await?;
        let spent: Vec<Uuid> = rows
            .iter()
            .filter(|r| r.lease.is_none())
            .map(|r| r.photo_id)
            .collect();
        let rows: Vec<(Uuid, Uuid, i32)> = rows
            .into_iter()
            .filter_map(|r| r.lease.map(|lease| (r.photo_id, lease, r.attempts)))
            .collect();
        let started: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
        let photos: Vec<Photo> = photos::table
            .filter(photos::id.eq_any(&started))
            .select(Photo::as_select())
            .load(conn)
            .await?;
        let mut photos: std::collections::HashMap<Uuid, Photo> =
            photos.into_iter().map(|p| (p.id, p)).collect();
        let started = rows
            .into_iter()
            .filter_map(|(id, lease, attempts)| {
                photos.remove(&id).map(|photo| Started {
                    photo,
                    lease,
                    attempts,
                })
            })
            .collect();
        Ok((started, spent))
    })
    .await
}

/// What a reprocessing attempt made.
#[derive(Debug, Clone)]
pub struct Remade {
    pub variants: Vec<Variant>,
    pub fingerprint: String,
    pub thumbhash: Option<String>,
}

/// What recording a reprocessing attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The new variants replace the old; these storage keys are no longer used.
    Done { unused: Vec<String> },
    /// The attempt's lease was taken over, or the photo deleted meanwhile: nothing
    /// recorded (the row ends `skipped` in the second case).
    Stale,
}

/// Records a reprocessed photo, if `lease` still holds its row and the photo is still
/// completed with its original: the variants' rows replaced, the fingerprint and
/// placeholder updated, the row `done`, and the event `photo.reprocessed` staged (without
/// the batch: a batch's story and its end are not told again). Nothing else of the photo
/// changes.
pub async fn complete(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
    lease: Uuid,
    remade: &Remade,
) -> Result<Recorded, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        // The photo's row first, then the run's, as a purge (photo, then its rows by
        // cascade) and a delete take them: no deadlock between them.
        photos::table
            .filter(photos::id.eq(photo_id))
            .select(photos::id)
            .for_no_key_update()
            .load::<Uuid>(conn)
            .await?;
        let held = diesel::sql_query(
            "UPDATE reprocessing SET state = 'done', lease = NULL, finished_at = now(), \
                 error_code = NULL, error = NULL \
             WHERE photo_id = $1 AND lease = $2 AND state = 'processing'",
        )
        .bind::<SqlUuid, _>(photo_id)
        .bind::<SqlUuid, _>(lease)
        .execute(conn)
        .await?;
        if held == 0 {
            return Ok(Recorded::Stale);
        }
        let photo: Option<Photo> = diesel::update(
            photos::table
                .filter(photos::id.eq(photo_id))
                .filter(photos::state.eq("completed"))
                .filter(photos::original_removed_at.is_null()),
        )
        .set((
            photos::variant_fingerprint.eq(&remade.fingerprint),
            photos::thumbhash.eq(&remade.thumbhash),
            photos::updated_at.eq(Utc::now()),
        ))
        .returning(Photo::as_returning())
        .get_result(conn)
        .await
        .optional()?;
        let Some(photo) = photo else {
            diesel::sql_query("UPDATE reprocessing SET state = 'skipped' WHERE photo_id = $1")
                .bind::<SqlUuid, _>(photo_id)
                .execute(conn)
                .await?;
            return Ok(Recorded::Stale);
        };
        let old: Vec<String> =
            diesel::delete(variants::table.filter(variants::photo_id.eq(photo_id)))
                .returning(variants::storage_key)
                .get_results(conn)
                .await?;
        diesel::insert_into(variants::table)
            .values(&remade.variants)
            .execute(conn)
            .await?;
        diesel::sql_query(
            "SELECT photoq_stage_events(ARRAY[ROW('photo.reprocessed', clock_timestamp(), \
                 $1, NULL, $2, NULL, 'completed', 'completed', $3, NULL, NULL, NULL, $4, $5, \
                 NULL, NULL, NULL, NULL, NULL)::photoq_event])",
        )
        .bind::<SqlUuid, _>(photo.owner_id)
        .bind::<SqlUuid, _>(photo.id)
        .bind::<Integer, _>(photo.attempts)
        .bind::<Nullable<Integer>, _>(photo.width)
        .bind::<Nullable<Integer>, _>(photo.height)
        .execute(conn)
        .await?;
        let unused = old
            .into_iter()
            .filter(|k| !remade.variants.iter().any(|v| &v.storage_key == k))
            .collect();
        Ok(Recorded::Done { unused })
    })
    .await
}

/// Ends the attempt holding `lease` (as `db::jobs::finish` ends a photo's): `failed` for
/// good when the input is at fault or the budget is spent (the photo keeps the variants
/// it had), `queued` again for a retry or a hand-back (which does not count); false when
/// the attempt no longer held the row.
pub async fn end(
    conn: &mut AsyncPgConnection,
    photo_id: Uuid,
    lease: Uuid,
    ending: Ending<'_>,
) -> Result<bool, DbError> {
    let (state, code, error, after, entry, counted) = match ending {
        Ending::Failed { code, reason } | Ending::Dead { code, reason } => {
            ("failed", Some(code), Some(reason), None, None, 1)
        }
        Ending::Retry { code, error, after } => {
            ("queued", Some(code), Some(error), Some(after), None, 1)
        }
        Ending::HandBack { entry } => ("queued", None, None, None, entry, 0),
    };
    let after_ms = after.map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
    let changed = diesel::sql_query(
        "UPDATE reprocessing \
         SET state = CASE WHEN $3 = 'failed' AND EXISTS ( \
                         SELECT 1 FROM photos AS p WHERE p.id = $1 \
                         AND (p.state <> 'completed' OR p.original_removed_at IS NOT NULL)) \
                     THEN 'skipped' ELSE $3 END, \
             lease = NULL, \
             error_code = coalesce($4, error_code), error = coalesce($5, error), \
             published_at = now() + coalesce($6, 0) * interval '1 millisecond', \
             entry_id = coalesce($7, entry_id), \
             attempts = attempts - 1 + $8, \
             finished_at = CASE WHEN $3 = 'failed' THEN now() END \
         WHERE photo_id = $1 AND lease = $2 AND state = 'processing'",
    )
    .bind::<SqlUuid, _>(photo_id)
    .bind::<SqlUuid, _>(lease)
    .bind::<Text, _>(state)
    .bind::<Nullable<Text>, _>(code)
    .bind::<Nullable<Text>, _>(error)
    .bind::<Nullable<BigInt>, _>(after_ms)
    .bind::<Nullable<Text>, _>(entry)
    .bind::<Integer, _>(counted)
    .execute(conn)
    .await?;
    Ok(changed > 0)
}

/// A row the reconciler looks at.
#[derive(Debug, Clone, QueryableByName)]
pub struct Overdue {
    #[diesel(sql_type = SqlUuid)]
    pub photo_id: Uuid,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub entry_id: Option<String>,
}

/// Rows whose job may be lost (at most `limit`, the longest unseen first): `queued` ones
/// published (or queued, or due) longer than `grace` ago, `processing` ones past their
/// lease. Those it returns count as looked at now: the next round looks at others. (A row
/// whose photo was deleted meanwhile is published again too, and its start skips it.)
/// `published_at` is then when the reconciler last looked.
pub async fn overdue(
    conn: &mut AsyncPgConnection,
    grace: std::time::Duration,
    lease: std::time::Duration,
    limit: i64,
) -> Result<Vec<Overdue>, DbError> {
    Ok(diesel::sql_query(
        "WITH o AS ( \
             SELECT photo_id FROM reprocessing \
             WHERE (state = 'queued' \
                    AND coalesce(published_at, queued_at) < now() - $1 * interval '1 millisecond') \
                OR (state = 'processing' AND started_at < now() - $2 * interval '1 millisecond') \
             ORDER BY coalesce(published_at, queued_at) \
             LIMIT $3 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE reprocessing AS r \
         SET published_at = now() \
         FROM o WHERE r.photo_id = o.photo_id \
         RETURNING r.photo_id, r.state, r.entry_id",
    )
    .bind::<BigInt, _>(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX))
    .bind::<BigInt, _>(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

/// Takes back attempts past their lease whose entry no worker holds (`photo_ids`, as the
/// reconciler found them): `queued` again, or `failed` when they were the last allowed.
/// Returns the rows now `queued`, to publish.
pub async fn reclaim(
    conn: &mut AsyncPgConnection,
    photo_ids: &[Uuid],
    lease: std::time::Duration,
    max_attempts: i32,
) -> Result<Vec<Uuid>, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = SqlUuid)]
        photo_id: Uuid,
        #[diesel(sql_type = Text)]
        state: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "WITH o AS (SELECT photo_id FROM reprocessing \
                    WHERE photo_id = ANY ($1) AND state = 'processing' \
                      AND started_at < now() - $2 * interval '1 millisecond' \
                    ORDER BY photo_id FOR UPDATE) \
         UPDATE reprocessing AS r \
         SET state = CASE WHEN r.attempts >= $3 THEN 'failed' ELSE 'queued' END, \
             lease = NULL, \
             finished_at = CASE WHEN r.attempts >= $3 THEN now() END, \
             error_code = CASE WHEN r.attempts >= $3 THEN 'worker_crashed' \
                          ELSE r.error_code END, \
             error = CASE WHEN r.attempts >= $3 \
                 THEN 'gave up after ' || r.attempts || ' attempts, the last without an end' \
                 ELSE r.error END \
         FROM o WHERE r.photo_id = o.photo_id \
         RETURNING r.photo_id, r.state",
    )
    .bind::<Array<SqlUuid>, _>(photo_ids)
    .bind::<BigInt, _>(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .bind::<Integer, _>(max_attempts)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.state == "queued")
        .map(|r| r.photo_id)
        .collect())
}

/// Removes at most `limit` runs that finished before `before` (their last photo ended
/// then, or they took none and were made then), with their rows.
pub async fn prune(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DbError> {
    Ok(diesel::sql_query(
        "DELETE FROM reprocess_runs WHERE id IN ( \
             SELECT u.id FROM reprocess_runs AS u \
             WHERE u.created_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM reprocessing AS r WHERE r.run_id = u.id \
                               AND (r.state IN ('queued', 'processing') \
                                    OR r.finished_at >= $1)) \
             LIMIT $2)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .execute(conn)
    .await?)
}
