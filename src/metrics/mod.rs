//! Prometheus metrics, served at `/metrics`. Names are constants here, in one place (the
//! queue-wide gauges in `queue`).

pub mod pool;
pub mod queue;

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const PHOTOS_UPLOADED: &str = "photoq_photos_uploaded_total";
pub const JOBS: &str = "photoq_jobs_total";
pub const JOB_SECONDS: &str = "photoq_job_duration_seconds";
pub const COMMIT_GROUP_JOBS: &str = "photoq_commit_group_jobs";
pub const STALE_DELIVERIES: &str = "photoq_stale_deliveries_total";
pub const RECONCILED: &str = "photoq_reconciled_jobs_total";
pub const BACKGROUND_FAILURES: &str = "photoq_background_failures_total";
pub const UPLOADS_IN_FLIGHT: &str = "photoq_uploads_in_flight";
pub const UPLOAD_BYTES: &str = "photoq_upload_bytes_total";
pub const JOB_ERRORS: &str = "photoq_job_errors_total";
pub const STAGE_SECONDS: &str = "photoq_job_stage_duration_seconds";
pub const HTTP_REQUESTS: &str = "photoq_http_requests_total";
pub const HTTP_SECONDS: &str = "photoq_http_request_duration_seconds";
pub const BUILD_INFO: &str = "photoq_build_info";
pub const PHOTO_SECONDS: &str = "photoq_photo_completion_seconds";
pub const REDIS_ERRORS: &str = "photoq_redis_errors_total";
pub const READY: &str = "photoq_ready";
pub const RETENTION_REMOVED: &str = "photoq_retention_removed_total";
pub const REPROCESSED: &str = "photoq_reprocess_attempts_total";

/// The stages of a job, as `photoq_job_stage_duration_seconds` labels them: the original
/// downloaded (imports), decoded, resized (with adjustments and orientation), encoded, the
/// variants stored, the outcome committed (a group commit's time, for each job in it).
pub const STAGES: &[&str] = &["download", "decode", "resize", "encode", "store", "commit"];

/// Buckets for job durations, seconds.
const JOB_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for stages and HTTP requests, seconds.
const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for a photo's time from upload to completion, seconds.
const PHOTO_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Buckets for the number of jobs recorded by one group commit.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Photos accepted by `POST /v1/photos`.
    pub photos_uploaded: IntCounter,
    /// Jobs ended, by outcome: completed, failed, retry, dead, handed_back, stale (the
    /// delivery or the attempt was superseded; nothing recorded), pending (the outcome
    /// could not be recorded; the entry is delivered again), panicked, abandoned (the task
    /// ended without an outcome, e.g. the runtime stopped).
    pub jobs: IntCounterVec,
    /// Wall time of a job, from read to ack.
    pub job_seconds: Histogram,
    /// Jobs recorded together by each group commit of a worker.
    pub commit_group_jobs: Histogram,
    /// Deliveries and attempts that changed nothing, by stage: start (duplicate entry,
    /// photo final or running elsewhere), finish (the attempt was taken over).
    pub stale_deliveries: IntCounterVec,
    /// Jobs the reconciler acted on: published (their entry was gone), buried (a lifeless
    /// last attempt).
    pub reconciled: IntCounterVec,
    /// Failed rounds of background tasks: reconciler, promoter, pruner (idle consumers),
    /// retention.
    pub background_failures: IntCounterVec,
    /// What retention removed, by kind: originals, photos, idempotency_records, events,
    /// webhook_deliveries, stream_tokens, orphans (`crate::retention::Removed`).
    retention_removed: IntCounterVec,
    /// Reprocessing attempts, by how they ended: done, failed, retry, handed_back, stale.
    pub reprocessed: IntCounterVec,
    /// Upload bodies being read now (at most `upload.max_concurrent`).
    pub uploads_in_flight: IntGauge,
    /// Bytes of the photos accepted by `POST /v1/photos`.
    pub upload_bytes: IntCounter,
    /// Attempts that ended in an error, by its stable code (as in a photo's `error_code`).
    pub job_errors: IntCounterVec,
    /// Time of each stage of a job ([`STAGES`]).
    pub stage_seconds: HistogramVec,
    /// HTTP requests answered, by route template, method and status.
    pub http_requests: IntCounterVec,
    /// Time to answer an HTTP request (to the response head: a stream's body is not
    /// counted), by route template and method.
    pub http_seconds: HistogramVec,
    /// Time from a photo's upload (or import) to its completion, retries and waiting
    /// included; observed by the worker that completes it.
    pub photo_seconds: Histogram,
    /// Whether an API process's dependencies answered its last probe (`/readyz` or a
    /// scrape), by dependency: 1 up, 0 down.
    ready: IntGaugeVec,
    /// Queue-wide gauges, exported by the one process that samples them.
    pub queue: queue::QueueGauges,
}

