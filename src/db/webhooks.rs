//! Webhooks, their deliveries (a small job queue in PostgreSQL: claimed with
//! `FOR UPDATE SKIP LOCKED`, held for a while, released by recording the attempt) and every
//! attempt. Deliveries are created by the event sequencer as it appends events, never here.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{webhook_attempts, webhook_deliveries, webhooks};
use super::DbError;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhooks, check_for_backend(diesel::pg::Pg))]
pub struct Webhook {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut AsyncPgConnection, hook: &Webhook) -> Result<(), DbError> {
    diesel::insert_into(webhooks::table)
        .values(hook)
        .execute(conn)
        .await?;
    Ok(())
}

/// `owner`'s webhooks (not deleted), oldest first.
pub async fn list(conn: &mut AsyncPgConnection, owner: Uuid) -> Result<Vec<Webhook>, DbError> {
    Ok(webhooks::table
        .filter(webhooks::owner_id.eq(owner))
        .filter(webhooks::deleted_at.is_null())
        .order(webhooks::id.asc())
        .select(Webhook::as_select())
        .load(conn)
        .await?)
}

pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: Uuid,
    id: Uuid,
) -> Result<Option<Webhook>, DbError> {
    Ok(webhooks::table
        .filter(webhooks::id.eq(id))
        .filter(webhooks::owner_id.eq(owner))
        .filter(webhooks::deleted_at.is_null())
        .select(Webhook::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Deletes a webhook: no new deliveries; those not yet made end `dead`. False when there
/// was no such webhook.
pub async fn delete(conn: &mut AsyncPgConnection, owner: Uuid, id: Uuid) -> Result<bool, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let n = diesel::update(
            webhooks::table
                .filter(webhooks::id.eq(id))
                .filter(webhooks::owner_id.eq(owner))
                .filter(webhooks::deleted_at.is_null()),
        )
        .set(webhooks::deleted_at.eq(now))
        .execute(conn)
        .await?;
        if n == 0 {
            return Ok(false);
        }
        diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::webhook_id.eq(id))
                .filter(webhook_deliveries::state.eq("pending")),
        )
        .set((
            webhook_deliveries::state.eq("dead"),
            webhook_deliveries::last_error.eq("the webhook was deleted"),
            webhook_deliveries::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
        Ok(true)
    })
    .await
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: i64,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub status: Option<i32>,
    pub error: Option<String>,
}

/// A webhook's deliveries, newest first (ids below `before`, if given), with their attempts.
pub async fn deliveries(
    conn: &mut AsyncPgConnection,
    webhook: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Delivery, Vec<Attempt>)>, DbError> {
    let mut query = webhook_deliveries::table
        .filter(webhook_deliveries::webhook_id.eq(webhook))
        .order(webhook_deliveries::id.desc())
        .limit(limit)
        .select(Delivery::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(webhook_deliveries::id.lt(before));
    }
    let found: Vec<Delivery> = query.load(conn).await?;
    let ids: Vec<Uuid> = found.iter().map(|d| d.id).collect();
    let attempts: Vec<Attempt> = webhook_attempts::table
        .filter(webhook_attempts::delivery_id.eq_any(&ids))
        .order((webhook_attempts::delivery_id, webhook_attempts::attempt))
        .select(Attempt::as_select())
        .load(conn)
        .await?;
    Ok(found
        .into_iter()
        .map(|d| {
            let mine = attempts
                .iter()
                .filter(|a| a.delivery_id == d.id)
                .cloned()
                .collect();
            (d, mine)
        })
        .collect())
}

/// A delivery a worker holds, with what it needs to make it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    pub owner_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub event_id: i64,
    /// This attempt's number (1-based).
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub secret: String,
}

/// Takes up to `limit` due deliveries (pending and due, or held by a worker whose hold
/// expired), holds each until `hold_until` and counts the attempt.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    hold_until: DateTime<Utc>,
) -> Result<Vec<Claimed>, DbError> {
    Ok(diesel::sql_query(
        "UPDATE webhook_deliveries AS d \
         SET state = 'delivering', attempts = d.attempts + 1, locked_until = $2, \
             updated_at = now() \
         FROM webhooks AS w \
         WHERE w.id = d.webhook_id AND d.id IN ( \
             SELECT id FROM webhook_deliveries \
             WHERE (state = 'pending' AND next_attempt_at <= now()) \
                OR (state = 'delivering' AND locked_until < now()) \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING d.id, d.owner_id, d.event_id, d.attempts AS attempt, w.url, w.secret",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Timestamptz, _>(hold_until)
    .load(conn)
    .await?)
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Ending {
    Delivered,
    /// Try again at `at`.
    Retry {
        at: DateTime<Utc>,
    },
    /// Out of attempts, or cannot succeed.
    Dead,
}

/// Records attempt `attempt` of a delivery and moves the delivery on, if this worker still
/// holds it under that attempt (else the record is stale and dropped).
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    delivery: Uuid,
    attempt: i32,
    started_at: DateTime<Utc>,
    duration_ms: i64,
    status: Option<i32>,
    error: Option<&str>,
    ending: Ending,
) -> Result<bool, DbError> {
    conn.transaction::<_, DbError, _>(async |conn| {
        let now = Utc::now();
        let held = webhook_deliveries::table
            .filter(webhook_deliveries::id.eq(delivery))
            .filter(webhook_deliveries::state.eq("delivering"))
            .filter(webhook_deliveries::attempts.eq(attempt));
        let (state, next) = match ending {
            Ending::Delivered => ("delivered", now),
            Ending::Retry { at } => ("pending", at),
            Ending::Dead => ("dead", now),
        };
        let n = diesel::update(held)
            .set((
                webhook_deliveries::state.eq(state),
                webhook_deliveries::next_attempt_at.eq(next),
                webhook_deliveries::locked_until.eq(None::<DateTime<Utc>>),
                webhook_deliveries::last_error.eq(error),
                webhook_deliveries::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
        if n == 0 {
            return Ok(false);
        }
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::delivery_id.eq(delivery),
                webhook_attempts::attempt.eq(attempt),
                webhook_attempts::started_at.eq(started_at),
                webhook_attempts::duration_ms.eq(duration_ms),
                webhook_attempts::status.eq(status),
                webhook_attempts::error.eq(error),
            ))
            .execute(conn)
            .await?;
        Ok(true)
    })
    .await
}
