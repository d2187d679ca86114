//! `/v1/keys`: the caller's owner's keys. A new key for the same owner reaches the same
//! photos, so a key is rotated by creating its successor and revoking it; revoking a key
//! never touches its owner's data.

use actix_web::web;
use chrono::{DateTime, Utc};
use paperclip::actix::{api_v2_operation, web::Json, Apiv2Schema, CreatedJson, NoContent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::auth::{Scope, Scopes};
use crate::db::{self, models::ApiKey};

/// Longest key name.
const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label: who or what uses the key.
    pub name: String,
    /// What the key may do: `read`, `upload`, `admin`, `operator`. Absent: the scopes of
    /// the key making the request. A key cannot give a scope it lacks.
    pub scopes: Option<Vec<String>>,
}

/// A key as listed (never the key itself).
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct KeyView {
    pub id: Uuid,
    /// The owner whose data the key reaches; every key of an owner sees the same photos.
    pub owner_id: Uuid,
    pub name: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// What the key may do.
    pub scopes: Vec<String>,
    /// Has the `operator` scope: also sees queue-wide aggregates.
    pub operator: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        let scopes = Scopes::from_names(&k.scopes);
        KeyView {
            id: k.id,
            owner_id: k.owner_id,
            name: k.name,
            prefix: k.key_prefix,
            scopes: scopes.names(),
            operator: scopes.has(Scope::Operator),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A key just made: the key itself is shown only here.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct NewKey {
    /// `Authorization: Bearer <key>`. Stored only as a hash: keep it now.
    pub key: String,
    pub details: KeyView,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct KeyList {
    /// Oldest first, revoked ones too.
    pub keys: Vec<KeyView>,
}

/// Create a key
///
/// A new key for the caller's owner: it sees the same photos, batches and events. With
/// fewer scopes than the caller's, it can be handed to a part of a system that needs less
/// (an uploader with `upload` only, a gallery with `read`). 403 when asked for a scope the
/// caller lacks.
#[api_v2_operation(tags(Keys))]
pub async fn create_key(
    state: web::Data<AppState>,
    caller: Caller,
    body: Json<CreateKey>,
) -> Result<CreatedJson<NewKey>, ApiError> {
    let body = body.into_inner();
    let mut problems = Vec::new();
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        problems.push(Problem {
            index: 0,
            field: "name".into(),
            message: format!("between 1 and {MAX_NAME_CHARS} characters"),
        });
    }
    let mut scopes = Vec::new();
    for (i, name) in body.scopes.iter().flatten().enumerate() {
        match name.parse::<Scope>() {
            Ok(scope) => scopes.push(scope),
            Err(message) => problems.push(Problem {
                index: 0,
                field: format!("scopes[{i}]"),
                message,
            }),
        }
    }
    if body.scopes.as_ref().is_some_and(Vec::is_empty) {
        problems.push(Problem {
            index: 0,
            field: "scopes".into(),
            message: "a key needs at least one scope".into(),
        });
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let scopes = match body.scopes {
        Some(_) => Scopes::of(scopes),
        None => caller.scopes,
    };
    if !caller.scopes.covers(scopes) {
        return Err(ApiError::Forbidden(
            "a key cannot give another key a scope it lacks",
        ));
    }
    let (row, key) =
        crate::auth::create_key_for(&state.pool, Some(caller.owner), name, scopes).await?;
    Ok(CreatedJson(NewKey {
        key,
        details: row.into(),
    }))
}

/// List keys
///
/// The caller's owner's keys, revoked ones included.
#[api_v2_operation(tags(Keys))]
pub async fn list_keys(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<Json<KeyList>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let keys = db::keys::list(&mut conn, Some(caller.owner)).await?;
    Ok(Json(KeyList {
        keys: keys.into_iter().map(KeyView::from).collect(),
    }))
}

/// Revoke a key
///
/// The key stops opening anything at once (stream tokens it issued too); its owner's data
/// stays, reachable by the owner's other keys. A key may revoke itself.
#[api_v2_operation(tags(Keys))]
pub async fn revoke_key(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<NoContent, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    if !db::keys::revoke(&mut conn, path.into_inner(), Some(caller.owner)).await? {
        return Err(ApiError::NotFound("key"));
    }
    Ok(NoContent)
}