/// Errors of Redis commands, by kind: `connection` (refused, dropped, I/O), `timeout`,
/// `server` (an error reply). One per process: every `QueueError` is made from one.
/// (`None` only if the definition were invalid, which `tests` rules out.)
static REDIS_ERROR_COUNTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(REDIS_ERRORS, "Redis commands that failed, by kind"),
        &["kind"],
    )
    .ok()
});

/// Counts a Redis error ([`REDIS_ERRORS`]).
pub fn redis_error(e: &redis::RedisError) {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        "connection"
    } else {
        "server"
    };
    if let Some(counts) = &*REDIS_ERROR_COUNTS {
        counts.with_label_values(&[kind]).inc();
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let photos_uploaded = IntCounter::new(PHOTOS_UPLOADED, "Photos accepted by the API")?;
        let jobs = IntCounterVec::new(Opts::new(JOBS, "Jobs ended, by outcome"), &["outcome"])?;
        let job_seconds = Histogram::with_opts(
            HistogramOpts::new(JOB_SECONDS, "Job wall time in seconds")
                .buckets(JOB_BUCKETS.to_vec()),
        )?;
        let commit_group_jobs = Histogram::with_opts(
            HistogramOpts::new(COMMIT_GROUP_JOBS, "Jobs recorded by one group commit")
                .buckets(GROUP_BUCKETS.to_vec()),
        )?;
        let stale_deliveries = IntCounterVec::new(
            Opts::new(
                STALE_DELIVERIES,
                "Deliveries or attempts that changed nothing, by stage",
            ),
            &["stage"],
        )?;
        let reconciled = IntCounterVec::new(
            Opts::new(RECONCILED, "Jobs the reconciler acted on, by action"),
            &["action"],
        )?;
        let background_failures = IntCounterVec::new(
            Opts::new(BACKGROUND_FAILURES, "Failed rounds of background tasks"),
            &["task"],
        )?;
        let retention_removed = IntCounterVec::new(
            Opts::new(RETENTION_REMOVED, "What retention removed, by kind"),
            &["what"],
        )?;
        let reprocessed = IntCounterVec::new(
            Opts::new(REPROCESSED, "Reprocessing attempts, by how they ended"),
            &["outcome"],
        )?;
        let uploads_in_flight = IntGauge::new(UPLOADS_IN_FLIGHT, "Upload bodies being read now")?;
        let upload_bytes = IntCounter::new(UPLOAD_BYTES, "Bytes of the photos accepted")?;
        let job_errors = IntCounterVec::new(
            Opts::new(JOB_ERRORS, "Attempts that ended in an error, by error code"),
            &["code"],
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(STAGE_SECONDS, "Time of each stage of a job in seconds")
                .buckets(FAST_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS, "HTTP requests answered"),
            &["route", "method", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(HTTP_SECONDS, "Time to answer an HTTP request in seconds")
                .buckets(FAST_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "The running build (always 1)"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let photo_seconds = Histogram::with_opts(
            HistogramOpts::new(
                PHOTO_SECONDS,
                "Time from a photo's upload to its completion in seconds",
            )
            .buckets(PHOTO_BUCKETS.to_vec()),
        )?;
        let ready = IntGaugeVec::new(
            Opts::new(
                READY,
                "Dependencies answering this API process (1 up, 0 down)",
            ),
            &["dependency"],
        )?;
        registry.register(Box::new(ready.clone()))?;
        if let Some(counts) = &*REDIS_ERROR_COUNTS {
            registry.register(Box::new(counts.clone()))?;
        }
        registry.register(Box::new(photo_seconds.clone()))?;
        registry.register(Box::new(upload_bytes.clone()))?;
        registry.register(Box::new(job_errors.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_seconds.clone()))?;
        registry.register(Box::new(build_info))?;
        let queue = queue::QueueGauges::new()?;
        registry.register(Box::new(queue.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(uploads_in_flight.clone()))?;
        registry.register(Box::new(photos_uploaded.clone()))?;
        registry.register(Box::new(commit_group_jobs.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(job_seconds.clone()))?;
        registry.register(Box::new(stale_deliveries.clone()))?;
        registry.register(Box::new(reconciled.clone()))?;
        registry.register(Box::new(background_failures.clone()))?;
        registry.register(Box::new(retention_removed.clone()))?;
        registry.register(Box::new(reprocessed.clone()))?;
        Ok(Metrics {
            registry,
            photos_uploaded,
            jobs,
            job_seconds,
            commit_group_jobs,
            stale_deliveries,
            reconciled,
            background_failures,
            retention_removed,
            reprocessed,
            uploads_in_flight,
            upload_bytes,
            job_errors,
            stage_seconds,
            http_requests,
            http_seconds,
            photo_seconds,
            ready,
            queue,
        })
    }

    /// Exports the gauges of a database pool ([`pool::PoolGauges`]).
    pub fn watch_pool(&self, pool: crate::db::DbPool) -> Result<(), prometheus::Error> {
        self.registry
            .register(Box::new(pool::PoolGauges::new(pool)?))
    }

    /// Counts what a retention round removed, by kind (every kind, so each series exists
    /// from the first round).
    pub fn retention_removed(&self, counts: &[(&str, u64)]) {
        for (what, n) in counts {
            self.retention_removed.with_label_values(&[what]).inc_by(*n);
        }
    }

    /// Records a readiness probe's answer.
    pub fn readiness(&self, database: bool, redis: bool) {
        for (dependency, up) in [("database", database), ("redis", redis)] {
            self.ready
                .with_label_values(&[dependency])
                .set(i64::from(up));
        }
    }

    /// Records that a job spent `took` in `stage` (one of [`STAGES`]).
    pub fn stage(&self, stage: &'static str, took: std::time::Duration) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(took.as_secs_f64());
    }

    /// Records an HTTP request: its route template (`unmatched` when none), method, status
    /// and time to the response head.
    pub fn http(&self, route: &str, method: &str, status: u16, took: std::time::Duration) {
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_seconds
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// Counts a delivery or attempt that changed nothing (`stage`: start or finish).
    pub fn stale(&self, stage: &str) {
        self.stale_deliveries.with_label_values(&[stage]).inc();
    }

    /// Logs and counts a failed round of a background task; it tries again next round.
    pub fn background_failure(&self, task: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(task, error = %error, "background round failed; trying again next round");
        self.background_failures.with_label_values(&[task]).inc();
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Counts a job's outcome exactly once: set it with [`JobOutcome::set`]; a job dropped
/// without one is counted when the guard drops: `panicked` while its task unwinds,
/// `abandoned` when it was cancelled.
pub struct JobOutcome {
    metrics: Metrics,
    outcome: Option<&'static str>,
}

impl JobOutcome {
    pub fn new(metrics: &Metrics) -> Self {
        JobOutcome {
            metrics: metrics.clone(),
            outcome: None,
        }
    }

    pub fn set(&mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for JobOutcome {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(if std::thread::panicking() {
            "panicked"
        } else {
            "abandoned"
        });
        self.metrics.jobs.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_are_counted_by_kind() {
        assert!(
            REDIS_ERROR_COUNTS.is_some(),
            "the counter's definition is valid"
        );
        let metrics = Metrics::new().expect("metrics");
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let before = metrics.render().expect("render");
        redis_error(&refused);
        let after = metrics.render().expect("render");
        let count = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("photoq_redis_errors_total{kind=\"connection\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        assert!(count(&after) >= count(&before) + 1.0, "{after}");
    }
}
