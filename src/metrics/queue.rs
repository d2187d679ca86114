//! Queue-wide gauges: each lane's entries, unacknowledged deliveries, entries not yet
//! delivered, retries scheduled, workers active; dead letters; how long the oldest job
//! waiting to start has waited; events not yet numbered. One API process at a time samples them (a lease in
//! Redis), every [`SAMPLE_EVERY`], and only that process exports them, so the series are
//! right however many nodes Prometheus scrapes (sum or max alike).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts};
use tokio_util::sync::CancellationToken;

use crate::db::{self, DbPool};
use crate::queue::Queue;
use crate::state::Lane;

/// How often the gauges are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The lease that says who samples.
const LEASE: &str = "metrics-sampler";

/// The gauges, exported only while this process's sample is fresh. Cheap to clone.
#[derive(Clone)]
pub struct QueueGauges {
    entries: IntGaugeVec,
    pending: IntGaugeVec,
    waiting: IntGaugeVec,
    scheduled: IntGaugeVec,
    consumers: IntGaugeVec,
    dead: IntGauge,
    oldest: Gauge,
    unsequenced: IntGauge,
    fresh_until: Arc<Mutex<Option<Instant>>>,
}

impl QueueGauges {
    pub fn new() -> Result<Self, prometheus::Error> {
        let lane = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["lane"]);
        Ok(QueueGauges {
            entries: lane(
                "photoq_queue_entries",
                "Stream entries waiting or delivered and not acknowledged, per lane",
            )?,
            pending: lane(
                "photoq_queue_pending_entries",
                "Entries delivered to a worker and not acknowledged, per lane",
            )?,
            waiting: lane(
                "photoq_queue_waiting_entries",
                "Entries not yet delivered to any worker (the consumer group's lag), per lane",
            )?,
            scheduled: lane(
                "photoq_queue_scheduled_retries",
                "Retries waiting for their time, per lane",
            )?,
            consumers: lane(
                "photoq_queue_active_consumers",
                "Workers that read or claimed in the last minute, per lane",
            )?,
            dead: IntGauge::new(
                "photoq_queue_dead_letters",
                "Entries in the dead-letter stream",
            )?,
            oldest: Gauge::new(
                "photoq_queue_oldest_waiting_seconds",
                "How long the oldest photo waiting to start has waited since it was due",
            )?,
            unsequenced: IntGauge::new(
                "photoq_events_unsequenced_changes",
                "Staged changes the event sequencer has not numbered yet (statements)",
            )?,
            fresh_until: Arc::new(Mutex::new(None)),
        })
    }

    fn parts(&self) -> [&dyn Collector; 8] {
        [
            &self.entries,
            &self.pending,
            &self.waiting,
            &self.scheduled,
            &self.consumers,
            &self.dead,
            &self.oldest,
            &self.unsequenced,
        ]
    }

    fn fresh(&self) -> bool {
        let until = self.fresh_until.lock().map(|u| *u).unwrap_or(None);
        until.is_some_and(|u| Instant::now() < u)
    }

    fn mark(&self, until: Option<Instant>) {
        if let Ok(mut u) = self.fresh_until.lock() {
            *u = until;
        }
    }
}

impl Collector for QueueGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.fresh() {
            return Vec::new();
        }
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// Samples the gauges while this process holds the lease, until `shutdown`.
pub async fn run(gauges: QueueGauges, queue: Queue, pool: DbPool, shutdown: CancellationToken) {
    let holder = uuid::Uuid::new_v4().to_string();
    loop {
        match queue.lease(LEASE, &holder, SAMPLE_EVERY * 3).await {
            Ok(true) => match sample(&gauges, &queue, &pool).await {
                Ok(()) => gauges.mark(Some(Instant::now() + SAMPLE_EVERY * 3)),
                Err(e) => tracing::debug!(error = %e, "sampling the queue failed"),
            },
            Ok(false) => gauges.mark(None),
            Err(e) => {
                gauges.mark(None);
                tracing::debug!(error = %e, "metrics lease unavailable");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// Reads everything first and then sets the gauges together, so that a scrape never sees
/// half of one pass and half of the one before.
async fn sample(
    gauges: &QueueGauges,
    queue: &Queue,
    pool: &DbPool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut lanes = Vec::with_capacity(Lane::ALL.len());
    for lane in Lane::ALL {
        let stats = queue.lane_stats(lane).await?;
        let active = queue
            .consumers(lane)
            .await?
            .iter()
            .filter(|c| c.active())
            .count();
        lanes.push((lane, stats, active));
    }
    let dead = queue.dead_letters().await?;
    let mut conn = db::conn(pool).await?;
    let waited = db::photos::oldest_waiting_secs(&mut conn).await?;
    let unsequenced = db::events::unsequenced(&mut conn).await?;
    drop(conn);

    for (lane, s, active) in lanes {
        let label = [lane.as_str()];
        gauges
            .entries
            .with_label_values(&label)
            .set(s.entries as i64);
        gauges
            .pending
            .with_label_values(&label)
            .set(s.pending as i64);
        gauges
            .waiting
            .with_label_values(&label)
            .set(s.waiting() as i64);
        gauges
            .scheduled
            .with_label_values(&label)
            .set(s.scheduled as i64);
        gauges
            .consumers
            .with_label_values(&label)
            .set(active as i64);
    }
    gauges.dead.set(dead as i64);
    gauges.oldest.set(waited.unwrap_or(0.0));
    gauges.unsequenced.set(unsequenced);
    Ok(())
}
