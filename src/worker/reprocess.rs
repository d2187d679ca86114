//! Reprocessing: a completed photo's variants made again from its original with this
//! worker's configuration (`crate::reprocess` asks for it; jobs travel the bulk lane).
//!
//! The photo stays `completed` throughout and serves the variants it has: the new ones are
//! stored under keys of their own (`storage::remade_variant_key`), then recorded in one
//! transaction that replaces the old ones' rows, and only then are the old objects
//! removed. An attempt that records nothing (its lease was taken over, the photo deleted,
//! an error) removes what it stored. Every move is guarded by the attempt's lease
//! (`db::reprocess`), so a duplicate or stale delivery changes nothing.
//!
//! How an attempt ends: done; failed for good (the input is at fault, or the attempt
//! budget `retry.max_attempts` is spent; the photo keeps its variants); a transient error
//! schedules a retry after the backoff; shutdown or PostgreSQL unreachable hands the job
//! back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::job::{self, JobError};
use super::{retry, WorkerContext};
use crate::db::jobs::Delivered;
use crate::db::jobs::Ending;
use crate::db::reprocess::{Recorded, Remade, Started};
use crate::db::{self, models::Photo};
use crate::queue::Lane;
use crate::storage::StorageError;

/// A started reprocessing attempt.
pub struct Reprocess {
    pub entry: String,
    pub started: Started,
}

impl Reprocess {
    /// Every log line of the attempt carries the photo's id.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "reprocess",
            photo_id = %self.started.photo.id,
            attempt = self.started.attempts,
            entry = %self.entry,
        )
    }
}

/// How long an attempt holds its photo's row before a new delivery may take it over: the
/// longest its image work may take, and the visibility timeout on top.
pub fn lease(config: &crate::config::Config) -> Duration {
    Duration::from_millis(config.worker.job_timeout_ms)
        + Duration::from_secs(config.worker.visibility_timeout_secs)
}

/// Starts the reprocessing named by the bulk-lane deliveries in `left` (those whose photo
/// did not start as a job), taking them out of `left`. On a database error they stay
/// pending, to be taken over later.
pub async fn start(ctx: &WorkerContext, left: &mut HashMap<Uuid, Delivered>) -> Vec<Reprocess> {
    let bulk: Vec<db::reprocess::Delivery> = left
        .iter()
        .filter(|(_, d)| crate::queue::locate(&d.entry).0 == Lane::Bulk)
        .map(|(id, d)| db::reprocess::Delivery {
            photo_id: *id,
            entry: d.entry.clone(),
            deliveries: d.deliveries,
        })
        .collect();
    if bulk.is_empty() {
        return Vec::new();
    }
    let started = match db::conn(&ctx.pool).await {
        Ok(mut conn) => {
            let max = i32::try_from(ctx.config.retry.max_attempts).unwrap_or(i32::MAX);
            db::reprocess::start(&mut conn, &bulk, lease(&ctx.config), max).await
        }
        Err(e) => Err(e),
    };
    match started {
        Ok((started, spent)) => {
            let mut done_with = Vec::new();
            for photo_id in spent {
                if let Some(d) = left.remove(&photo_id) {
                    tracing::warn!(%photo_id, entry = %d.entry, deliveries = d.deliveries, "reprocessing gave up: attempt budget spent; the photo keeps its variants");
                    ctx.metrics.reprocessed.with_label_values(&["failed"]).inc();
                    done_with.push(d.entry);
                }
            }
            if let Err(e) = ctx.queue.ack_many(&done_with).await {
                tracing::warn!(error = %e, "ack failed");
            }
            started
                .into_iter()
                .filter_map(|s| {
                    left.remove(&s.photo.id).map(|d| Reprocess {
                        entry: d.entry,
                        started: s,
                    })
                })
                .collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = bulk.len(), "could not start reprocessing; the entries stay pending");
            for d in bulk {
                left.remove(&d.photo_id);
            }
            Vec::new()
        }
    }
}

pub async fn handle(ctx: &WorkerContext, job: Reprocess) {
    let began = Instant::now();
    let lost = CancellationToken::new();
    let result = tokio::select! {
        r = run(ctx, &job, &lost) => r,
        never = job::keep_claim(ctx, &job.entry, &lost) => match never {},
    };
    match result {
        Ok(outcome) => {
            tracing::info!(
                outcome,
                ms = began.elapsed().as_millis() as u64,
                "reprocessing done"
            );
            ctx.metrics.reprocessed.with_label_values(&[outcome]).inc();
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the reprocessing; the entry stays pending")
        }
    }
}

