//! Getting jobs from PostgreSQL onto the stream: publishing after an upload commits, the
//! reconciler that publishes again every job whose stream entry is gone, and redrives of
//! dead letters. Redis is called only between PostgreSQL statements, never while a
//! transaction holds row locks.

use std::collections::HashMap;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::db::{self, jobs::RedriveFilter, DbError, DbPool};
use crate::metrics::Metrics;
use crate::queue::{EntryStatus, Lane, Queue, QueueError};

/// The advisory lock that lets one process at a time run a reconciliation round.
const RECONCILER_LOCK: i64 = 7_283_642;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<diesel::result::Error> for DispatchError {
    fn from(e: diesel::result::Error) -> Self {
        DispatchError::Db(e.into())
    }
}

/// A job to publish.
#[derive(Debug, Clone)]
pub struct Unpublished {
    pub photo_id: Uuid,
    pub lane: Lane,
    /// The entry seen for it before (`None` for never published).
    pub seen: Option<String>,
    /// The traceparent its entry carries (see `crate::telemetry`); workers fall back on
    /// the photo's row without it.
    pub traceparent: Option<String>,
}

impl Unpublished {
    /// A job published again (its entry was lost, or it was redriven).
    fn again(photo_id: Uuid, lane: Lane, seen: Option<String>) -> Self {
        Unpublished {
            photo_id,
            lane,
            seen,
            traceparent: None,
        }
    }
}

/// Puts jobs on their lanes' streams and records each photo's entry (for those still
/// `queued` with the entry seen before). If this fails, the reconciler publishes them after
/// `reconciler.grace_secs`.
pub async fn publish(
    pool: &DbPool,
    queue: &Queue,
    jobs: &[Unpublished],
) -> Result<(), DispatchError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut published: Vec<(Uuid, Option<String>, String)> = Vec::with_capacity(jobs.len());
    for lane in Lane::ALL {
        let of_lane: Vec<&Unpublished> = jobs.iter().filter(|j| j.lane == lane).collect();
        if of_lane.is_empty() {
            continue;
        }
        let entries: Vec<(Uuid, Option<&str>)> = of_lane
            .iter()
            .map(|j| (j.photo_id, j.traceparent.as_deref()))
            .collect();
        let entries = queue.enqueue_traced(lane, &entries).await?;
        published.extend(
            of_lane
                .into_iter()
                .zip(entries)
                .map(|(job, entry)| (job.photo_id, job.seen.clone(), entry)),
        );
    }
    let mut conn = db::conn(pool).await?;
    db::jobs::mark_published(&mut conn, &published).await?;
    Ok(())
}

/// Publishes photos never published before, all in one lane (see [`publish`]), each with
/// the traceparent of its trace where it has one.
pub async fn publish_new(
    pool: &DbPool,
    queue: &Queue,
    lane: Lane,
    photos: &[(Uuid, Option<String>)],
) -> Result<(), DispatchError> {
    let jobs: Vec<Unpublished> = photos
        .iter()
        .map(|(id, traceparent)| Unpublished {
            photo_id: *id,
            lane,
            seen: None,
            traceparent: traceparent.clone(),
        })
        .collect();
    publish(pool, queue, &jobs).await
}

/// What one reconciliation round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Photos looked at.
    pub checked: usize,
    /// Jobs published again (their entry was gone).
    pub published: usize,
    /// Lifeless attempts put back in the queue.
    pub requeued: usize,
    /// Lifeless attempts that were the last allowed: photos now dead.
    pub buried: usize,
    /// False when another process held the reconciler's lock.
    pub ran: bool,
}

/// Keeps the reconciler's place between rounds: rounds walk the unfinished photos by id,
/// one batch a round, and start over at the end.
#[derive(Debug, Default)]
pub struct Reconciler {
    cursor: Option<Uuid>,
}

impl Reconciler {
    /// True when the last round stopped part-way through the unfinished photos.
    pub fn mid_walk(&self) -> bool {
        self.cursor.is_some()
    }

    /// One round, under a PostgreSQL advisory lock so that one process at a time runs it
    /// (the others skip the round). Looks at the next batch of unfinished photos and, per
    /// photo, asks Redis about its entry:
    /// - `queued` longer than `reconciler.grace_secs` since it was uploaded, published or
    ///   due, and its entry gone (or never published): published again;
    /// - `processing` for longer than `worker.visibility_timeout_secs` and its entry no
    ///   longer pending with any consumer: its attempt is reclaimed (back to `queued`, or
    ///   `dead` if it was the last allowed) and the job published again.
    ///
    /// Every change is a guarded transition (`db::jobs`), so a photo that moved on in the
    /// meantime is left alone, and a job published twice runs once.
    pub async fn round(
        &mut self,
        pool: &DbPool,
        queue: &Queue,
        config: &Config,
    ) -> Result<Round, DispatchError> {
        let mut conn = db::conn(pool).await?;
        let locked: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<diesel::sql_types::BigInt, _>(RECONCILER_LOCK)
            .get_result(&mut *conn)
            .await
            .map_err(DbError::from)?;
        if !locked.locked {
            return Ok(Round::default());
        }
        let result = self.locked_round(pool, queue, config).await;
        let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<diesel::sql_types::BigInt, _>(RECONCILER_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Never hand a connection that may still hold the lock back to the pool.
            let _ = db::DbConn::take(conn);
        }
        result
    }

