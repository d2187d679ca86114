//! Live progress over HTTP: `GET /v1/events` and `GET /v1/batches/{id}/events` as
//! Server-Sent Events (with `Accept: text/event-stream`) or as a JSON long-poll (without),
//! and `POST /v1/events/tokens` for browsers.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse, Responder};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use paperclip::actix::{api_v2_operation, Apiv2Schema, CreatedJson, OperationModifier};
use paperclip::v2::models::{DefaultOperationRaw, DefaultSchemaRaw, Either, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::{Caller, StreamCaller};
use super::error::ApiError;
use super::AppState;
use crate::events::{self, Event, Follower, Next, Start};

/// Frames an SSE stream may run ahead of a slow client before it waits.
const SSE_BUFFER: usize = 64;
/// Database failures in a row an SSE stream waits out before it ends (see [`outlast`]).
const STREAM_DB_RETRIES: u32 = 10;
/// Wait after the first such failure; each next one waits once more as long.
const STREAM_DB_BACKOFF: Duration = Duration::from_millis(500);
/// `wait` when a long-poll request gives none.
const DEFAULT_WAIT_SECS: u64 = 30;

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Resume after this event id (SSE also takes the `Last-Event-ID` header). Without it,
    /// `/v1/events` starts with what happens next, a batch's events with its first.
    after: Option<i64>,
    /// Long-poll only: seconds to wait for an event before answering an empty list
    /// (default 30, at most `events.max_wait_secs`; 0 answers at once).
    wait: Option<u64>,
    /// A stream token, for clients that cannot send headers (read by `StreamCaller`).
    #[allow(dead_code)]
    token: Option<String>,
}

/// A long-poll answer.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct EventPage {
    /// New events, in id order (empty when none came within `wait`).
    pub events: Vec<Event>,
    /// Pass as `after` next time.
    pub last_event_id: i64,
    /// True when `after` named events the log no longer holds (older than the retention):
    /// reload the state, then go on from `last_event_id`.
    pub reset: bool,
}

/// A stream token.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct StreamToken {
    /// Opens this key's event streams as `?token=` (SSE, WebSocket), nothing else.
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// An SSE stream or a long-poll page, by the request's `Accept`.
pub enum EventsAnswer {
    Stream(HttpResponse),
    Page(EventPage),
}

impl Responder for EventsAnswer {
    type Body = BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse {
        match self {
            EventsAnswer::Stream(res) => res,
            EventsAnswer::Page(page) => HttpResponse::Ok().json(page),
        }
    }
}

impl paperclip::v2::schema::Apiv2Schema for EventsAnswer {}

impl OperationModifier for EventsAnswer {
    /// The long-poll page's schemas (and the event's) go into the document's components.
    fn update_definitions(map: &mut std::collections::BTreeMap<String, DefaultSchemaRaw>) {
        <paperclip::actix::web::Json<EventPage> as OperationModifier>::update_definitions(map);
    }

    fn update_response(op: &mut DefaultOperationRaw) {
        op.responses.insert(
            "200".into(),
            Either::Right(Response {
                description: Some(
                    "With `Accept: text/event-stream`: an SSE stream, one event per message \
                     (`id:` the event id, `event:` its type, `data:` the event as JSON), a \
                     `reset` message when `after`/`Last-Event-ID` is older than the log, and \
                     keep-alive comments. Otherwise a long-poll page as JSON."
                        .into(),
                ),
                schema: Some(<EventPage as paperclip::v2::schema::Apiv2Schema>::schema_with_ref()),
                ..Default::default()
            }),
        );
    }
}

/// Follow events
///
/// All of the key's events. With `Accept: text/event-stream`, a Server-Sent Events stream
/// that resumes after `Last-Event-ID` (or `after`); otherwise a long-poll: the events after
/// `after`, answered as soon as there is one, or an empty list after `wait` seconds.
#[api_v2_operation(tags(Events))]
pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: StreamCaller,
    query: web::Query<EventsQuery>,
) -> Result<EventsAnswer, ApiError> {
    answer(&req, &state, caller.owner, None, query.into_inner()).await
}

/// Follow a batch's events
///
/// The events of one batch (or import): its photos', its products' and its milestones. As
/// `GET /v1/events`; without `after` it starts with the batch's first event, and the SSE
/// stream ends after the batch's `batch.completed` or `batch.completed_with_errors`.
#[api_v2_operation(tags(Events))]
pub async fn batch_events(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: StreamCaller,
    path: web::Path<Uuid>,
    query: web::Query<EventsQuery>,
) -> Result<EventsAnswer, ApiError> {
    let batch = path.into_inner();
    super::batches::owned(&state, caller.owner, batch).await?;
    answer(&req, &state, caller.owner, Some(batch), query.into_inner()).await
}

