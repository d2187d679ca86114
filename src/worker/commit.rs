//! Group commit of finished jobs: the jobs that finish while one commit is under way are
//! recorded together by the next (one transaction, one XACK), so the bookkeeping cost per
//! job falls as load rises. Acknowledgement still follows the commit.

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::db::{self, attempts::AttemptRef, photos::Completion, DbPool};
use crate::metrics::Metrics;
use crate::queue::Queue;

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

type Request = (Finished, oneshot::Sender<Result<(), CommitError>>);

/// The handle jobs send their results through; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committing task. It ends when every handle is dropped.
    pub fn spawn(pool: DbPool, queue: Queue, metrics: Metrics, max_group: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_group.max(1));
        tokio::spawn(run(pool, queue, metrics, rx, max_group.max(1)));
        Committer { tx }
    }

    /// Records a finished job (photo `completed`, variants, attempt closed) and acknowledges
    /// its entry; returns once the commit is durable.
    pub async fn commit(&self, finished: Finished) -> Result<(), CommitError> {
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

async fn run(
    pool: DbPool,
    queue: Queue,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Request>,
    max_group: usize,
) {
    let mut group = Vec::with_capacity(max_group);
    while rx.recv_many(&mut group, max_group).await > 0 {
        metrics.commit_group_jobs.observe(group.len() as f64);
        let result = commit_group(&pool, &queue, &group).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, jobs = group.len(), "group commit failed");
        }
        for (_, reply) in group.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

async fn commit_group(pool: &DbPool, queue: &Queue, group: &[Request]) -> Result<(), CommitError> {
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
    let mut conn = db::conn(pool).await.map_err(db_error)?;
    db::photos::complete_many(&mut conn, &done)
        .await
        .map_err(db_error)?;
    drop(conn);
    let entries: Vec<&str> = group.iter().map(|(f, _)| f.entry.as_str()).collect();
    if let Err(e) = queue.ack_many(&entries).await {
        // The results are recorded; the entries are delivered again later and acknowledged
        // then without work (their photos are final).
        tracing::warn!(error = %e, jobs = entries.len(), "ack after commit failed");
    }
    Ok(())
}
