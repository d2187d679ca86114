//! Erasing an owner (`photoq purge`): first retired (keys revoked, webhooks removed, every
//! photo a tombstone, so nothing new is written for it), then, once its objects and queue
//! entries are gone, every row of it deleted in one transaction.

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use uuid::Uuid;

use super::schema::{
    api_keys, batches, idempotency_keys, imports, owners, photos, products, usage_changes,
    variants, webhook_deliveries, webhooks,
};
use super::DbError;

/// The advisory lock a sequencer pass takes (`photoq_sequence_events`): held by the
/// erasing transaction, no pass appends the owner's events while they are deleted.
const SEQUENCER_LOCK: i64 = 7_019_823_456_781_001;

/// The owner of key `key` (revoked or not).
pub async fn owner_of_key(
    conn: &mut AsyncPgConnection,
    key: Uuid,
) -> Result<Option<Uuid>, DbError> {
    Ok(api_keys::table
        .find(key)
        .select(api_keys::owner_id)
        .first(conn)
        .await
        .optional()?)
}

/// What an owner had stored, counted before it is erased.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stored {
    /// Every photo, tombstones included.
    pub photos: Vec<Uuid>,
    /// Originals and variants recorded.
    pub objects: i64,
}

/// Retires `owner`: its keys revoked, its webhooks removed, every photo of it a tombstone
/// (a worker's result for one comes too late and is dropped). Returns what it had stored.
pub async fn retire(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<Stored, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        diesel::update(api_keys::table)
            .filter(api_keys::owner_id.eq(owner))
            .filter(api_keys::revoked_at.is_null())
            .set(api_keys::revoked_at.eq(now))
            .execute(conn)
            .await?;
        diesel::update(webhooks::table)
            .filter(webhooks::owner_id.eq(owner))
            .filter(webhooks::deleted_at.is_null())
            .set(webhooks::deleted_at.eq(now))
            .execute(conn)
            .await?;
        let photos: Vec<Uuid> = photos::table
            .filter(photos::owner_id.eq(owner))
            .select(photos::id)
            .load(conn)
            .await?;
        let originals: i64 = photos::table
            .filter(photos::owner_id.eq(owner))
            .filter(photos::content_type.is_not_null())
            .filter(photos::original_removed_at.is_null())
            .count()
            .get_result(conn)
            .await?;
        let variants: i64 = variants::table
            .inner_join(photos::table)
            .filter(photos::owner_id.eq(owner))
            .count()
            .get_result(conn)
            .await?;
        super::lifecycle::tombstone(conn, &photos, now).await?;
        Ok(Stored {
            photos,
            objects: originals + variants,
        })
    })
    .await
}

/// The rows an erasure deleted, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub keys: usize,
    pub photos: usize,
    /// Batches, imports included.
    pub batches: usize,
    pub imports: usize,
    pub products: usize,
    pub webhooks: usize,
    pub webhook_deliveries: usize,
    pub idempotency_records: usize,
    /// Events of the log and changes not yet in it.
    pub events: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Deletes every row of `owner`, the owner itself last, in one transaction. Its objects
/// and queue entries must be gone already (see `crate::erasure`).
pub async fn erase(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<Erased, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(SEQUENCER_LOCK)
            .execute(conn)
            .await?;
        let events: Count = diesel::sql_query(
            "WITH staged AS (DELETE FROM event_changes WHERE owner_id = $1 \
                             RETURNING cardinality(events) AS n), \
                  logged AS (DELETE FROM event_chunks WHERE owner_id = $1 \
                             RETURNING cardinality(events) AS n), \
                  counter AS (DELETE FROM event_counters WHERE owner_id = $1 RETURNING 1) \
             SELECT (coalesce((SELECT sum(n) FROM staged), 0) \
                     + coalesce((SELECT sum(n) FROM logged), 0))::int8 AS n",
        )
        .bind::<SqlUuid, _>(owner)
        .get_result(conn)
        .await?;
        let mut erased = Erased {
            events: events.n,
            ..Erased::default()
        };
        erased.webhook_deliveries = diesel::delete(
            webhook_deliveries::table.filter(webhook_deliveries::owner_id.eq(owner)),
        )
        .execute(conn)
        .await?;
        erased.webhooks = diesel::delete(webhooks::table.filter(webhooks::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        // Their images and import memberships go with them.
        erased.products = diesel::delete(products::table.filter(products::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        erased.idempotency_records =
            diesel::delete(idempotency_keys::table.filter(idempotency_keys::owner_id.eq(owner)))
                .execute(conn)
                .await?;
        // Their variants and attempts go with them.
        erased.photos = diesel::delete(photos::table.filter(photos::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        erased.imports = diesel::delete(imports::table.filter(imports::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        erased.batches = diesel::delete(batches::table.filter(batches::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        // Their stream tokens go with them.
        erased.keys = diesel::delete(api_keys::table.filter(api_keys::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        diesel::delete(owners::table.find(owner))
            .execute(conn)
            .await?;
        // After the owner's row, as `db::usage` takes them: the row first, then its changes.
        diesel::delete(usage_changes::table.filter(usage_changes::owner_id.eq(owner)))
            .execute(conn)
            .await?;
        Ok(erased)
    })
    .await
}
