//! The consume loop: read jobs from the stream (and take over those abandoned by dead
//! workers), at most `concurrency` in flight, of which at most `cpu_slots` decode, resize
//! and encode at once (the others are read, fetched, stored or recorded meanwhile); move
//! due retries onto the stream; pause while PostgreSQL is down; on shutdown, finish or
//! hand back what is in flight. Knows nothing of HTTP.

pub mod commit;
pub mod job;
pub mod reprocess;
pub mod retry;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, WorkerSize};
use crate::db::{self, DbPool};
use crate::fetch::{Fetcher, SystemLookup};
use crate::metrics::Metrics;
use crate::pipeline::Spec;
use crate::queue::{Consumer, Delivery, Queue};
use crate::storage::Storage;

/// Pause after a failed stream read before trying again (Redis down or restarting).
const READ_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How often a paused worker checks whether PostgreSQL is back.
const DB_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Retries moved onto the stream per round of the promoter.
const PROMOTE_BATCH: usize = 500;
/// How often a worker removes the consumers of workers that are gone.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What a job needs; cheap to clone.
#[derive(Clone)]
pub struct WorkerContext {
    pub pool: DbPool,
    pub queue: Queue,
    pub consumer: Arc<Consumer>,
    pub storage: Storage,
    pub spec: Arc<Spec>,
    /// The spec of imported images: the variants and the `compressed` rendition.
    pub import_spec: Arc<Spec>,
    /// Downloads the images of imports.
    pub fetcher: Fetcher,
    pub config: Arc<Config>,
    pub metrics: Metrics,
    /// `worker.cpu_slots`: bounds the image work actually running on the blocking pool (a
    /// timed-out attempt's work keeps its slot until it really ends).
    pub cpu_slots: Arc<Semaphore>,
    /// Set by a job that found PostgreSQL unreachable; the loop pauses until it answers.
    pub db_down: Arc<AtomicBool>,
    /// Cancelled when the shutdown grace period is over: jobs still fetching, processing or
    /// storing stop there and hand themselves back. Database writes are never cut short (a
    /// transaction dropped half-way would hold its row locks until the connection closes).
    pub interrupt: CancellationToken,
    /// Skip the image work and storage: jobs only go through the queue and bookkeeping.
    pub no_op: bool,
    /// Records finished jobs in groups.
    pub committer: commit::Committer,
}

impl WorkerContext {
    pub fn new(
        pool: DbPool,
        queue: Queue,
        consumer: Consumer,
        storage: Storage,
        config: Arc<Config>,
        metrics: Metrics,
        size: WorkerSize,
    ) -> Result<Self, String> {
        // Downloads resolve names with the system's resolver; `fetcher` may be replaced.
        let fetcher = Fetcher::new(&config.fetch, Arc::new(SystemLookup))?;
        let spec = Spec::from_config(&config).map_err(|e| e.to_string())?;
        let import_spec = Spec::for_imports(&config).map_err(|e| e.to_string())?;
        let consumer = Arc::new(consumer);
        let committer = commit::Committer::spawn(
            pool.clone(),
            queue.clone(),
            consumer.clone(),
            metrics.clone(),
            size.concurrency,
        );
        Ok(WorkerContext {
            committer,
            pool,
            queue,
            consumer,
            storage,
            spec: Arc::new(spec),
            import_spec: Arc::new(import_spec),
            fetcher,
            config,
            metrics,
            cpu_slots: Arc::new(Semaphore::new(size.cpu_slots)),
            db_down: Arc::new(AtomicBool::new(false)),
            interrupt: CancellationToken::new(),
            no_op: false,
        })
    }
}

