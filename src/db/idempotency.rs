//! Stored first answers to uploads sent with an `Idempotency-Key`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::idempotency_keys;
use super::DbError;

/// Name of the primary key, which a concurrent duplicate request violates.
pub const CONSTRAINT: &str = "idempotency_keys_pkey";

/// The answer first given to `owner` for `key`, if any.
pub async fn find(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    key: &str,
) -> Result<Option<serde_json::Value>, DbError> {
    Ok(idempotency_keys::table
        .filter(idempotency_keys::owner_id.eq(owner))
        .filter(idempotency_keys::key.eq(key))
        .select(idempotency_keys::response)
        .first(conn)
        .await
        .optional()?)
}

/// Records the answer; part of the upload's transaction.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    key: &str,
    batch_id: Uuid,
    response: &serde_json::Value,
) -> Result<(), DbError> {
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::owner_id.eq(owner),
            idempotency_keys::key.eq(key),
            idempotency_keys::batch_id.eq(batch_id),
            idempotency_keys::response.eq(response),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