/// Create a stream token
///
/// A token that opens this key's event streams as `?token=` for a few minutes
/// (`events.token_ttl_secs`): for browsers, whose EventSource cannot send headers. A stream
/// opened with it stays open after it expires.
#[api_v2_operation(tags(Events))]
pub async fn create_token(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<CreatedJson<StreamToken>, ApiError> {
    let ttl = Duration::from_secs(state.config.events.token_ttl_secs);
    let (token, expires_at) = crate::auth::issue_stream_token(&state.pool, caller.key, ttl).await?;
    Ok(CreatedJson(StreamToken { token, expires_at }))
}

async fn answer(
    req: &HttpRequest,
    state: &AppState,
    owner: Uuid,
    batch: Option<Uuid>,
    query: EventsQuery,
) -> Result<EventsAnswer, ApiError> {
    let sse = wants_stream(req);
    let resume = match (query.after, last_event_id(req)?) {
        (Some(after), _) => Some(after),
        (None, header) if sse => header,
        _ => None,
    };
    if resume.is_some_and(|id| id < 0) {
        return Err(ApiError::bad_query(
            "`after` must be an event id, 0 or more",
        ));
    }
    let start = Start::of(resume, batch);
    let max_wait = state.config.events.max_wait_secs;
    let wait = query.wait.unwrap_or(DEFAULT_WAIT_SECS.min(max_wait));
    if sse && query.wait.is_some() {
        return Err(ApiError::bad_query(
            "`wait` is for long-polling, not for SSE",
        ));
    }
    if wait > max_wait {
        return Err(ApiError::bad_query(format!(
            "`wait` is at most {max_wait} seconds"
        )));
    }
    let (follower, reset) = Follower::open(&state.hub, owner, batch, start).await?;
    if sse {
        return Ok(EventsAnswer::Stream(stream(state, follower, batch, reset)));
    }
    long_poll(follower, reset, Duration::from_secs(wait)).await
}

/// True when the client asks for `text/event-stream`.
fn wants_stream(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().map(str::trim) == Some("text/event-stream"))
}

fn last_event_id(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    match req.headers().get("Last-Event-ID") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::bad_request("Last-Event-ID must be an event id given by photoq")
                })
            })
            .transpose(),
    }
}

async fn long_poll(
    mut follower: Follower,
    reset: Option<i64>,
    wait: Duration,
) -> Result<EventsAnswer, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let events = if reset.is_some() {
        Vec::new()
    } else {
        loop {
            match follower.next(deadline).await? {
                Next::Events(events) => break events.iter().map(|p| p.event.clone()).collect(),
                Next::Idle if tokio::time::Instant::now() < deadline => continue,
                Next::Idle | Next::Closed => break Vec::new(),
            }
        }
    };
    Ok(EventsAnswer::Page(EventPage {
        events,
        last_event_id: follower.position(),
        reset: reset.is_some(),
    }))
}

/// The SSE response: a task follows the events and writes frames into a channel the
/// response body reads; it ends when the client goes away (the channel closes), at
/// shutdown, or after the batch's last event.
fn stream(
    state: &AppState,
    follower: Follower,
    batch: Option<Uuid>,
    reset: Option<i64>,
) -> HttpResponse {
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_BUFFER);
    let keepalive = Duration::from_secs(state.config.events.keepalive_secs);
    tokio::spawn(async move {
        match follow(follower, batch, reset, keepalive, tx).await {
            Ok(()) | Err(StreamEnd::Gone) => {}
            Err(e) => tracing::warn!(error = %e, "event stream ended early"),
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Proxies (nginx) must pass each frame on at once.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("client gone")]
    Gone,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

async fn follow(
    mut follower: Follower,
    batch: Option<Uuid>,
    reset: Option<i64>,
    keepalive: Duration,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), StreamEnd> {
    let send_bytes = |frame: Bytes| {
        let tx = tx.clone();
        async move { tx.send(frame).await.map_err(|_| StreamEnd::Gone) }
    };
    let send = |frame: String| send_bytes(Bytes::from(frame));
    // Tells EventSource to reconnect after 2 s, and gets the headers on their way.
    send("retry: 2000\n\n".into()).await?;
    if let Some(id) = reset {
        send(reset_frame(id)).await?;
    }
    let mut failures = 0u32;
    loop {
        let next = match follower.next_within(keepalive).await {
            Ok(next) => next,
            Err(e) => {
                outlast(&mut follower, &tx, &mut failures, e).await?;
                continue;
            }
        };
        failures = 0;
        match next {
            Next::Events(events) => {
                let mut ended = false;
                for p in &events {
                    send_bytes(p.sse()).await?;
                    ended |= batch.is_some() && events::ends_batch(&p.event.kind);
                }
                if ended {
                    return Ok(());
                }
            }
            Next::Idle => {
                let rest = match follower.batch_rest().await {
                    Ok(rest) => rest,
                    Err(e) => {
                        outlast(&mut follower, &tx, &mut failures, e).await?;
                        continue;
                    }
                };
                if let Some(rest) = rest {
                    for p in &rest {
                        send_bytes(p.sse()).await?;
                    }
                    return Ok(());
                }
                send(": keep-alive\n\n".into()).await?;
            }
            Next::Closed => return Ok(()),
        }
    }
}

/// A stream rides out a database that is briefly unreachable (a failover, a full pool):
/// it waits and reads the log again from where it was, so the client loses nothing and
/// need not reconnect. It ends on any other error, after [`STREAM_DB_RETRIES`] failures
/// in a row, or when the client goes away meanwhile.
async fn outlast(
    follower: &mut Follower,
    tx: &mpsc::Sender<Bytes>,
    failures: &mut u32,
    error: crate::db::DbError,
) -> Result<(), StreamEnd> {
    *failures += 1;
    if !error.is_transient() || *failures > STREAM_DB_RETRIES {
        return Err(error.into());
    }
    tracing::warn!(error = %error, attempt = *failures, "event stream waits for the database");
    tokio::select! {
        _ = tx.closed() => return Err(StreamEnd::Gone),
        _ = tokio::time::sleep(STREAM_DB_BACKOFF * *failures) => {}
    }
    follower.resync();
    Ok(())
}

fn reset_frame(id: i64) -> String {
    format!(
        "id: {id}\nevent: {}\ndata: {}\n\n",
        events::RESET,
        serde_json::json!({"type": events::RESET, "last_event_id": id})
    )
}
