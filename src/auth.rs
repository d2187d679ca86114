//! API keys: how they look, how they are stored (SHA-256 only), what they may do (scopes),
//! whose data they reach (their owner), and their management.

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

/// One thing a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read its owner's photos, variants, originals, batches, imports, events and usage.
    Read,
    /// Add work: upload photos, import products, retry and redrive its owner's photos.
    Upload,
    /// Manage its owner's data: delete, cancel, reprocess, webhooks, keys.
    Admin,
    /// See queue-wide aggregates (workers, lag, counts, recent error codes): never another
    /// owner's photos.
    Operator,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Upload, Scope::Admin, Scope::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Upload => "upload",
            Scope::Admin => "admin",
            Scope::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
            .ok_or_else(|| format!("unknown scope {s:?} (read, upload, admin, operator)"))
    }
}

/// The scopes of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// What a key is given unless told otherwise: everything with its owner's data.
    pub const CLIENT: Scopes = Scopes(0b0111);
    /// A client key that also sees the queue as a whole.
    pub const OPERATOR: Scopes = Scopes(0b1111);

    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Scopes {
        Scopes(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// The scopes named in a key's row; unknown names (none are stored: a check
    /// constraint) give nothing.
    pub fn from_names(names: &[String]) -> Scopes {
        Scopes::of(names.iter().filter_map(|n| Scope::parse(n)))
    }

    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether every scope of `other` is one of these.
    pub fn covers(self, other: Scopes) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.has(*s))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

/// An active key: which it is, whose data it reaches and what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyOwner {
    pub key: Uuid,
    pub owner: Uuid,
    pub scopes: Scopes,
}

/// Creates a key with `scopes` for a new owner named like the key; returns its row and the
/// key itself, which is shown once and never stored.
pub async fn create_key(
    pool: &DbPool,
    name: &str,
    scopes: Scopes,
) -> Result<(ApiKey, String), DbError> {
    create_key_for(pool, None, name, scopes).await
}

/// Creates a key with `scopes` for `owner` (a key rotation: the new key reaches the same
/// data), which must exist, or for a new owner named like the key.
pub async fn create_key_for(
    pool: &DbPool,
    owner: Option<Uuid>,
    name: &str,
    scopes: Scopes,
) -> Result<(ApiKey, String), DbError> {
    let key = generate_key();
    let id = Uuid::now_v7();
    let now = Utc::now();
    let row = ApiKey {
        id,
        name: name.to_owned(),
        key_hash: hash_key(&key),
        key_prefix: key.chars().take(DISPLAY_CHARS).collect(),
        created_at: now,
        revoked_at: None,
        // A new owner takes the id of its first key, as every owner made before owners
        // stood apart from keys did.
        owner_id: owner.unwrap_or(id),
        scopes: scopes.names(),
    };
    let mut conn = db::conn(pool).await?;
    match owner {
        // A foreign-key violation when there is no such owner.
        Some(_) => db::keys::insert(&mut conn, &row).await?,
        None => {
            let owner = db::models::Owner {
                id,
                name: name.to_owned(),
                created_at: now,
                photos_per_day: None,
                bytes_stored: None,
            };
            db::keys::insert_with_owner(&mut conn, &owner, &row).await?;
        }
    }
    Ok((row, key))
}

/// The active key `key`, if it is one.
pub async fn authenticate(pool: &DbPool, key: &str) -> Result<Option<KeyOwner>, DbError> {
    if !key.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    let mut conn = db::conn(pool).await?;
    Ok(db::keys::find_active(&mut conn, &hash_key(key))
        .await?
        .map(|k| KeyOwner {
            key: k.id,
            owner: k.owner_id,
            scopes: Scopes::from_names(&k.scopes),
        }))
}

/// Every stream token starts with this.
pub const STREAM_TOKEN_PREFIX: &str = "pqs_";

/// Issues a stream token for `key`: it opens its owner's event streams (SSE, WebSocket) until
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

/// The key an unexpired stream token was issued to, and the owner whose streams it opens.
pub async fn stream_token_owner(
    pool: &DbPool,
    token: &str,
) -> Result<Option<(Uuid, Uuid)>, DbError> {
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

    #[test]
    fn scopes_round_trip_and_cover() {
        let names = Scopes::CLIENT.names();
        assert_eq!(names, ["read", "upload", "admin"]);
        assert_eq!(Scopes::from_names(&names), Scopes::CLIENT);
        assert!(Scopes::OPERATOR.has(Scope::Operator) && !Scopes::CLIENT.has(Scope::Operator));
        let read = Scopes::of([Scope::Read]);
        assert!(Scopes::CLIENT.covers(read) && !read.covers(Scopes::CLIENT));
        assert!(read.covers(Scopes::default()));
        assert_eq!("upload".parse::<Scope>(), Ok(Scope::Upload));
        assert!("root".parse::<Scope>().is_err());
    }
}
