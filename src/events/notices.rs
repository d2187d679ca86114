//! A Redis pub/sub channel that only ever says "something new": a counter bumped on every
//! notice, and whether the subscription is up (while it is not, whoever waits on it polls).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;

/// Wait before subscribing to Redis again after losing it.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// Cheap to clone.
#[derive(Clone)]
pub struct Notices {
    /// Bumped on every notice, and when the subscription (re)starts.
    wake: Arc<watch::Sender<u64>>,
    up: Arc<AtomicBool>,
}

impl Notices {
    /// Subscribes to `channel` (again whenever Redis comes back) until `shutdown`.
    pub fn listen(queue: Queue, channel: String, shutdown: CancellationToken) -> Self {
        let notices = Notices {
            wake: Arc::new(watch::Sender::new(0)),
            up: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(notices.clone().run(queue, channel, shutdown));
        notices
    }

    /// A receiver that changes on every notice.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// True while Redis tells this process about news (else it must poll).
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn run(self, queue: Queue, channel: String, shutdown: CancellationToken) {
        loop {
            match queue.pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        self.up.store(true, Ordering::Relaxed);
                        // Anything that happened while unsubscribed is picked up now.
                        self.wake.send_modify(|n| *n += 1);
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                msg = messages.next() => match msg {
                                    Some(_) => self.wake.send_modify(|n| *n += 1),
                                    None => break,
                                },
                            }
                        }
                        tracing::warn!(%channel, "redis pub/sub lost; polling until it is back");
                    }
                    Err(e) => tracing::debug!(error = %e, %channel, "subscribing failed"),
                },
                Err(e) => tracing::debug!(error = %e, "redis pub/sub unavailable"),
            }
            self.up.store(false, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESUBSCRIBE) => {}
            }
        }
    }
}
