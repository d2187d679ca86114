//! API keys: insert, look up by hash, list, revoke.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::ApiKey;
use super::schema::api_keys;
use super::DbError;

pub async fn insert(conn: &mut AsyncPgConnection, key: &ApiKey) -> Result<(), DbError> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// The key with this hash, unless it was revoked.
pub async fn find_active(
    conn: &mut AsyncPgConnection,
    key_hash: &str,
) -> Result<Option<ApiKey>, DbError> {
    Ok(api_keys::table
        .filter(api_keys::key_hash.eq(key_hash))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<ApiKey>, DbError> {
    Ok(api_keys::table
        .order(api_keys::created_at.asc())
        .select(ApiKey::as_select())
        .load(conn)
        .await?)
}

/// Revokes the key with this id; returns false when there is no such active key.
pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, DbError> {
    let n = diesel::update(api_keys::table)
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .set(api_keys::revoked_at.eq(Utc::now()))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// The active key with this id.
pub async fn get(conn: &mut AsyncPgConnection, id: Uuid) -> Result<Option<ApiKey>, DbError> {
    Ok(api_keys::table
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKey::as_select())
        .first(conn)
        .await
        .optional()?)
}
