//! Reprocessing after a variant configuration change: `POST /v1/photos/{id}/reprocess`,
//! `POST /v1/batches/{id}/reprocess` and `photoq reprocess` create a run here; workers
//! make the variants again (`worker::reprocess`); `GET /v1/reprocess/{id}` and the command
//! tell the run's progress.
//!
//! A run takes the completed photos of its target (with their originals) whose variants
//! were made with another configuration than this process's, or all of them when forced,
//! and puts their jobs on the bulk lane, so uploads never wait behind it. Until a photo's
//! new variants are recorded it keeps serving its old ones; its state, EXIF, original and
//! batch stay as they are. Jobs lost by Redis are published again by the reconciler.

use uuid::Uuid;

use crate::config::Config;
use crate::db::reprocess::{Refusal, RunProgress, Selection, Target};
use crate::db::{self, DbError, DbPool};
use crate::dispatch::DispatchError;
use crate::pipeline::Spec;
use crate::queue::{EntryStatus, Lane, Queue};

/// Jobs published per round trip.
const PUBLISH_CHUNK: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ReprocessError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The variant configuration does not build (it did when the process started).
    #[error("the variant configuration is invalid: {0}")]
    Config(String),
}

/// Creates a run over `target` for `owner` (everybody's photos without one) and publishes
/// its jobs. When publishing fails, the reconciler publishes them after
/// `reconciler.grace_secs`: the run stands either way.
pub async fn request(
    pool: &DbPool,
    queue: &Queue,
    config: &Config,
    owner: Option<Uuid>,
    target: Target,
    force: bool,
) -> Result<Result<RunProgress, Refusal>, ReprocessError> {
    let upload = Spec::from_config(config).map_err(|e| ReprocessError::Config(e.to_string()))?;
    let import = Spec::for_imports(config).map_err(|e| ReprocessError::Config(e.to_string()))?;
    let selection = Selection {
        upload_fingerprint: &upload.fingerprint,
        import_fingerprint: &import.fingerprint,
        force,
    };
    let mut conn = db::conn(pool).await?;
    let (run, photos) = match db::reprocess::request(&mut conn, owner, target, &selection).await? {
        Ok(created) => created,
        Err(refusal) => return Ok(Err(refusal)),
    };
    drop(conn);
    tracing::info!(run = %run.id, target = target.as_str(), photos = photos.len(), "reprocessing requested");
    for chunk in photos.chunks(PUBLISH_CHUNK) {
        if let Err(e) = publish(pool, queue, chunk).await {
            tracing::warn!(run = %run.id, error = %e, "reprocessing jobs not published; the reconciler will");
            break;
        }
    }
    Ok(Ok(run))
}

/// Puts reprocessing jobs on the bulk lane and records each one's entry.
async fn publish(pool: &DbPool, queue: &Queue, photos: &[Uuid]) -> Result<(), DispatchError> {
    if photos.is_empty() {
        return Ok(());
    }
    let jobs: Vec<(Uuid, Option<&str>)> = photos.iter().map(|id| (*id, None)).collect();
    let entries = queue.enqueue_traced(Lane::Bulk, &jobs).await?;
    let published: Vec<(Uuid, String)> = photos.iter().copied().zip(entries).collect();
    let mut conn = db::conn(pool).await?;
    db::reprocess::mark_published(&mut conn, &published).await?;
    Ok(())
}

/// The reconciler's part for reprocessing (run under its lock): publishes again the jobs
/// of rows `queued` longer than `reconciler.grace_secs` whose entry is gone, and takes
/// back rows `processing` past their lease whose entry no consumer holds (`queued` and
/// published again, or `failed` if that was the last attempt allowed). Returns the jobs
/// published.
pub async fn reconcile(
    pool: &DbPool,
    queue: &Queue,
    config: &Config,
) -> Result<usize, DispatchError> {
    let lease = crate::worker::reprocess::lease(config);
    let overdue = {
        let mut conn = db::conn(pool).await?;
        db::reprocess::overdue(
            &mut conn,
            std::time::Duration::from_secs(config.reconciler.grace_secs),
            lease,
            config.reconciler.batch_size,
        )
        .await?
    };
    let known: Vec<&str> = overdue
        .iter()
        .filter_map(|o| o.entry_id.as_deref())
        .collect();
    let mut statuses = queue.entry_status(&known).await?.into_iter();
    let mut again = Vec::new();
    let mut lifeless = Vec::new();
    for o in &overdue {
        let status = match o.entry_id {
            Some(_) => statuses.next().unwrap_or(EntryStatus::Gone),
            None => EntryStatus::Gone,
        };
        match o.state.as_str() {
            "queued" if matches!(status, EntryStatus::Gone | EntryStatus::Orphaned) => {
                again.push(o.photo_id)
            }
            "processing" if status != EntryStatus::Pending => lifeless.push(o.photo_id),
            _ => {}
        }
    }
    if !lifeless.is_empty() {
        let mut conn = db::conn(pool).await?;
        let max = i32::try_from(config.retry.max_attempts).unwrap_or(i32::MAX);
        again.extend(db::reprocess::reclaim(&mut conn, &lifeless, lease, max).await?);
    }
    for chunk in again.chunks(PUBLISH_CHUNK) {
        publish(pool, queue, chunk).await?;
    }
    if !again.is_empty() {
        tracing::info!(
            published = again.len(),
            "reprocessing jobs whose entries were gone published again"
        );
    }
    Ok(again.len())
}