    async fn locked_round(
        &mut self,
        pool: &DbPool,
        queue: &Queue,
        config: &Config,
    ) -> Result<Round, DispatchError> {
        queue.ensure_group().await?;
        let rc = &config.reconciler;
        let overdue = {
            let mut conn = db::conn(pool).await?;
            db::jobs::overdue(
                &mut conn,
                self.cursor,
                Duration::from_secs(rc.grace_secs),
                Duration::from_secs(config.worker.visibility_timeout_secs),
                rc.batch_size,
            )
            .await?
        };
        self.cursor = if (overdue.len() as i64) < rc.batch_size {
            None
        } else {
            overdue.last().map(|o| o.id)
        };
        let mut round = Round {
            checked: overdue.len(),
            ran: true,
            ..Round::default()
        };
        let known: Vec<&str> = overdue
            .iter()
            .filter_map(|o| o.entry_id.as_deref())
            .collect();
        let mut statuses = queue.entry_status(&known).await?.into_iter();
        let mut republish: Vec<Unpublished> = Vec::new();
        let mut lifeless: HashMap<Uuid, (i64, Lane, Option<String>)> = HashMap::new();
        for o in overdue {
            let status = match o.entry_id {
                Some(_) => statuses.next().unwrap_or(EntryStatus::Gone),
                None => EntryStatus::Gone,
            };
            let lane = o.lane();
            match (o.state.as_str(), o.attempt_id) {
                ("processing", Some(attempt)) if status != EntryStatus::Pending => {
                    lifeless.insert(o.id, (attempt, lane, o.entry_id));
                }
                ("queued", _) if matches!(status, EntryStatus::Gone | EntryStatus::Orphaned) => {
                    republish.push(Unpublished::again(o.id, lane, o.entry_id))
                }
                _ => {}
            }
        }
        if !lifeless.is_empty() {
            let pairs: Vec<(Uuid, i64)> =
                lifeless.iter().map(|(id, (a, _, _))| (*id, *a)).collect();
            let reclaimed = {
                let mut conn = db::conn(pool).await?;
                db::jobs::reclaim_many(&mut conn, &pairs, config.retry.max_attempts as i32).await?
            };
            queue.changes_written();
            for (id, dead) in reclaimed {
                match dead {
                    Some(reason) => {
                        round.buried += 1;
                        queue.dead_letter(None, id, &reason).await?;
                        tracing::warn!(photo_id = %id, "lifeless last attempt: photo dead");
                    }
                    None => {
                        round.requeued += 1;
                        if let Some((_, lane, seen)) = lifeless.remove(&id) {
                            republish.push(Unpublished::again(id, lane, seen));
                        }
                        tracing::warn!(photo_id = %id, "lifeless attempt reclaimed; job published again");
                    }
                }
            }
        }
        round.published = republish.len();
        publish(pool, queue, &republish).await?;
        round.published += crate::reprocess::reconcile(pool, queue, config).await?;
        Ok(round)
    }
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Runs reconciliation rounds until `shutdown`: back to back until a walk over the
/// unfinished photos is complete, then every `reconciler.interval_secs`.
pub async fn run_reconciler(
    pool: DbPool,
    queue: Queue,
    config: std::sync::Arc<Config>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(config.reconciler.interval_secs);
    let mut reconciler = Reconciler::default();
    loop {
        let wait = match reconciler.round(&pool, &queue, &config).await {
            Ok(r) => {
                if r.published > 0 || r.buried > 0 {
                    tracing::info!(
                        checked = r.checked,
                        published = r.published,
                        requeued = r.requeued,
                        buried = r.buried,
                        "reconciler published jobs whose entries were gone"
                    );
                }
                metrics
                    .reconciled
                    .with_label_values(&["published"])
                    .inc_by(r.published as u64);
                metrics
                    .reconciled
                    .with_label_values(&["buried"])
                    .inc_by(r.buried as u64);
                if r.ran && reconciler.mid_walk() {
                    Duration::ZERO
                } else {
                    interval
                }
            }
            Err(e) => {
                metrics.background_failure("reconciler", &e);
                interval
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Puts matching dead (and optionally failed) photos back in the queue with a fresh attempt
/// budget. Returns their ids. If publishing fails, the reconciler publishes them later.
pub async fn redrive(
    pool: &DbPool,
    queue: &Queue,
    filter: &RedriveFilter,
) -> Result<Vec<Uuid>, DispatchError> {
    let redriven = {
        let mut conn = db::conn(pool).await?;
        db::jobs::redrive(&mut conn, filter).await?
    };
    queue.changes_written();
    let jobs: Vec<Unpublished> = redriven
        .iter()
        .map(|(id, lane)| Unpublished::again(*id, *lane, None))
        .collect();
    if let Err(e) = publish(pool, queue, &jobs).await {
        tracing::warn!(error = %e, count = jobs.len(), "redriven jobs left to the reconciler");
    }
    Ok(redriven.into_iter().map(|(id, _)| id).collect())
}
