//! A follower: one client's position in one owner's events (all of them, or one batch's),
//! shared by SSE, WebSocket and long-poll.
//!
//! It reads the log until it has caught up, then takes events from the owner's feed. An
//! owner's ids have no gaps, so a follower knows exactly when the feed skipped something
//! (it subscribed late, or fell more than the feed's buffer behind): it reads the log
//! again from where it was. Every event reaches it once, in id order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use uuid::Uuid;

use super::hub::{Hub, PAGE};
use super::{Event, Published};
use crate::db::{self, DbError};

/// What [`Follower::next`] found.
#[derive(Debug)]
pub enum Next {
    /// New events, in id order.
    Events(Vec<Arc<Published>>),
    /// Caught up and nothing new before the deadline.
    Idle,
    /// The process is shutting down: end the stream (the client resumes elsewhere).
    Closed,
}

pub struct Follower {
    hub: Hub,
    owner: Uuid,
    batch: Option<Uuid>,
    rx: broadcast::Receiver<Arc<Published>>,
    /// Every event of the owner up to this id has been handed out, or did not match.
    seen: i64,
    /// Reading the feed; false while the log must be read first.
    live: bool,
}

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this event id (the client's `Last-Event-ID` or `after`).
    After(i64),
    /// With what happens from now on.
    Now,
    /// With the first event still in the log (a batch's stream shows the whole batch).
    Beginning,
}

impl Start {
    /// Where a client starts that asked to resume `after` an id (or did not), following
    /// one `batch` or everything: after that id, else a batch from its beginning and
    /// everything from now.
    pub fn of(after: Option<i64>, batch: Option<Uuid>) -> Self {
        match (after, batch) {
            (Some(id), _) => Start::After(id),
            (None, Some(_)) => Start::Beginning,
            (None, None) => Start::Now,
        }
    }
}

impl Follower {
    /// Starts following `owner`'s events (one batch's, with `batch`). Answers, beside the
    /// follower, the id of a `reset` to send first when the client asked to resume from an
    /// id the log no longer holds (pruned, or never handed out): the follower then goes on
    /// from the newest event.
    pub async fn open(
        hub: &Hub,
        owner: Uuid,
        batch: Option<Uuid>,
        start: Start,
    ) -> Result<(Follower, Option<i64>), DbError> {
        // Subscribe first: whatever the feed sends from here on is either in the log read
        // below or arrives on `rx`.
        let rx = hub.subscribe(owner);
        let mut conn = db::conn(hub.pool()).await?;
        let head = db::events::head(&mut conn, owner).await?;
        let (seen, reset) = match start {
            Start::Now => (head.last_id, None),
            Start::Beginning => (0, None),
            Start::After(id) if id < head.pruned_through || id > head.last_id => {
                (head.last_id, Some(head.last_id))
            }
            Start::After(id) => (id, None),
        };
        Ok((
            Follower {
                hub: hub.clone(),
                owner,
                batch,
                rx,
                seen,
                live: false,
            },
            reset,
        ))
    }

    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Makes the next call read the log instead of waiting for the feed.
    pub fn resync(&mut self) {
        self.live = false;
    }

    /// The id to resume after: every event up to it was handed out (or did not match).
    pub fn position(&self) -> i64 {
        self.seen
    }

    /// The next events, or [`Next::Idle`] when there were none before `deadline` (also
    /// once right after catching up with the log, so a caller can check how things stand).
    pub async fn next(&mut self, deadline: Instant) -> Result<Next, DbError> {
        loop {
            if self.hub.stopping() {
                return Ok(Next::Closed);
            }
            if !self.live {
                let mut conn = db::conn(self.hub.pool()).await?;
                let page =
                    db::events::after(&mut conn, self.owner, self.batch, self.seen, PAGE).await?;
                self.seen = self.seen.max(page.covered(PAGE));
                self.live = (page.events.len() as i64) < PAGE;
                if page.events.is_empty() {
                    return Ok(Next::Idle);
                }
                return Ok(Next::Events(
                    page.events
                        .into_iter()
                        .map(|e| Published::new(Event::from(e)))
                        .collect(),
                ));
            }
            let received = tokio::select! {
                _ = self.hub.stopped() => return Ok(Next::Closed),
                r = tokio::time::timeout_at(deadline, self.rx.recv()) => match r {
                    Err(_) => return Ok(Next::Idle),
                    Ok(r) => r,
                },
            };
            let mut out = Vec::new();
            let mut pending = Some(received);
            while let Some(r) = pending.take() {
                match r {
                    Ok(e) => {
                        let id = e.event.id;
                        if id <= self.seen {
                        } else if id == self.seen + 1 {
                            self.seen = id;
                            if self.batch.is_none() || e.event.batch_id == self.batch {
                                out.push(e);
                            }
                        } else {
                            // The feed got ahead of us: read the rest from the log.
                            self.live = false;
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.live = false;
                        break;
                    }
                    Err(RecvError::Closed) => {
                        // The feed stopped (shutdown): follow from the log.
                        self.rx = self.hub.subscribe(self.owner);
                        self.live = false;
                        break;
                    }
                }
                // Take what else is already there, without waiting.
                pending = match self.rx.try_recv() {
                    Ok(e) => Some(Ok(e)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                };
            }
            if !out.is_empty() {
                return Ok(Next::Events(out));
            }
        }
    }

    /// For a batch's follower, once the batch has nothing left to do: the events it has
    /// not handed out yet (they are in the log, maybe not yet broadcast), after which the
    /// batch's story is told. None while the batch goes on, while some of its committed
    /// changes wait for the sequencer, or for a follower of all events.
    ///
    /// The sequencer keeps a batch's counts in the pass that appends its events, so once
    /// nothing of the batch is staged, the counts read next hold at least every change
    /// committed before: a batch whose photos were just recorded is not taken for one with
    /// nothing left to do.
    pub async fn batch_rest(&mut self) -> Result<Option<Vec<Arc<Published>>>, DbError> {
        let Some(batch) = self.batch else {
            return Ok(None);
        };
        let mut conn = db::conn(self.hub.pool()).await?;
        if db::events::staged(&mut conn, self.owner, batch).await? {
            return Ok(None);
        }
        let progress = db::events::batch_progress(&mut conn, self.owner, batch).await?;
        if progress.is_some_and(|p| p.unfinished > 0) {
            return Ok(None);
        }
        drop(conn);
        self.live = false;
        let mut rest = Vec::new();
        while let Next::Events(events) = self.next(Instant::now()).await? {
            rest.extend(events);
        }
        Ok(Some(rest))
    }

    /// Like [`next`](Self::next), waiting at most `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Next, DbError> {
        self.next(Instant::now() + wait).await
    }
}
