//! Group commit of finished jobs: the jobs that finish while one commit is under way are
//! recorded together by the next (one transaction, one XACK), so the bookkeeping cost per
//! job falls as load rises. Acknowledgement still follows the commit.

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use std::sync::Arc;

use crate::db::{self, attempts::AttemptRef, jobs::Completion, DbPool};
use crate::metrics::Metrics;
use crate::queue::{Consumer, Queue};

/// A job whose results are stored and wait to be recorded.
pub struct Finished {
    pub entry: String,
    pub photo_id: Uuid,
    pub done: Completion,
    pub attempt: AttemptRef,
}

/// Why a commit did not happen. Cloned to every job of the group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("database unreachable: {0}")]
    Unreachable(String),
    #[error("recording the results failed: {0}")]
    Failed(String),
}

/// What became of a finished job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Its results are recorded and its entry acknowledged.
    Recorded,
    /// Its attempt had been taken over or reclaimed: nothing recorded.
    Stale,
}

type Request = (Finished, oneshot::Sender<Result<Committed, CommitError>>);

/// The handle jobs send their results through; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committing task. It ends when every handle is dropped.
    pub fn spawn(
        pool: DbPool,
        queue: Queue,
        consumer: Arc<Consumer>,
        metrics: Metrics,
        max_group: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_group.max(1));
        let sink = Sink {
            pool,
            queue,
            consumer,
        };
        tokio::spawn(run(sink, metrics, rx, max_group.max(1)));
        Committer { tx }
    }

    /// Records a finished job (photo `completed`, variants, attempt closed) if its attempt
    /// still holds the photo, and acknowledges its entry; returns once the commit is durable.
    pub async fn commit(&self, finished: Finished) -> Result<Committed, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((finished, reply))
            .await
            .map_err(|_| CommitError::Failed("committer stopped".into()))?;
        answer
            .await
            .map_err(|_| CommitError::Failed("committer stopped".into()))?
    }
}

/// Where the committer records and acknowledges.
struct Sink {
    pool: DbPool,
    queue: Queue,
    consumer: Arc<Consumer>,
}

async fn run(sink: Sink, metrics: Metrics, mut rx: mpsc::Receiver<Request>, max_group: usize) {
    let mut group = Vec::with_capacity(max_group);
    while rx.recv_many(&mut group, max_group).await > 0 {
        metrics.commit_group_jobs.observe(group.len() as f64);
        match commit_group(&sink, &group).await {
            Ok(recorded) => {
                for (finished, reply) in group.drain(..) {
                    let done = if recorded.contains(&finished.photo_id) {
                        Committed::Recorded
                    } else {
                        Committed::Stale
                    };
                    let _ = reply.send(Ok(done));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = group.len(), "group commit failed");
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Commits the group; returns the photos recorded (the others' attempts were stale).
async fn commit_group(
    sink: &Sink,
    group: &[Request],
) -> Result<std::collections::HashSet<Uuid>, CommitError> {
    let db_error = |e: db::DbError| {
        if e.is_transient() {
            CommitError::Unreachable(e.to_string())
        } else {
            CommitError::Failed(e.to_string())
        }
    };
    let done: Vec<_> = group
        .iter()
        .map(|(f, _)| (f.photo_id, &f.done, f.attempt))
        .collect();
    let mut conn = db::conn(&sink.pool).await.map_err(db_error)?;
    let recorded: std::collections::HashSet<Uuid> = db::jobs::complete_many(&mut conn, &done)
        .await
        .map_err(db_error)?
        .into_iter()
        .collect();
    drop(conn);
    sink.queue.changes_written();
    let (acked, stale): (Vec<&Finished>, Vec<&Finished>) = group
        .iter()
        .map(|(f, _)| f)
        .partition(|f| recorded.contains(&f.photo_id));
    let acked: Vec<&str> = acked.iter().map(|f| f.entry.as_str()).collect();
    if let Err(e) = sink.queue.ack_many(&acked).await {
        // The results are recorded; the entries are delivered again later and acknowledged
        // then without work (their photos are final).
        tracing::warn!(error = %e, jobs = acked.len(), "ack after commit failed");
    }
    if !stale.is_empty() {
        tracing::warn!(
            jobs = stale.len(),
            "attempts superseded while they ran; results dropped"
        );
        let entries: Vec<&str> = stale.iter().map(|f| f.entry.as_str()).collect();
        if let Err(e) = sink.consumer.release(&entries).await {
            tracing::warn!(error = %e, "release of stale entries failed");
        }
    }
    Ok(recorded)
}
