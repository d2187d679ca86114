//! `/v1/webhooks`: endpoints that receive the owner's events, and every delivery attempt.

use actix_web::web;
use chrono::{DateTime, Utc};
use paperclip::actix::{api_v2_operation, web::Json, Apiv2Schema, CreatedJson, NoContent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ApiError, Problem};
use super::AppState;
use crate::db;

/// Webhooks one owner may have (all its keys together).
const MAX_WEBHOOKS: usize = 20;
/// Longest webhook URL.
const MAX_URL_CHARS: usize = 2048;

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed (http or https; private addresses are refused unless
    /// allow-listed in `fetch.allow`).
    pub url: String,
    /// The event types to deliver (see `GET /v1/events`); empty or absent: every type.
    #[serde(default)]
    pub event_types: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    /// Empty: every type.
    pub event_types: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The signing secret (`whsec_…`), in the creation answer only: keep it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct AttemptView {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub status: Option<i32>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct DeliveryView {
    /// Sent as `webhook-id` (`msg_` and this id without dashes), the same on every attempt.
    pub id: Uuid,
    pub event_id: i64,
    /// pending | delivering | delivered | dead
    pub state: String,
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptView>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for older deliveries; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

fn view(hook: db::webhooks::Webhook, secret: Option<String>) -> WebhookView {
    WebhookView {
        id: hook.id,
        url: hook.url,
        event_types: hook.event_types,
        created_at: hook.created_at,
        secret,
    }
}

/// Create a webhook
///
/// Every event of the listed types is POSTed to `url` as JSON (the event as `GET
/// /v1/events` shows it), signed as Standard Webhooks says: `webhook-id`,
/// `webhook-timestamp` and `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the secret). Failed deliveries are retried with
/// backoff, then dead. The answer carries the secret, shown only here.
#[api_v2_operation(tags(Webhooks))]
pub async fn create_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    body: Json<CreateWebhook>,
) -> Result<CreatedJson<WebhookView>, ApiError> {
    let body = body.into_inner();
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| {
        problems.push(Problem {
            index: 0,
            field,
            message,
        })
    };
    if body.url.chars().count() > MAX_URL_CHARS {
        problem(
            "url".into(),
            format!("longer than {MAX_URL_CHARS} characters"),
        );
    } else if let Err(e) = state.fetch_rules.check_url(&body.url) {
        problem("url".into(), e.to_string());
    }
    let known: Vec<&str> = crate::events::EVENT_TYPES.iter().map(|(t, _)| *t).collect();
    for (i, t) in body.event_types.iter().enumerate() {
        if !known.contains(&t.as_str()) {
            problem(
                format!("event_types[{i}]"),
                format!("unknown event type {t:?}"),
            );
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let mut types = body.event_types;
    types.sort();
    types.dedup();
    let mut conn = db::conn(&state.pool).await?;
    if db::webhooks::list(&mut conn, caller.owner).await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict(format!(
            "an owner may have at most {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let secret = crate::webhooks::new_secret();
    let hook = db::webhooks::Webhook {
        id: Uuid::now_v7(),
        owner_id: caller.owner,
        url: body.url,
        event_types: types,
        secret: secret.clone(),
        created_at: Utc::now(),
        deleted_at: None,
    };
    db::webhooks::insert(&mut conn, &hook).await?;
    Ok(CreatedJson(view(hook, Some(secret))))
}

/// List webhooks
#[api_v2_operation(tags(Webhooks))]
pub async fn list_webhooks(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<Json<WebhookList>, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    let webhooks = db::webhooks::list(&mut conn, caller.owner)
        .await?
        .into_iter()
        .map(|h| view(h, None))
        .collect();
    Ok(Json(WebhookList { webhooks }))
}

/// Delete a webhook
///
/// No more deliveries; those not yet made end `dead`.
#[api_v2_operation(tags(Webhooks))]
pub async fn delete_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<NoContent, ApiError> {
    let mut conn = db::conn(&state.pool).await?;
    if !db::webhooks::delete(&mut conn, caller.owner, path.into_inner()).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    Ok(NoContent)
}

/// List a webhook's deliveries
///
/// Newest first, each with every attempt (status, error, duration).
#[api_v2_operation(tags(Webhooks))]
pub async fn list_deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
    query: web::Query<DeliveriesQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let query = query.into_inner();
    let (before, limit) = super::photos::keyset(query.cursor.as_deref(), query.limit)?;
    let mut conn = db::conn(&state.pool).await?;
    let hook = db::webhooks::get(&mut conn, caller.owner, path.into_inner())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    let found = db::webhooks::deliveries(&mut conn, hook.id, before, limit).await?;
    let next_cursor = (found.len() as i64 == limit)
        .then(|| found.last().map(|(d, _)| d.id.to_string()))
        .flatten();
    let deliveries = found
        .into_iter()
        .map(|(d, attempts)| DeliveryView {
            id: d.id,
            event_id: d.event_id,
            next_attempt_at: (d.state == "pending").then_some(d.next_attempt_at),
            state: d.state,
            attempts: d.attempts,
            last_error: d.last_error,
            created_at: d.created_at,
            updated_at: d.updated_at,
            history: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    started_at: a.started_at,
                    duration_ms: a.duration_ms,
                    status: a.status,
                    error: a.error,
                })
                .collect(),
        })
        .collect();
    Ok(Json(DeliveryPage {
        deliveries,
        next_cursor,
    }))
}
