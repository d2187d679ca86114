//! The right to erasure: `photoq purge --key ID` removes everything of the key's owner —
//! every key of it, its photos, batches, imports, products, webhooks, events and
//! idempotency records in PostgreSQL, its objects in storage, its entries, retries and
//! request bucket in Redis — and says what it removed.
//!
//! In that order, each step repeatable: the owner is retired first (keys revoked, webhooks
//! removed, photos tombstoned, so nothing new is written for it), its objects and queue
//! entries removed, and its rows deleted last. A purge that stops half-way is run again
//! with the same key and finishes; a worker that was processing one of the photos finds its
//! result stale and removes what it stored.

use serde::Serialize;
use uuid::Uuid;

use crate::db::erasure::Erased;
use crate::db::{self, DbError, DbPool};
use crate::queue::{Queue, QueueError};
use crate::storage::{Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a purge removed.
#[derive(Debug, Clone, Serialize)]
pub struct Purged {
    pub owner: Uuid,
    /// Rows, by kind.
    #[serde(flatten)]
    pub rows: Erased,
    /// Originals and variants recorded for the photos, removed from storage.
    pub objects: i64,
    /// Stream entries and scheduled retries removed from Redis.
    pub queue_entries: u64,
}

/// Erases the owner of key `key`; `None` when there is no such key.
pub async fn purge(
    pool: &DbPool,
    queue: &Queue,
    storage: &Storage,
    key: Uuid,
) -> Result<Option<Purged>, PurgeError> {
    let mut conn = db::conn(pool).await?;
    let Some(owner) = db::erasure::owner_of_key(&mut conn, key).await? else {
        return Ok(None);
    };
    let stored = db::erasure::retire(&mut conn, owner).await?;
    drop(conn);
    queue.changes_written();
    storage.remove_photos(&stored.photos).await?;
    let queue_entries = queue.forget(&stored.photos, owner).await?;
    let mut conn = db::conn(pool).await?;
    let rows = db::erasure::erase(&mut conn, owner).await?;
    tracing::info!(%owner, ?rows, objects = stored.objects, queue_entries, "owner purged");
    Ok(Some(Purged {
        owner,
        rows,
        objects: stored.objects,
        queue_entries,
    }))
}
