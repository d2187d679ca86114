//! The database pool's gauges, read from the pool at each scrape: connections in use and
//! idle, the pool's size limit, and tasks waiting for a connection.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, IntGaugeVec, Opts};

use crate::db::DbPool;

pub struct PoolGauges {
    pool: DbPool,
    connections: IntGaugeVec,
    max: IntGauge,
    waiting: IntGauge,
}

impl PoolGauges {
    pub fn new(pool: DbPool) -> Result<Self, prometheus::Error> {
        Ok(PoolGauges {
            pool,
            connections: IntGaugeVec::new(
                Opts::new(
                    "photoq_db_pool_connections",
                    "PostgreSQL connections of this process's pool, by state (in_use, idle)",
                ),
                &["state"],
            )?,
            max: IntGauge::new(
                "photoq_db_pool_max_connections",
                "The most connections this process's pool opens",
            )?,
            waiting: IntGauge::new(
                "photoq_db_pool_waiting_tasks",
                "Tasks waiting for a connection from this process's pool",
            )?,
        })
    }

    fn parts(&self) -> [&dyn Collector; 3] {
        [&self.connections, &self.max, &self.waiting]
    }
}

impl Collector for PoolGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.pool.status();
        let idle = status.available as i64;
        self.connections
            .with_label_values(&["in_use"])
            .set(status.size as i64 - idle);
        self.connections.with_label_values(&["idle"]).set(idle);
        self.max.set(status.max_size as i64);
        self.waiting.set(status.waiting as i64);
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}