/// Runs until `shutdown` is cancelled, then finishes the jobs in flight within the grace
/// period, interrupts the rest (they hand themselves back), and returns.
pub async fn run(ctx: WorkerContext, size: WorkerSize, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(size.concurrency));
    let mut running = JoinSet::new();
    let cfg = ctx.config.worker.clone();
    let visibility = Duration::from_secs(cfg.visibility_timeout_secs);
    let reclaim_every = Duration::from_secs(cfg.reclaim_interval_secs);
    let mut last_reclaim: Option<Instant> = None;
    let mut last_prune: Option<Instant> = None;
    let promoter = tokio::spawn(promote_retries(ctx.clone(), shutdown.clone()));
    if let Err(e) = ctx.queue.ensure_group().await {
        tracing::warn!(error = %e, "cannot create the consumer group yet; will retry");
    }
    tracing::info!(
        consumer = ctx.consumer.name(),
        concurrency = size.concurrency,
        cpu_slots = size.cpu_slots,
        "worker started"
    );

    loop {
        if ctx.db_down.load(Ordering::Relaxed) && !wait_for_db(&ctx, &shutdown).await {
            break;
        }
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let wanted = 1 + slots.available_permits();
        let reclaim_due = last_reclaim.is_none_or(|t| t.elapsed() >= reclaim_every);
        let read = if reclaim_due {
            last_reclaim = Some(Instant::now());
            match ctx.consumer.take_over(visibility, wanted).await {
                Ok(taken) if !taken.is_empty() => {
                    tracing::info!(count = taken.len(), "took over abandoned jobs");
                    Ok(taken)
                }
                _ => ctx.consumer.read(wanted).await,
            }
        } else {
            // Not raced against shutdown: a read cut short could leave entries delivered to
            // this consumer and never seen. It blocks for `redis.block_ms` at most.
            ctx.consumer.read(wanted).await
        };
        let deliveries = match read {
            Ok(d) if shutdown.is_cancelled() => {
                hand_back_unstarted(&ctx, d).await;
                break;
            }
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "stream read failed; retrying");
                drop(first);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(READ_RETRY_DELAY) => continue,
                }
            }
        };
        // A permit for each entry (only this loop takes permits, and it saw them free);
        // entries beyond them go back at once.
        let mut permits = std::iter::once(first).chain(std::iter::from_fn(|| {
            slots.clone().try_acquire_owned().ok()
        }));
        let mut accepted = Vec::with_capacity(deliveries.len());
        let mut extra = Vec::new();
        for delivery in deliveries {
            match permits.next() {
                Some(permit) => accepted.push((delivery, permit)),
                None => extra.push(delivery),
            }
        }
        drop(permits);
        if !extra.is_empty() {
            hand_back_unstarted(&ctx, extra).await;
        }
        let (accepted, mut permits): (Vec<_>, Vec<_>) = accepted.into_iter().unzip();
        for started in job::start_all(&ctx, accepted).await {
            let Some(permit) = permits.pop() else { break };
            let ctx = ctx.clone();
            let span = started.span();
            running.spawn(
                async move {
                    let ran = AssertUnwindSafe(job::handle(&ctx, started))
                        .catch_unwind()
                        .await;
                    if let Err(panic) = ran {
                        tracing::error!(
                            panic = panic_message(&*panic),
                            "job panicked; its entry stays pending and will be taken over"
                        );
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        while let Some(ended) = running.try_join_next() {
            log_task_end(ended);
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_INTERVAL) {
            last_prune = Some(Instant::now());
            prune_consumers(&ctx, visibility).await;
        }
    }

    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    tracing::info!(
        in_flight = running.len(),
        grace_secs = grace.as_secs(),
        "worker stopping"
    );
    let drained = tokio::time::timeout(grace, async {
        while let Some(ended) = running.join_next().await {
            log_task_end(ended);
        }
    })
    .await;
    if drained.is_err() {
        ctx.interrupt.cancel();
        while let Some(ended) = running.join_next().await {
            log_task_end(ended);
        }
    }
    let _ = promoter.await;
    tracing::info!("worker stopped");
}

/// A job task that ended other than by returning: cancelled, or panicked outside the
/// job's own guard.
fn log_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        tracing::error!(error = %e, "job task ended abnormally");
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-text panic payload")
}

/// Removes the consumers of workers that are gone (they hold nothing and have not read for
/// the visibility timeout).
async fn prune_consumers(ctx: &WorkerContext, idle: Duration) {
    match ctx.queue.prune_consumers(idle).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed consumers of workers that are gone"),
        Err(e) => ctx.metrics.background_failure("pruner", &e),
    }
}

/// Gives back entries read but not started (shutdown came during the read).
async fn hand_back_unstarted(ctx: &WorkerContext, deliveries: Vec<Delivery>) {
    for d in deliveries {
        let result = match &d.job {
            Ok(job) => ctx
                .queue
                .hand_back(&d.entry_id, job.photo_id)
                .await
                .map(drop),
            Err(_) => ctx.queue.ack(&d.entry_id).await,
        };
        if let Err(e) = result {
            tracing::warn!(entry = %d.entry_id, error = %e, "hand-back failed; the job will be taken over");
        }
    }
}

/// Waits until PostgreSQL answers again; false if shutdown came first.
async fn wait_for_db(ctx: &WorkerContext, shutdown: &CancellationToken) -> bool {
    tracing::warn!("database unreachable; worker paused");
    loop {
        if db::ping(&ctx.pool).await.is_ok() {
            ctx.db_down.store(false, Ordering::Relaxed);
            tracing::info!("database back; worker resumed");
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(DB_PROBE_INTERVAL) => {}
        }
    }
}

/// Moves retries whose time has come from the delayed set onto the stream.
async fn promote_retries(ctx: WorkerContext, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.config.worker.retry_poll_ms);
    loop {
        match ctx
            .queue
            .promote_due(chrono::Utc::now().timestamp_millis(), PROMOTE_BATCH)
            .await
        {
            Ok(n) if n > 0 => tracing::debug!(count = n, "retries due moved onto the stream"),
            Ok(_) => {}
            Err(e) => ctx.metrics.background_failure("promoter", &e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
