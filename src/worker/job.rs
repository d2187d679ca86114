//! Jobs: a read batch is started together (`start_all`, one transaction), then each job
//! processes its photo, records the result and acknowledges its entry (`handle`).
//!
//! How an attempt ends:
//! - completed: results committed together with the other jobs finishing at the same time
//!   (`commit.rs`), entries acknowledged after the commit;
//! - failed (the input is at fault): photo `failed`, acknowledged;
//! - transient error (storage, database, timeout, crash): photo back to `queued` with a retry
//!   scheduled after a backoff, acknowledged; after the last attempt, `dead` and dead-lettered;
//! - PostgreSQL unreachable: the job is handed back and the worker pauses;
//! - anything that fails while recording the outcome leaves the entry unacknowledged, to be
//!   taken over after the visibility timeout.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::commit::{CommitError, Finished};
use super::{retry, WorkerContext};
use crate::db::{
    self, attempts::AttemptRef, models::Photo, models::Variant, photos::Completion, DbError,
};
use crate::pipeline::{self, PipelineError};
use crate::queue::{Delivery, QueueError};
use crate::storage::{self, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input is at fault; the photo ends `failed`.
    #[error(transparent)]
    Permanent(#[from] PipelineError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the image work took longer than {0:?}")]
    Timeout(Duration),
    #[error("image task ended abnormally: {0}")]
    Crashed(String),
    /// The original is gone from storage; nothing to retry.
    #[error("original {0} is missing from storage")]
    OriginalMissing(String),
    /// The worker is shutting down and the grace period is over.
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl JobError {
    /// The input is at fault (or gone): retrying cannot help.
    fn is_permanent(&self) -> bool {
        matches!(self, JobError::Permanent(_) | JobError::OriginalMissing(_))
    }

    fn db_unreachable(&self) -> bool {
        match self {
            JobError::Db(e) => e.is_transient(),
            JobError::Commit(e) => matches!(e, CommitError::Unreachable(_)),
            _ => false,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    /// A transient error; another attempt is scheduled.
    Retry,
    /// Out of attempts; dead-lettered.
    Dead,
    /// Given back unfinished (PostgreSQL unreachable, or shutdown).
    HandedBack,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// A delivery whose photo is recorded as started: ready to run.
pub struct Started {
    pub entry: String,
    pub photo: Photo,
    pub attempt: AttemptRef,
}

/// Starts a read batch: drops malformed entries, records the start of every photo in one
/// transaction, and acknowledges entries whose photos are already final (duplicates).
/// Returns the jobs to run. If PostgreSQL is unreachable the entries are handed back and
/// the worker pauses; on any other error they stay pending, to be taken over later.
pub async fn start_all(ctx: &WorkerContext, deliveries: Vec<Delivery>) -> Vec<Started> {
    let mut done_with = Vec::new();
    let mut entries = std::collections::HashMap::new();
    for d in deliveries {
        match d.job {
            Ok(job) => {
                if let Some(twin) = entries.insert(job.photo_id, d.entry_id) {
                    // The same photo twice in one read: one entry is enough (if this worker
                    // dies, the one kept stays pending and is taken over).
                    done_with.push(twin);
                }
            }
            Err(reason) => {
                tracing::warn!(entry = %d.entry_id, %reason, "malformed entry dropped");
                done_with.push(d.entry_id);
            }
        }
    }
    let ids: Vec<Uuid> = entries.keys().copied().collect();
    let started = match db::conn(&ctx.pool).await {
        Ok(mut conn) => db::photos::start_many(&mut conn, &ids, ctx.consumer.name()).await,
        Err(e) => Err(e),
    };
    let mut ready = Vec::with_capacity(ids.len());
    match started {
        Ok(started) => {
            for (photo, attempt) in started {
                if let Some(entry) = entries.remove(&photo.id) {
                    ready.push(Started {
                        entry,
                        photo,
                        attempt,
                    });
                }
            }
            // Left: photos missing or already final; nothing to do.
            for (photo_id, entry) in entries {
                tracing::debug!(job_id = %photo_id, "photo already final; entry acknowledged");
                ctx.metrics.jobs.with_label_values(&["skipped"]).inc();
                done_with.push(entry);
            }
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, jobs = entries.len(), "database unreachable; jobs handed back");
            ctx.db_down.store(true, Ordering::Relaxed);
            for (photo_id, entry) in entries {
                if let Err(e) = ctx.queue.hand_back(&entry, photo_id).await {
                    tracing::warn!(job_id = %photo_id, error = %e, "hand-back failed; the job will be taken over");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = entries.len(), "could not start jobs; they stay pending");
        }
    }
    if let Err(e) = ctx.queue.ack_many(&done_with).await {
        tracing::warn!(error = %e, "ack failed");
    }
    ready
}

pub async fn handle(ctx: &WorkerContext, job: Started) {
    let started = Instant::now();
    let Started {
        entry,
        photo,
        attempt,
    } = job;
    let photo_id = photo.id;
    let result = tokio::select! {
        r = run(ctx, &entry, photo, attempt) => r,
        never = keep_claim(ctx, &entry) => match never {},
    };
    let result = match result {
        Err(e) if e.db_unreachable() => {
            tracing::warn!(error = %e, "database unreachable; job handed back");
            ctx.db_down.store(true, Ordering::Relaxed);
            give_back(ctx, &entry, photo_id, Some(attempt)).await
        }
        Err(JobError::Interrupted) => {
            tracing::info!("shutdown grace period over; job handed back");
            give_back(ctx, &entry, photo_id, Some(attempt)).await
        }
        other => other,
    };
    ctx.metrics
        .job_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(outcome) => {
            tracing::info!(
                outcome = outcome.label(),
                ms = started.elapsed().as_millis() as u64,
                "job done"
            );
            ctx.metrics.jobs.with_label_values(&[outcome.label()]).inc();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the outcome; the entry stays pending");
            ctx.metrics.jobs.with_label_values(&["pending"]).inc();
        }
    }
}

/// Renews the claim on the entry while the job runs, so no other worker takes it over.
async fn keep_claim(ctx: &WorkerContext, entry: &str) -> std::convert::Infallible {
    let every = Duration::from_secs(ctx.config.worker.heartbeat_secs);
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = ctx.consumer.heartbeat(entry).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

async fn run(
    ctx: &WorkerContext,
    entry: &str,
    photo: Photo,
    attempt: AttemptRef,
) -> Result<Outcome, JobError> {
    let photo_id = photo.id;
    let max = ctx.config.retry.max_attempts as i32;
    if photo.attempts > max {
        // Earlier deliveries died without recording an outcome (a crash or a kill).
        let reason = format!(
            "gave up after {max} attempts; the last ended without an outcome (worker crashed or was killed){}",
            photo
                .error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        return bury(ctx, entry, photo_id, &reason, attempt).await;
    }
    tracing::debug!(attempt = photo.attempts, "processing");

    let executed = tokio::select! {
        r = execute(ctx, &photo) => r,
        _ = ctx.interrupt.cancelled() => Err(JobError::Interrupted),
    };
    match executed {
        Ok(done) => {
            ctx.committer
                .commit(Finished {
                    entry: entry.to_owned(),
                    photo_id,
                    done,
                    attempt,
                })
                .await?;
            Ok(Outcome::Completed)
        }
        Err(e) if e.is_permanent() => {
            tracing::info!(error = %e, "photo cannot be processed");
            let mut conn = db::conn(&ctx.pool).await?;
            db::photos::fail(&mut conn, photo_id, &e.to_string(), attempt).await?;
            ctx.queue.ack(entry).await?;
            Ok(Outcome::Failed)
        }
        Err(e) if e.db_unreachable() || matches!(e, JobError::Interrupted) => Err(e),
        Err(e) if photo.attempts >= max => {
            let reason = format!("gave up after {max} attempts; last error: {e}");
            bury(ctx, entry, photo_id, &reason, attempt).await
        }
        Err(e) => {
            let n = u32::try_from(photo.attempts).unwrap_or(1);
            let delay = retry::backoff(&ctx.config.retry, n, rand::random::<f64>());
            let due = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(error = %e, attempt = n, retry_in_ms = delay.as_millis() as u64, "attempt failed; retry scheduled");
            let mut conn = db::conn(&ctx.pool).await?;
            db::photos::retry_later(&mut conn, photo_id, &e.to_string(), due, attempt).await?;
            ctx.queue.schedule(photo_id, due.timestamp_millis()).await?;
            ctx.queue.ack(entry).await?;
            Ok(Outcome::Retry)
        }
    }
}

/// Out of attempts: the photo ends `dead` and a dead letter is written.
async fn bury(
    ctx: &WorkerContext,
    entry: &str,
    photo_id: Uuid,
    reason: &str,
    attempt: AttemptRef,
) -> Result<Outcome, JobError> {
    tracing::warn!(%reason, "job dead-lettered");
    let mut conn = db::conn(&ctx.pool).await?;
    db::photos::kill(&mut conn, photo_id, reason, Some(attempt)).await?;
    ctx.queue.dead_letter(entry, photo_id, reason).await?;
    Ok(Outcome::Dead)
}

/// Gives the job back to the stream unfinished, to be delivered again at once; its attempt
/// does not count.
async fn give_back(
    ctx: &WorkerContext,
    entry: &str,
    photo_id: Uuid,
    attempt: Option<AttemptRef>,
) -> Result<Outcome, JobError> {
    if let Some(attempt) = attempt {
        // Best effort: the database may be down. The next start closes the attempt.
        if let Ok(mut conn) = db::conn(&ctx.pool).await {
            let _ = db::photos::hand_back(&mut conn, photo_id, attempt).await;
        }
    }
    ctx.queue.hand_back(entry, photo_id).await?;
    Ok(Outcome::HandedBack)
}

/// Fetches the original, runs the pipeline and stores the variants.
async fn execute(ctx: &WorkerContext, photo: &Photo) -> Result<Completion, JobError> {
    if ctx.no_op {
        return Ok(Completion {
            width: 0,
            height: 0,
            exif: serde_json::Value::Null,
            variants: Vec::new(),
        });
    }
    let original = match ctx.storage.get(&photo.original_key).await {
        Ok(b) => b,
        Err(StorageError::NotFound(key)) => return Err(JobError::OriginalMissing(key)),
        Err(e) => return Err(e.into()),
    };
    let processed = process_blocking(ctx, original).await?;

    let mut variants = Vec::with_capacity(processed.variants.len());
    for v in processed.variants {
        let key = storage::variant_key(photo.id, &v.name, v.extension);
        let etag = hex::encode(&Sha256::digest(&v.data)[..16]);
        let bytes = v.data.len() as i64;
        ctx.storage.put(&key, Bytes::from(v.data)).await?;
        variants.push(Variant {
            photo_id: photo.id,
            name: v.name,
            storage_key: key,
            content_type: v.content_type.to_owned(),
            width: v.width as i32,
            height: v.height as i32,
            bytes,
            etag,
        });
    }
    let exif = serde_json::to_value(&processed.exif)
        .map_err(|e| JobError::Crashed(format!("exif to json: {e}")))?;
    Ok(Completion {
        width: processed.width as i32,
        height: processed.height as i32,
        exif,
        variants,
    })
}

/// The pipeline on the blocking pool, in the job's span, bounded by the job timeout. A
/// panic in the image code is a transient failure (retried, then dead-lettered), never the
/// end of the worker.
async fn process_blocking(
    ctx: &WorkerContext,
    original: Bytes,
) -> Result<pipeline::Processed, JobError> {
    let cpu = ctx
        .cpu_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| JobError::Crashed(e.to_string()))?;
    let spec = ctx.spec.clone();
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let _cpu = cpu;
        span.in_scope(|| pipeline::process(&original, &spec))
    });
    let limit = Duration::from_millis(ctx.config.worker.job_timeout_ms);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(result)) => Ok(result?),
        Ok(Err(e)) if e.is_panic() => Err(JobError::Crashed("the image decoder crashed".into())),
        Ok(Err(e)) => Err(JobError::Crashed(e.to_string())),
        Err(_) => Err(JobError::Timeout(limit)),
    }
}
