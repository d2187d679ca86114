//! Jobs: a read batch is started together (`start_all`, one transaction), then each job
//! processes its photo, records the result and acknowledges its entry (`handle`).
//!
//! Every record is a guarded transition (`crate::state`, `db::jobs`): a delivery whose
//! photo is final or already running elsewhere, or an attempt that was taken over while
//! it ran, records nothing and is counted as stale.
//!
//! How an attempt ends:
//! - completed: results committed together with the other jobs finishing at the same time
//!   (`commit.rs`), entries acknowledged after the commit;
//! - failed (the input is at fault): photo `failed`, acknowledged;
//! - transient error (storage, database, timeout, crash): photo back to `queued` with a retry
//!   scheduled after a backoff, acknowledged; after the last attempt, `dead` and dead-lettered;
//! - PostgreSQL unreachable, or shutdown: the job is handed back (published again at once);
//! - the claim on the entry lost to another worker: stops at a safe point, records nothing;
//! - anything that fails while recording the outcome leaves the entry unacknowledged, to be
//!   taken over after the visibility timeout.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::commit::{CommitError, Committed, Finished};
use super::{retry, WorkerContext};
use crate::db::jobs::{Completion, Delivered, Ending, OriginalInfo};
use crate::db::{self, attempts::AttemptRef, models::Photo, models::Variant, DbError};
use crate::fetch::FetchError;
use crate::metrics::JobOutcome;
use crate::pipeline::{self, PipelineError};
use crate::queue::{Delivery, QueueError};
use crate::storage::{self, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The input is at fault; the photo ends `failed`.
    #[error(transparent)]
    Permanent(#[from] PipelineError),
    /// The download of an imported image failed; permanent or not as the error says.
    #[error("download failed: {0}")]
    Fetch(#[from] FetchError),
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
    /// Another worker took the entry over (this one stopped renewing its claim in time).
    #[error("the entry was taken over by another worker")]
    Superseded,
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl JobError {
    /// The input is at fault (or gone): retrying cannot help.
    pub(super) fn is_permanent(&self) -> bool {
        match self {
            JobError::Permanent(_) | JobError::OriginalMissing(_) => true,
            JobError::Fetch(e) => !e.is_transient(),
            _ => false,
        }
    }

    /// A stable, machine-readable code, recorded on the photo beside the message.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Permanent(e) => e.code(),
            JobError::Fetch(e) => e.code(),
            JobError::Db(_) | JobError::Commit(_) => "database_error",
            JobError::Storage(_) => "storage_error",
            JobError::Queue(_) => "queue_error",
            JobError::Timeout(_) => "timeout",
            JobError::Crashed(_) => "worker_crashed",
            JobError::OriginalMissing(_) => "original_missing",
            JobError::Interrupted | JobError::Superseded => "interrupted",
        }
    }

    pub(super) fn db_unreachable(&self) -> bool {
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
    /// Nothing recorded: the attempt was taken over or reclaimed while it ran.
    Stale,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::HandedBack => "handed_back",
            Outcome::Stale => "stale",
        }
    }
}

/// A delivery whose photo is recorded as started: ready to run.
pub struct Started {
    pub entry: String,
    pub photo: Photo,
    pub attempt: AttemptRef,
    /// The trace the attempt continues: its entry's, else the photo's.
    pub traceparent: Option<String>,
}

impl Started {
    /// The span of the attempt: every log line of its work carries the photo's id and its
    /// trace id; with traces exported, it is a child of the span that accepted the photo.
    pub fn span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "attempt",
            photo_id = %self.photo.id,
            attempt = self.photo.attempts,
            entry = %self.entry,
            trace_id = tracing::field::Empty,
        );
        if let Some(traceparent) = &self.traceparent {
            crate::telemetry::continue_trace(&span, traceparent);
        }
        span
    }
}

/// A job to run: a photo's processing, or a completed photo's reprocessing.
pub enum Job {
    Process(Started),
    Reprocess(super::reprocess::Reprocess),
}

impl Job {
    pub fn span(&self) -> tracing::Span {
        match self {
            Job::Process(s) => s.span(),
            Job::Reprocess(r) => r.span(),
        }
    }
}

/// Runs a started job to its end.
pub async fn handle(ctx: &WorkerContext, job: Job) {
    match job {
        Job::Process(started) => process(ctx, started).await,
        Job::Reprocess(r) => super::reprocess::handle(ctx, r).await,
    }
}