async fn run(
    ctx: &WorkerContext,
    job: &Reprocess,
    lost: &CancellationToken,
) -> Result<&'static str, JobError> {
    let Started {
        photo,
        lease,
        attempts,
    } = &job.started;
    let mut stored = Vec::new();
    let remade = tokio::select! {
        r = remake(ctx, photo, *lease, &mut stored) => r,
        _ = ctx.interrupt.cancelled() => Err(JobError::Interrupted),
        _ = lost.cancelled() => Err(JobError::Superseded),
    };
    let recorded = match remade {
        Ok(remade) => match db::conn(&ctx.pool).await {
            Ok(mut conn) => {
                match db::reprocess::complete(&mut conn, photo.id, *lease, &remade).await {
                    Ok(recorded) => Ok(recorded),
                    Err(e) => {
                        // The commit may have gone through before the error: what was stored
                        // may be in use. The orphan walk removes it if it is not.
                        stored.clear();
                        Err(e.into())
                    }
                }
            }
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let error = match recorded {
        Ok(Recorded::Done { unused }) => {
            ctx.queue.changes_written();
            remove(ctx, &unused).await;
            ctx.queue.ack(&job.entry).await?;
            return Ok("done");
        }
        Ok(Recorded::Stale) => {
            remove(ctx, &stored).await;
            job::stale(ctx, &job.entry).await?;
            return Ok("stale");
        }
        Err(e) => e,
    };
    remove(ctx, &stored).await;
    let max = ctx.config.retry.max_attempts as i32;
    let message = error.to_string();
    let gave_up = format!("gave up after {max} attempts; last error: {error}");
    let (ending, outcome) = match &error {
        JobError::Superseded => {
            job::stale(ctx, &job.entry).await?;
            return Ok("stale");
        }
        e if e.db_unreachable() || matches!(e, JobError::Interrupted) => {
            if e.db_unreachable() {
                ctx.db_down
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "reprocessing handed back");
            return give_back(ctx, job).await;
        }
        e if e.is_permanent() => {
            tracing::info!(error = %e, "photo cannot be reprocessed; it keeps its variants");
            (
                Ending::Failed {
                    code: e.code(),
                    reason: &message,
                },
                "failed",
            )
        }
        e if *attempts >= max => {
            tracing::warn!(error = %e, "reprocessing gave up; the photo keeps its variants");
            (
                Ending::Dead {
                    code: e.code(),
                    reason: &gave_up,
                },
                "failed",
            )
        }
        e => {
            let n = u32::try_from(*attempts).unwrap_or(1);
            let after = retry::backoff(&ctx.config.retry, n, rand::random::<f64>());
            tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "reprocessing failed; retry scheduled");
            (
                Ending::Retry {
                    code: e.code(),
                    error: &message,
                    after,
                },
                "retry",
            )
        }
    };
    let mut conn = db::conn(&ctx.pool).await?;
    let changed = db::reprocess::end(&mut conn, photo.id, *lease, ending).await?;
    drop(conn);
    if !changed {
        job::stale(ctx, &job.entry).await?;
        return Ok("stale");
    }
    ctx.metrics
        .job_errors
        .with_label_values(&[error.code()])
        .inc();
    if let Ending::Retry { after, .. } = ending {
        let due = chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
        ctx.queue
            .schedule(&job.entry, photo.id, due.timestamp_millis())
            .await?;
    }
    ctx.queue.ack(&job.entry).await?;
    Ok(outcome)
}

/// Makes the photo's variants again from its original and stores them under the
/// attempt's own keys (each named in `stored` as it is written).
async fn remake(
    ctx: &WorkerContext,
    photo: &Photo,
    lease: Uuid,
    stored: &mut Vec<String>,
) -> Result<Remade, JobError> {
    let original = match ctx.storage.get(&photo.original_key).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound(key)) => return Err(JobError::OriginalMissing(key)),
        Err(e) => return Err(e.into()),
    };
    // An original stored before `privacy.strip_gps` was turned on keeps its position; what
    // is made from it now must not carry it (an import's `compressed` may keep EXIF).
    let original = if ctx.config.privacy.strip_gps {
        job::gps_stripped(&original).unwrap_or(original)
    } else {
        original
    };
    let spec = job::spec_of(ctx, photo);
    let fingerprint = spec.fingerprint.clone();
    let processed = job::process_blocking(ctx, original, spec).await?;
    let version = lease.simple().to_string();
    let version = version.get(..12).unwrap_or(&version);
    let variants =
        job::store_variants(ctx, photo.id, processed.variants, Some(version), stored).await?;
    Ok(Remade {
        variants,
        fingerprint,
        thumbhash: Some(base64::engine::general_purpose::STANDARD.encode(&processed.thumbhash)),
    })
}

/// Removes objects no row names (best effort: what is left, the orphan walk of
/// `crate::retention` removes).
async fn remove(ctx: &WorkerContext, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    if let Err(e) = ctx.storage.delete_many(keys).await {
        tracing::warn!(error = %e, "removing variants no longer used failed; the orphan walk will");
    }
}

/// Gives the job back to the stream, to run again at once; the attempt does not count.
async fn give_back(ctx: &WorkerContext, job: &Reprocess) -> Result<&'static str, JobError> {
    let photo_id = job.started.photo.id;
    let handed = ctx.queue.hand_back(&job.entry, photo_id).await;
    let entry = handed.as_ref().ok().map(String::as_str);
    if let Ok(mut conn) = db::conn(&ctx.pool).await {
        let back = Ending::HandBack { entry };
        if let Err(e) = db::reprocess::end(&mut conn, photo_id, job.started.lease, back).await {
            tracing::warn!(error = %e, "hand-back not recorded; the lease runs out instead");
        }
    }
    handed?;
    Ok("handed_back")
}
