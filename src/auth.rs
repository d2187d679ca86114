//! API keys: how they look, how they are stored (SHA-256 only), and their management.

use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::{self, models::ApiKey, DbError, DbPool};

/// Every key starts with this, so a leaked key is easy to recognise.
pub const KEY_PREFIX: &str = "pq_";
/// Random bytes in a key.
const KEY_BYTES: usize = 32;
/// Characters of a key kept in clear for listing (prefix included).
const DISPLAY_CHARS: usize = 11;

pub fn generate_key() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Creates a key; returns its row and the key itself, which is shown once and never stored.
/// What a key may see beyond its own photos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Its own photos, batches, imports and events only.
    Client,
    /// Also queue-wide aggregates: workers, lag, counts, recent error codes.
    Operator,
}

/// Who an active key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub owner: Uuid,
    pub operator: bool,
}

pub async fn create_key(
    pool: &DbPool,
    name: &str,
    role: KeyRole,
) -> Result<(ApiKey, String), DbError> {
    let key = generate_key();
    let row = ApiKey {
        id: Uuid::now_v7(),
        name: name.to_owned(),
        key_hash: hash_key(&key),
        key_prefix: key.chars().take(DISPLAY_CHARS).collect(),
        created_at: Utc::now(),
        revoked_at: None,
        operator: role == KeyRole::Operator,
    };
    let mut conn = db::conn(pool).await?;
    db::keys::insert(&mut conn, &row).await?;
    Ok((row, key))
}

/// The owner of an active key.
pub async fn authenticate(pool: &DbPool, key: &str) -> Result<Option<KeyOwner>, DbError> {
    if !key.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    let mut conn = db::conn(pool).await?;
    Ok(db::keys::find_active(&mut conn, &hash_key(key))
        .await?
        .map(|k| KeyOwner {
            owner: k.id,
            operator: k.operator,
        }))
}

/// Every stream token starts with this.
pub const STREAM_TOKEN_PREFIX: &str = "pqs_";

/// Issues a stream token for `key`: it opens `owner`'s event streams (SSE, WebSocket) until
/// it expires, and nothing else. Returns the token (shown once, stored hashed) and its
/// expiry.
pub async fn issue_stream_token(
    pool: &DbPool,
    key: Uuid,
    ttl: std::time::Duration,
) -> Result<(String, chrono::DateTime<Utc>), DbError> {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{STREAM_TOKEN_PREFIX}{}", hex::encode(bytes));
    let expires_at = Utc::now()
        + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::minutes(5));
    let mut conn = db::conn(pool).await?;
    db::events::insert_token(&mut conn, &hash_key(&token), key, expires_at).await?;
    Ok((token, expires_at))
}

/// The owner whose streams an unexpired stream token opens.
pub async fn stream_token_owner(pool: &DbPool, token: &str) -> Result<Option<Uuid>, DbError> {
    if !token.starts_with(STREAM_TOKEN_PREFIX) {
        return Ok(None);
    }
    let mut conn = db::conn(pool).await?;
    db::events::token_owner(&mut conn, &hash_key(token)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 2 * KEY_BYTES);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(hash_key(&a).len(), 64);
    }
}