/// Starts a read batch: drops malformed entries, records the start of every photo in one
/// transaction (or its death, when its attempt budget is spent), starts the reprocessing
/// of completed photos whose bulk entries name one (`super::reprocess`), and acknowledges
/// entries that start nothing (duplicates, photos final or running elsewhere). Returns the
/// jobs to run. If PostgreSQL is unreachable the entries are handed back and the worker pauses;
/// on any other error they stay pending, to be taken over later.
pub async fn start_all(ctx: &WorkerContext, deliveries: Vec<Delivery>) -> Vec<Job> {
    let mut done_with = Vec::new();
    let mut entries = std::collections::HashMap::new();
    let mut traces = std::collections::HashMap::new();
    for d in deliveries {
        match d.job {
            Ok(job) => {
                if let Some(traceparent) = d.traceparent {
                    traces.insert(job.photo_id, traceparent);
                }
                let delivered = Delivered {
                    photo_id: job.photo_id,
                    entry: d.entry_id,
                    deliveries: i32::try_from(d.deliveries).unwrap_or(i32::MAX),
                };
                if let Some(twin) = entries.insert(job.photo_id, delivered) {
                    // The same photo twice in one read: one entry is enough (if this worker
                    // dies, the one kept stays pending and is taken over).
                    ctx.metrics.stale("start");
                    done_with.push(twin.entry);
                }
            }
            Err(reason) => {
                tracing::warn!(entry = %d.entry_id, %reason, "malformed entry dropped");
                done_with.push(d.entry_id);
            }
        }
    }
    let delivered: Vec<Delivered> = entries.values().cloned().collect();
    let max = ctx.config.retry.max_attempts as i32;
    let started = match db::conn(&ctx.pool).await {
        Ok(mut conn) => db::jobs::start_many(&mut conn, &delivered, ctx.consumer.name(), max).await,
        Err(e) => Err(e),
    };
    let mut ready = Vec::new();
    match started {
        Ok(starts) => {
            ctx.queue.changes_written();
            for (photo, attempt) in starts.started {
                if let Some(d) = entries.remove(&photo.id) {
                    let traceparent = traces
                        .remove(&photo.id)
                        .or_else(|| photo.trace_parent.clone());
                    ready.push(Job::Process(Started {
                        entry: d.entry,
                        photo,
                        attempt,
                        traceparent,
                    }));
                }
            }
            for (photo_id, reason) in starts.dead {
                let Some(d) = entries.remove(&photo_id) else {
                    continue;
                };
                let span = tracing::info_span!("attempt", photo_id = %photo_id, entry = %d.entry);
                bury_unstarted(ctx, &d, &reason).instrument(span).await;
            }
            // Left: reprocessing, duplicates, photos final or running elsewhere.
            for r in super::reprocess::start(ctx, &mut entries).await {
                ready.push(Job::Reprocess(r));
            }
            for (photo_id, d) in entries {
                tracing::debug!(photo_id = %photo_id, entry = %d.entry, "stale delivery acknowledged");
                ctx.metrics.stale("start");
                done_with.push(d.entry);
            }
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, jobs = entries.len(), "database unreachable; jobs handed back");
            ctx.db_down.store(true, Ordering::Relaxed);
            for (photo_id, d) in entries {
                if let Err(e) = ctx.queue.hand_back(&d.entry, photo_id).await {
                    tracing::warn!(photo_id = %photo_id, error = %e, "hand-back failed; the job will be taken over");
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = entries.len(), "could not start jobs; they stay pending");
        }
    }
    if let Err(e) = ctx.queue.ack_many(&done_with).await {
        tracing::warn!(error = %e, "ack failed");
    }
    ready
}

/// A delivery whose photo's budget was spent before it could start: the photo is dead
/// already; writes the dead letter and acknowledges the entry.
async fn bury_unstarted(ctx: &WorkerContext, d: &Delivered, reason: &str) {
    tracing::warn!(%reason, deliveries = d.deliveries, "attempt budget spent; job dead-lettered");
    let mut outcome = JobOutcome::new(&ctx.metrics);
    match ctx
        .queue
        .dead_letter(Some(&d.entry), d.photo_id, reason)
        .await
    {
        Ok(()) => outcome.set(Outcome::Dead.label()),
        Err(e) => {
            tracing::warn!(error = %e, "dead letter not written; the entry stays pending");
            outcome.set("pending");
        }
    }
}

