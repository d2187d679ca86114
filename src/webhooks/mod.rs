//! Webhook deliveries: every worker process takes due deliveries from PostgreSQL, POSTs the
//! event through the shared outgoing client (`fetch`: its address rules, so a private
//! address is refused unless allow-listed), signed as Standard Webhooks says
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<HMAC-SHA256>`), and records
//! the attempt. A failure is retried with the photo retries' backoff (honouring a
//! receiver's `Retry-After`) until `webhooks.max_attempts`, then the delivery is dead. A
//! worker that dies holding a delivery gives it up when its hold runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use rand::RngCore;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::webhooks::{Claimed, Ending};
use crate::db::{self, DbPool};
use crate::events::Event;
use crate::fetch::{FetchError, Fetcher};

/// Prefix of a webhook secret (as Standard Webhooks writes them).
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes of a secret.
const SECRET_BYTES: usize = 32;

/// A new signing secret, `whsec_<base64>`.
pub fn new_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The Standard Webhooks headers for `body`, sent as message `id` at `timestamp`.
pub fn signed_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<HeaderMap, String> {
    let signer = standardwebhooks::Webhook::new(secret).map_err(|e| e.to_string())?;
    let signature = signer
        .sign(id, timestamp, body)
        .map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    let value = |v: String| HeaderValue::from_str(&v).map_err(|e| e.to_string());
    headers.insert("webhook-id", value(id.to_owned())?);
    headers.insert("webhook-timestamp", value(timestamp.to_string())?);
    headers.insert("webhook-signature", value(signature)?);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(headers)
}

/// Makes due deliveries until `shutdown` (a worker process runs one).
pub async fn run(pool: DbPool, fetcher: Fetcher, config: Arc<Config>, shutdown: CancellationToken) {
    let c = &config.webhooks;
    let poll = Duration::from_millis(c.poll_ms);
    let timeout = Duration::from_millis(c.timeout_ms);
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let room = c.concurrency.saturating_sub(running.len());
        if room > 0 {
            // Held for the timeout and a margin: past that, another worker may take it.
            let hold = Utc::now()
                + chrono::Duration::from_std(timeout * 2 + Duration::from_secs(5))
                    .unwrap_or_else(|_| chrono::Duration::minutes(1));
            let claimed = match db::conn(&pool).await {
                Ok(mut conn) => db::webhooks::claim_due(&mut conn, room as i64, hold).await,
                Err(e) => Err(e),
            };
            match claimed {
                Ok(list) => {
                    let full = list.len() == room;
                    for d in list {
                        running.spawn(deliver(pool.clone(), fetcher.clone(), config.clone(), d));
                    }
                    if full {
                        // More may be due: look again as soon as a slot frees.
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = running.join_next() => continue,
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for webhook deliveries failed"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(poll) => {}
        }
    }
    // Deliveries in flight finish (each is bounded by the timeout); the rest wait.
    while running.join_next().await.is_some() {}
}

/// Makes one attempt at a delivery and records it.
async fn deliver(pool: DbPool, fetcher: Fetcher, config: Arc<Config>, d: Claimed) {
    let span = tracing::info_span!("webhook", delivery_id = %d.id, event_id = d.event_id);
    let _entered = span.enter();
    let started_at = Utc::now();
    let clock = Instant::now();
    let timeout = Duration::from_millis(config.webhooks.timeout_ms);
    let outcome = attempt(&pool, &fetcher, &d, timeout).await;
    let duration_ms = clock.elapsed().as_millis() as i64;
    let max = config.webhooks.max_attempts as i32;
    let (ending, status, error) = match outcome {
        Ok(status) => (Ending::Delivered, Some(status as i32), None),
        Err(Failure::Permanent(why)) => (Ending::Dead, None, Some(why)),
        Err(Failure::Fetch(e)) => {
            let status = match &e {
                FetchError::Status { status, .. } => Some(*status as i32),
                _ => None,
            };
            let ending = if d.attempt >= max || matches!(e, FetchError::Refused { .. }) {
                Ending::Dead
            } else {
                let wait = crate::worker::retry::backoff(
                    &config.webhooks.retry(),
                    d.attempt as u32,
                    rand::random::<f64>(),
                )
                .max(e.retry_after().unwrap_or_default());
                Ending::Retry {
                    at: Utc::now()
                        + chrono::Duration::from_std(wait)
                            .unwrap_or_else(|_| chrono::Duration::hours(1)),
                }
            };
            (ending, status, Some(e.to_string()))
        }
    };
    match &ending {
        Ending::Delivered => tracing::debug!(status, "webhook delivered"),
        Ending::Retry { at } => {
            tracing::info!(error = error.as_deref(), %at, "webhook delivery failed; retrying")
        }
        Ending::Dead => tracing::warn!(error = error.as_deref(), "webhook delivery dead"),
    }
    let recorded = match db::conn(&pool).await {
        Ok(mut conn) => {
            db::webhooks::record_attempt(
                &mut conn,
                d.id,
                d.attempt,
                started_at,
                duration_ms,
                status,
                error.as_deref(),
                ending,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        // The hold runs out and the delivery is attempted again.
        tracing::warn!(error = %e, "webhook attempt not recorded");
    }
}

enum Failure {
    Fetch(FetchError),
    /// Cannot succeed however often it is tried.
    Permanent(String),
}

async fn attempt(
    pool: &DbPool,
    fetcher: &Fetcher,
    d: &Claimed,
    timeout: Duration,
) -> Result<u16, Failure> {
    let event = {
        let mut conn = db::conn(pool)
            .await
            .map_err(|e| Failure::Fetch(FetchError::Connect(e.to_string())))?;
        db::events::get(&mut conn, d.owner_id, d.event_id)
            .await
            .map_err(|e| Failure::Fetch(FetchError::Connect(e.to_string())))?
    };
    let Some(event) = event else {
        return Err(Failure::Permanent(
            "the event is no longer in the log (past its retention)".into(),
        ));
    };
    let body = serde_json::to_vec(&Event::from(event))
        .map_err(|e| Failure::Permanent(format!("event JSON: {e}")))?;
    // The delivery id: the same on every attempt, so a receiver can drop repeats.
    let id = format!("msg_{}", d.id.simple());
    let headers = signed_headers(&d.secret, &id, Utc::now().timestamp(), &body)
        .map_err(Failure::Permanent)?;
    fetcher
        .post(&d.url, headers, Bytes::from(body), timeout)
        .await
        .map_err(Failure::Fetch)
}
