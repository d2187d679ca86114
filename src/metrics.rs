//! Prometheus metrics, served at `/metrics`. Names are constants here, in one place.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

pub const PHOTOS_UPLOADED: &str = "photoq_photos_uploaded_total";
pub const JOBS: &str = "photoq_jobs_total";
pub const JOB_SECONDS: &str = "photoq_job_duration_seconds";
pub const COMMIT_GROUP_JOBS: &str = "photoq_commit_group_jobs";

/// Buckets for job durations, seconds.
const JOB_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets for the number of jobs recorded by one group commit.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Photos accepted by `POST /v1/photos`.
    pub photos_uploaded: IntCounter,
    /// Jobs ended, by outcome: completed, failed, skipped, retry.
    pub jobs: IntCounterVec,
    /// Wall time of a job, from read to ack.
    pub job_seconds: Histogram,
    /// Jobs recorded together by each group commit of a worker.
    pub commit_group_jobs: Histogram,
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
        registry.register(Box::new(photos_uploaded.clone()))?;
        registry.register(Box::new(commit_group_jobs.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(job_seconds.clone()))?;
        Ok(Metrics {
            registry,
            photos_uploaded,
            jobs,
            job_seconds,
            commit_group_jobs,
        })
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