async fn process(ctx: &WorkerContext, job: Started) {
    let mut counted = JobOutcome::new(&ctx.metrics);
    let started = Instant::now();
    let Started {
        entry,
        photo,
        attempt,
        ..
    } = job;
    let photo_id = photo.id;
    let lost = CancellationToken::new();
    let result = tokio::select! {
        r = run(ctx, &entry, photo, attempt, &lost) => r,
        never = keep_claim(ctx, &entry, &lost) => match never {},
    };
    let result = match result {
        Err(e) if e.db_unreachable() => {
            tracing::warn!(error = %e, "database unreachable; job handed back");
            ctx.db_down.store(true, Ordering::Relaxed);
            give_back(ctx, &entry, photo_id, attempt).await
        }
        Err(JobError::Interrupted) => {
            tracing::info!("shutdown grace period over; job handed back");
            give_back(ctx, &entry, photo_id, attempt).await
        }
        Err(JobError::Superseded) => stale(ctx, &entry).await,
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
            counted.set(outcome.label());
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the outcome; the entry stays pending");
            counted.set("pending");
        }
    }
}

/// Renews the claim on the entry while the job runs, so no other worker takes it over.
/// When another worker has taken it over anyway, cancels `lost` (the job stops at its next
/// safe point) and renews no more.
pub(super) async fn keep_claim(
    ctx: &WorkerContext,
    entry: &str,
    lost: &CancellationToken,
) -> std::convert::Infallible {
    let every = Duration::from_secs(ctx.config.worker.heartbeat_secs);
    loop {
        tokio::time::sleep(every).await;
        match ctx.consumer.heartbeat(entry).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return std::future::pending().await;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// A stale attempt (taken over while it ran, or its end found the photo moved on): nothing
/// recorded; the entry is released if this worker still holds it.
pub(super) async fn stale(ctx: &WorkerContext, entry: &str) -> Result<Outcome, JobError> {
    tracing::warn!("attempt superseded while it ran; its outcome is not recorded");
    ctx.metrics.stale("finish");
    ctx.consumer.release(&[entry]).await?;
    Ok(Outcome::Stale)
}

/// After a stale commit: when the photo was deleted while this attempt ran, its owner's
/// delete may have removed the photo's objects before this attempt stored its own, so they
/// are removed again here. (A worker that dies between storing and this check leaves them
/// to the orphan sweeper.)
async fn remove_if_deleted(ctx: &WorkerContext, photo_id: Uuid) {
    let deleted = match db::conn(&ctx.pool).await {
        Ok(mut conn) => db::lifecycle::is_deleted(&mut conn, photo_id).await,
        Err(e) => Err(e),
    };
    match deleted {
        Ok(true) => match ctx.storage.remove_photo(photo_id).await {
            Ok(()) => tracing::info!("photo deleted while processed; its objects removed"),
            Err(e) => tracing::warn!(error = %e, "removing a deleted photo's objects failed"),
        },
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not tell whether the photo was deleted"),
    }
}

async fn run(
    ctx: &WorkerContext,
    entry: &str,
    photo: Photo,
    attempt: AttemptRef,
    lost: &CancellationToken,
) -> Result<Outcome, JobError> {
    let photo_id = photo.id;
    let uploaded_at = photo.created_at;
    let max = ctx.config.retry.max_attempts as i32;
    tracing::debug!(attempt = photo.attempts, "processing");

    let executed = tokio::select! {
        r = execute(ctx, &photo) => r,
        _ = ctx.interrupt.cancelled() => Err(JobError::Interrupted),
        _ = lost.cancelled() => Err(JobError::Superseded),
    };
    match executed {
        Ok(done) => {
            // Waiting for a group commit and its own: where a finished job waits.
            let committing = Instant::now();
            let committed = ctx
                .committer
                .commit(Finished {
                    entry: entry.to_owned(),
                    photo_id,
                    done,
                    attempt,
                })
                .instrument(tracing::info_span!("commit"))
                .await?;
            ctx.metrics.stage("commit", committing.elapsed());
            match committed {
                Committed::Recorded => {
                    let waited = (chrono::Utc::now() - uploaded_at)
                        .to_std()
                        .unwrap_or_default();
                    ctx.metrics.photo_seconds.observe(waited.as_secs_f64());
                    Ok(Outcome::Completed)
                }
                Committed::Stale => {
                    remove_if_deleted(ctx, photo_id).await;
                    Ok(Outcome::Stale)
                }
            }
        }
        Err(e) if e.is_permanent() => {
            tracing::info!(error = %e, "photo cannot be processed");
            let reason = e.to_string();
            let failed = Ending::Failed {
                code: e.code(),
                reason: &reason,
            };
            if !end(ctx, photo_id, attempt, failed).await? {
                // A delete may have come while the original was stored again (`strip_gps`).
                remove_if_deleted(ctx, photo_id).await;
                return stale(ctx, entry).await;
            }
            ctx.queue.ack(entry).await?;
            Ok(Outcome::Failed)
        }
        Err(e)
            if e.db_unreachable() || matches!(e, JobError::Interrupted | JobError::Superseded) =>
        {
            Err(e)
        }
        Err(e) if photo.attempts >= max => {
            let reason = format!("gave up after {max} attempts; last error: {e}");
            tracing::warn!(%reason, "job dead-lettered");
            let dead = Ending::Dead {
                code: e.code(),
                reason: &reason,
            };
            if !end(ctx, photo_id, attempt, dead).await? {
                // A delete may have come while the original was stored again (`strip_gps`).
                remove_if_deleted(ctx, photo_id).await;
                return stale(ctx, entry).await;
            }
            ctx.queue
                .dead_letter(Some(entry), photo_id, &reason)
                .await?;
            Ok(Outcome::Dead)
        }
        Err(e) => {
            let n = u32::try_from(photo.attempts).unwrap_or(1);
            // The backoff, or longer when the server said how long to wait.
            let delay = retry::backoff(&ctx.config.retry, n, rand::random::<f64>());
            let delay = match &e {
                JobError::Fetch(f) => f.retry_after().map_or(delay, |wait| wait.max(delay)),
                _ => delay,
            };
            tracing::warn!(error = %e, attempt = n, retry_in_ms = delay.as_millis() as u64, "attempt failed; retry scheduled");
            let error = e.to_string();
            let retry = Ending::Retry {
                code: e.code(),
                error: &error,
                after: delay,
            };
            if !end(ctx, photo_id, attempt, retry).await? {
                // A delete may have come while the original was stored again (`strip_gps`).
                remove_if_deleted(ctx, photo_id).await;
                return stale(ctx, entry).await;
            }
            // Due no earlier than the time recorded: counted from after the record.
            let due = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            ctx.queue
                .schedule(entry, photo_id, due.timestamp_millis())
                .await?;
            ctx.queue.ack(entry).await?;
            Ok(Outcome::Retry)
        }
    }
}

/// Records how the attempt ended; false when it was stale.
async fn end(
    ctx: &WorkerContext,
    photo_id: Uuid,
    attempt: AttemptRef,
    ending: Ending<'_>,
) -> Result<bool, JobError> {
    let mut conn = db::conn(&ctx.pool).await?;
    let changed = db::jobs::finish(&mut conn, photo_id, attempt, ending).await?;
    // Back to the pool before Redis is asked anything.
    drop(conn);
    if changed {
        ctx.queue.changes_written();
        if let Some(code) = ending.code() {
            ctx.metrics.job_errors.with_label_values(&[code]).inc();
            // For operators' recent-errors view; a miss only loses a count.
            if let Err(e) = ctx.queue.count_error(code).await {
                tracing::debug!(error = %e, "error code not counted");
            }
        }
    }
    Ok(changed)
}

/// Gives the job back to the stream unfinished, to be delivered again at once; its attempt
/// does not count. Redis first: the photo then records the new entry.
async fn give_back(
    ctx: &WorkerContext,
    entry: &str,
    photo_id: Uuid,
    attempt: AttemptRef,
) -> Result<Outcome, JobError> {
    let handed = ctx.queue.hand_back(entry, photo_id).await;
    let new_entry = handed.as_ref().ok().map(String::as_str);
    // Best effort: the database may be down. If so, the new entry finds the photo still
    // `processing` under this attempt and the reconciler reclaims it.
    if let Ok(mut conn) = db::conn(&ctx.pool).await {
        let back = Ending::HandBack { entry: new_entry };
        match db::jobs::finish(&mut conn, photo_id, attempt, back).await {
            Ok(changed) => {
                if changed {
                    ctx.queue.changes_written();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "hand-back not recorded; the reconciler will reclaim the attempt")
            }
        }
    }
    handed?;
    Ok(Outcome::HandedBack)
}

/// Fetches the original (downloading it first for a photo of an import), runs the
/// pipeline and stores the variants.
async fn execute(ctx: &WorkerContext, photo: &Photo) -> Result<Completion, JobError> {
    if ctx.no_op {
        return Ok(Completion {
            width: 0,
            height: 0,
            exif: serde_json::Value::Null,
            thumbhash: None,
            fingerprint: None,
            reused_from: None,
            variants: Vec::new(),
            original: None,
        });
    }
    let (original, downloaded) = match (
        ctx.storage.get(&photo.original_key).await,
        &photo.source_url,
    ) {
        (Ok(b), _) => (b, None),
        (Err(StorageError::NotFound(_)), Some(url)) => {
            let fetched = download(ctx, photo, url).await?;
            (fetched.bytes.clone(), Some(fetched))
        }
        (Err(StorageError::NotFound(key)), None) => return Err(JobError::OriginalMissing(key)),
        (Err(e), _) => return Err(e.into()),
    };
    let original = if ctx.config.privacy.strip_gps {
        without_gps(ctx, photo, original).await?
    } else {
        original
    };
    let spec = spec_of(ctx, photo);
    let original_info = described(photo, downloaded.as_ref(), &original);
    if ctx.config.pipeline.reuse_duplicates {
        // An upload's hash was taken when it was received, a download's just now.
        let sha256 = photo
            .sha256
            .as_deref()
            .or(original_info.as_ref().map(|o| o.sha256.as_str()));
        let reused = match sha256 {
            Some(sha256) => reuse(ctx, photo, sha256, &spec.fingerprint).await?,
            None => None,
        };
        if let Some(done) = reused {
            return Ok(Completion {
                original: original_info,
                ..done
            });
        }
    }
    let fingerprint = spec.fingerprint.clone();
    let processed = process_blocking(ctx, original.clone(), spec).await?;
    let t = processed.timings;
    ctx.metrics.stage("decode", t.decode);
    ctx.metrics.stage("resize", t.resize);
    ctx.metrics.stage("encode", t.encode);

    let storing = Instant::now();
    let variants = store_variants(ctx, photo.id, processed.variants, None, &mut Vec::new()).await?;
    ctx.metrics.stage("store", storing.elapsed());
    let exif = serde_json::to_value(&processed.exif)
        .map_err(|e| JobError::Crashed(format!("exif to json: {e}")))?;
    Ok(Completion {
        width: processed.width as i32,
        height: processed.height as i32,
        exif,
        thumbhash: Some(base64::engine::general_purpose::STANDARD.encode(&processed.thumbhash)),
        fingerprint: Some(fingerprint),
        reused_from: None,
        variants,
        original: original_info,
    })
}

/// The spec a photo's variants are made with: imported images get the `compressed`
/// rendition too.
pub(super) fn spec_of(ctx: &WorkerContext, photo: &Photo) -> std::sync::Arc<pipeline::Spec> {
    match photo.source_url {
        Some(_) => ctx.import_spec.clone(),
        None => ctx.spec.clone(),
    }
}

/// Stores the variants a pipeline made, under their keys (a reprocessing attempt's own,
/// with `version`), each key named in `stored` as it is written; their rows to record.
pub(super) async fn store_variants(
    ctx: &WorkerContext,
    photo_id: Uuid,
    made: Vec<pipeline::EncodedVariant>,
    version: Option<&str>,
    stored: &mut Vec<String>,
) -> Result<Vec<Variant>, JobError> {
    let store_span = tracing::info_span!("store", variants = made.len());
    let mut variants = Vec::with_capacity(made.len());
    for v in made {
        let key = match version {
            None => storage::variant_key(photo_id, &v.name, v.extension),
            Some(version) => storage::remade_variant_key(photo_id, &v.name, version, v.extension),
        };
        let etag = hex::encode(&Sha256::digest(&v.data)[..16]);
        let bytes = v.data.len() as i64;
        // Named before it is written: a write cut short may still leave the object.
        stored.push(key.clone());
        ctx.storage
            .put(&key, Bytes::from(v.data), v.content_type)
            .instrument(store_span.clone())
            .await?;
        variants.push(Variant {
            photo_id,
            name: v.name,
            storage_key: key,
            content_type: v.content_type.to_owned(),
            width: v.width as i32,
            height: v.height as i32,
            bytes,
            etag,
        });
    }
    Ok(variants)
}

/// The original with its GPS position removed (`privacy.strip_gps`), stored again when it
/// had one; as it is otherwise. A later attempt finds it stripped already.
async fn without_gps(
    ctx: &WorkerContext,
    photo: &Photo,
    original: Bytes,
) -> Result<Bytes, JobError> {
    let Some(bytes) = gps_stripped(&original) else {
        return Ok(original);
    };
    let content_type =
        crate::pipeline::sniff::sniff(&bytes).map_or("application/octet-stream", |f| f.mime());
    ctx.storage
        .put(&photo.original_key, bytes.clone(), content_type)
        .await?;
    tracing::info!("GPS position removed from the original");
    Ok(bytes)
}

/// The original without its GPS position, if it had one.
pub(super) fn gps_stripped(original: &Bytes) -> Option<Bytes> {
    let mut bytes = original.to_vec();
    crate::pipeline::privacy::strip_gps(&mut bytes).then(|| Bytes::from(bytes))
}

/// A downloaded original, described once it has been processed: its type as sniffed, its
/// size and hash (also for an original stored by an earlier attempt). None for uploads,
/// described when they were received.
fn described(
    photo: &Photo,
    downloaded: Option<&crate::fetch::Fetched>,
    original: &[u8],
) -> Option<OriginalInfo> {
    match (&photo.source_url, downloaded) {
        (None, _) => None,
        (Some(_), Some(f)) => Some(OriginalInfo::of(&f.bytes, f.format.mime())),
        (Some(_), None) => crate::pipeline::sniff::sniff(original)
            .map(|format| OriginalInfo::of(original, format.mime())),
    }
}

/// The results of an earlier photo of the same owner, bytes and variant configuration,
/// copied for `photo` (its own objects under its own keys), if there is such a photo and
/// its variants are all still in storage; else None, and the photo is processed.
async fn reuse(
    ctx: &WorkerContext,
    photo: &Photo,
    sha256: &str,
    fingerprint: &str,
) -> Result<Option<Completion>, JobError> {
    let mut conn = db::conn(&ctx.pool).await?;
    let found =
        db::photos::reusable(&mut conn, photo.owner_id, sha256, fingerprint, photo.id).await?;
    drop(conn);
    let Some((first, their_variants)) = found else {
        return Ok(None);
    };
    let copying = Instant::now();
    let mut variants = Vec::with_capacity(their_variants.len());
    for v in their_variants {
        let extension = v.storage_key.rsplit_once('.').map_or("bin", |(_, e)| e);
        let key = storage::variant_key(photo.id, &v.name, extension);
        match ctx.storage.copy(&v.storage_key, &key).await {
            Ok(()) => {}
            Err(StorageError::NotFound(missing)) => {
                tracing::info!(from = %first.id, %missing, "results to reuse are gone; processing");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        variants.push(Variant {
            photo_id: photo.id,
            storage_key: key,
            ..v
        });
    }
    ctx.metrics.stage("store", copying.elapsed());
    tracing::info!(from = %first.id, "same bytes and variants as an earlier photo; its results reused");
    Ok(Some(Completion {
        width: first.width.unwrap_or(0),
        height: first.height.unwrap_or(0),
        exif: first.exif.unwrap_or(serde_json::Value::Null),
        thumbhash: first.thumbhash,
        fingerprint: Some(fingerprint.to_owned()),
        reused_from: Some(first.id),
        variants,
        original: None,
    }))
}

/// Downloads the image of a photo of an import and stores it as its original.
async fn download(
    ctx: &WorkerContext,
    photo: &Photo,
    url: &str,
) -> Result<crate::fetch::Fetched, JobError> {
    let started = Instant::now();
    let span = tracing::info_span!("download");
    let fetched = ctx.fetcher.image(url).instrument(span.clone()).await?;
    tracing::debug!(
        bytes = fetched.bytes.len(),
        ms = started.elapsed().as_millis() as u64,
        from = %fetched.url,
        "downloaded"
    );
    ctx.storage
        .put(
            &photo.original_key,
            fetched.bytes.clone(),
            fetched.format.mime(),
        )
        .instrument(span)
        .await?;
    ctx.metrics.stage("download", started.elapsed());
    Ok(fetched)
}

/// The pipeline on the blocking pool, in the job's span, bounded by the job timeout. A
/// panic in the image code is a transient failure (retried, then dead-lettered), never the
/// end of the worker.
pub(super) async fn process_blocking(
    ctx: &WorkerContext,
    original: Bytes,
    spec: std::sync::Arc<pipeline::Spec>,
) -> Result<pipeline::Processed, JobError> {
    let cpu = ctx
        .cpu_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| JobError::Crashed(e.to_string()))?;
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
