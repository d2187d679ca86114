//! Rows as they are stored. API shapes live in `api::models`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::schema::{api_keys, batches, owners, photo_attempts, photos, variants};

pub use crate::state::{AttemptOutcome, PhotoState};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub key_hash: String,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Whose data the key reaches.
    pub owner_id: Uuid,
    /// What the key may do (`auth::Scope`, stored by name).
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = owners, check_for_backend(diesel::pg::Pg))]
pub struct Owner {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Quotas of this owner; `None`: the configured default.
    pub photos_per_day: Option<i64>,
    pub bytes_stored: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = batches, check_for_backend(diesel::pg::Pg))]
pub struct Batch {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = photos, check_for_backend(diesel::pg::Pg))]
pub struct Photo {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub owner_id: Uuid,
    pub state: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub filename: Option<String>,
    /// Unknown until a photo from a URL is downloaded.
    pub content_type: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub original_key: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub exif: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub entry_id: Option<String>,
    pub published_at: Option<DateTime<Utc>>,
    pub attempt_id: Option<i64>,
    /// Where a photo of an import is downloaded from.
    pub source_url: Option<String>,
    /// Machine-readable reason of the last failure.
    pub error_code: Option<String>,
    /// The trace every attempt at the photo continues (`crate::telemetry`).
    pub trace_parent: Option<String>,
    /// A ThumbHash of the processed photo, base64.
    pub thumbhash: Option<String>,
    /// The variant configuration a completed photo's variants were made with.
    pub variant_fingerprint: Option<String>,
    /// The photo whose results this one reused (same bytes, same configuration).
    pub reused_from: Option<Uuid>,
    /// When retention removed the original's bytes (the variants stay).
    pub original_removed_at: Option<DateTime<Utc>>,
}

impl Photo {
    pub fn state(&self) -> Option<PhotoState> {
        PhotoState::parse(&self.state)
    }
}

/// A photo as the upload handler records it, before any work is done.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = photos, check_for_backend(diesel::pg::Pg))]
pub struct NewPhoto {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub owner_id: Uuid,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub original_key: String,
    pub source_url: Option<String>,
    /// The W3C traceparent of the span that accepted it (`crate::telemetry::accepted`).
    pub trace_parent: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = photo_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub id: i64,
    pub photo_id: Uuid,
    pub attempt: i32,
    pub worker: String,
    pub outcome: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, PartialEq, Eq)]
#[diesel(table_name = variants, check_for_backend(diesel::pg::Pg))]
pub struct Variant {
    pub photo_id: Uuid,
    pub name: String,
    pub storage_key: String,
    pub content_type: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub etag: String,
}
