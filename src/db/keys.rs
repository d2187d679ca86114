//! API keys and their owners: insert, look up by hash, list, revoke.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::models::{ApiKey, Owner};
use super::schema::{api_keys, owners};
use super::DbError;

pub async fn insert(conn: &mut AsyncPgConnection, key: &ApiKey) -> Result<(), DbError> {
    diesel::insert_into(api_keys::table)
        .values(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// A new owner and its first key, together.
pub async fn insert_with_owner(
    conn: &mut AsyncPgConnection,
    owner: &Owner,
    key: &ApiKey,
) -> Result<(), DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        diesel::insert_into(owners::table)
            .values(owner)
            .execute(conn)
            .await?;
        insert(conn, key).await
    })
    .await
}

pub async fn owner_exists(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<bool, DbError> {
    Ok(diesel::select(diesel::dsl::exists(
        owners::table.filter(owners::id.eq(owner)),
    ))
    .get_result(conn)
    .await?)
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

/// Every key, or `owner`'s only, oldest first (revoked ones too).
pub async fn list(
    conn: &mut AsyncPgConnection,
    owner: Option<Uuid>,
) -> Result<Vec<ApiKey>, DbError> {
    let mut query = api_keys::table
        .order((api_keys::created_at.asc(), api_keys::id.asc()))
        .select(ApiKey::as_select())
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(api_keys::owner_id.eq(owner));
    }
    Ok(query.load(conn).await?)
}

/// Revokes the key with this id (of `owner`, when given); returns false when there is no
/// such active key.
pub async fn revoke(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<bool, DbError> {
    let mut query = diesel::update(api_keys::table)
        .filter(api_keys::id.eq(id))
        .filter(api_keys::revoked_at.is_null())
        .into_boxed();
    if let Some(owner) = owner {
        query = query.filter(api_keys::owner_id.eq(owner));
    }
    let n = query
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
