//! Getting jobs from PostgreSQL onto the stream: publishing after an upload commits, the
//! reconciler that re-publishes what Redis lost, and redrives of dead letters.

use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ReconcilerConfig;
use crate::db::{self, photos::RedriveFilter, DbError, DbPool};
use crate::queue::{Queue, QueueError};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("redis changed epoch while publishing; retrying next round")]
    EpochChanged,
}

impl From<diesel::result::Error> for DispatchError {
    fn from(e: diesel::result::Error) -> Self {
        DispatchError::Db(e.into())
    }
}

/// Puts committed photos' jobs on the stream and records the epoch they went into. If this
/// fails, the reconciler publishes them after its grace period.
pub async fn publish(pool: &DbPool, queue: &Queue, ids: &[Uuid]) -> Result<(), DispatchError> {
    if ids.is_empty() {
        return Ok(());
    }
    let epoch = queue.enqueue(ids).await?;
    let mut conn = db::conn(pool).await?;
    db::photos::mark_published(&mut conn, ids, &epoch).await?;
    Ok(())
}

/// One round of reconciliation: every unfinished photo whose job is not in Redis's current
/// epoch is published again (or re-scheduled, if its retry is not due yet), exactly once:
/// the rows are locked (`FOR UPDATE SKIP LOCKED`) while they are published and marked, so
/// several processes can run this at once. Returns how many jobs were published.
pub async fn reconcile_once(
    pool: &DbPool,
    queue: &Queue,
    config: &ReconcilerConfig,
) -> Result<usize, DispatchError> {
    queue.ensure_group().await?;
    let epoch = queue.epoch().await?;
    let grace = Duration::from_secs(config.grace_secs);
    let mut conn = db::conn(pool).await?;
    conn.transaction::<_, DispatchError, _>(async |conn| {
        let rows = db::photos::lock_unpublished(conn, &epoch, grace, config.batch_size).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let mut due = Vec::new();
        for (id, next_attempt_at) in &rows {
            match next_attempt_at {
                Some(at) if *at > now => queue.schedule(*id, at.timestamp_millis()).await?,
                _ => due.push(*id),
            }
        }
        if !due.is_empty() && queue.enqueue(&due).await? != epoch {
            return Err(DispatchError::EpochChanged);
        }
        let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
        db::photos::mark_published(conn, &ids, &epoch).await?;
        Ok(ids.len())
    })
    .await
}

/// Runs reconciliation rounds until `shutdown`: back to back while there is a backlog,
/// otherwise every `interval_secs`.
pub async fn run_reconciler(
    pool: DbPool,
    queue: Queue,
    config: ReconcilerConfig,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(config.interval_secs);
    loop {
        let wait = match reconcile_once(&pool, &queue, &config).await {
            Ok(n) if n as i64 >= config.batch_size => Duration::ZERO,
            Ok(n) => {
                if n > 0 {
                    tracing::info!(published = n, "reconciler re-published jobs");
                }
                interval
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconciler round failed");
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
    let ids = {
        let mut conn = db::conn(pool).await?;
        db::photos::requeue(&mut conn, filter).await?
    };
    if let Err(e) = publish(pool, queue, &ids).await {
        tracing::warn!(error = %e, count = ids.len(), "redriven jobs left to the reconciler");
    }
    Ok(ids)
}
