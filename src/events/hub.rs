//! One per API process: the Redis pub/sub listener and the per-owner feeds.
//!
//! A feed exists while somebody follows its owner. It reads the owner's new events from the
//! log when Redis says events were appended (or, while Redis cannot say, every
//! `events.fallback_poll_ms`; and every [`SAFETY_POLL`] in any case), and broadcasts each
//! once to its followers. So 2,000 followers of one owner cost one query per notice, not
//! 2,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::notices::Notices;
use super::{Event, Published};
use crate::config::EventsConfig;
use crate::db::{self, DbPool};
use crate::queue::Queue;

/// Events a follower may fall behind its feed before it reads the log instead (a pointer
/// each: a burst of a few thousand events, one statement's, fits).
const FEED_BUFFER: usize = 8192;
/// Events a feed reads per query.
pub(super) const PAGE: i64 = 500;
/// A feed reads the log this often even while Redis notices arrive (a notice can be lost
/// between a publisher and Redis).
const SAFETY_POLL: Duration = Duration::from_secs(5);

/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DbPool,
    config: EventsConfig,
    feeds: Mutex<HashMap<Uuid, broadcast::Sender<Arc<Published>>>>,
    /// "Events appended" notices from the sequencer.
    notices: Notices,
    shutdown: CancellationToken,
}

impl Hub {
    /// Starts the Redis listener; feeds start with their first follower.
    pub fn start(
        pool: DbPool,
        queue: Queue,
        config: EventsConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let notices = Notices::listen(
            queue.clone(),
            queue.events_channel().to_owned(),
            shutdown.clone(),
        );
        Hub {
            inner: Arc::new(Inner {
                pool,
                config,
                feeds: Mutex::new(HashMap::new()),
                notices,
                shutdown,
            }),
        }
    }

    pub(super) fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    pub(super) fn stopping(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Resolves when the process begins to shut down.
    pub async fn stopped(&self) {
        self.inner.shutdown.cancelled().await
    }

    pub fn config(&self) -> &EventsConfig {
        &self.inner.config
    }

    /// True while Redis pub/sub tells this process about new events (else it polls).
    pub fn notified(&self) -> bool {
        self.inner.notices.up()
    }

    /// Owners with a feed in this process now.
    pub fn feeds(&self) -> usize {
        self.inner.feeds.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// A receiver of `owner`'s new events, starting the owner's feed if needed.
    pub(super) fn subscribe(&self, owner: Uuid) -> broadcast::Receiver<Arc<Published>> {
        let mut feeds = match self.inner.feeds.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = feeds.get(&owner) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(FEED_BUFFER);
        feeds.insert(owner, tx.clone());
        tokio::spawn(self.clone().feed(owner, tx));
        rx
    }

    /// `owner`'s feed: reads new events from the log and broadcasts them, until nobody
    /// follows (or shutdown).
    async fn feed(self, owner: Uuid, tx: broadcast::Sender<Arc<Published>>) {
        let fallback = Duration::from_millis(self.inner.config.fallback_poll_ms);
        let mut wake = self.inner.notices.subscribe();
        let mut last: Option<i64> = None;
        loop {
            if tx.receiver_count() == 0 {
                let mut feeds = match self.inner.feeds.lock() {
                    Ok(f) => f,
                    Err(poisoned) => poisoned.into_inner(),
                };
                // Followers subscribe under this lock: none can arrive in between.
                if tx.receiver_count() == 0 {
                    feeds.remove(&owner);
                    return;
                }
            }
            match self.read(owner, &mut last, &tx).await {
                Ok(()) => {}
                Err(e) => tracing::debug!(error = %e, %owner, "reading the event log failed"),
            }
            let poll = if self.notified() {
                SAFETY_POLL
            } else {
                fallback
            };
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => {
                    if let Ok(mut feeds) = self.inner.feeds.lock() {
                        feeds.remove(&owner);
                    }
                    return;
                }
                _ = wake.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Broadcasts the events after `last` (from the head at the first call).
    async fn read(
        &self,
        owner: Uuid,
        last: &mut Option<i64>,
        tx: &broadcast::Sender<Arc<Published>>,
    ) -> Result<(), db::DbError> {
        let mut conn = db::conn(&self.inner.pool).await?;
        let Some(mut after) = *last else {
            *last = Some(db::events::head(&mut conn, owner).await?.last_id);
            return Ok(());
        };
        loop {
            let page = db::events::after(&mut conn, owner, None, after, PAGE).await?;
            let full = page.events.len() as i64 >= PAGE;
            after = page.covered(PAGE);
            for e in page.events {
                let _ = tx.send(Published::new(Event::from(e)));
            }
            *last = Some(after);
            if !full {
                return Ok(());
            }
        }
    }
}
