//! `GET /v1/ws`: the event log over one WebSocket, with subscriptions.
//!
//! The client sends JSON text messages:
//! - `{"type": "subscribe"}` (all of the key's events) or
//!   `{"type": "subscribe", "batch": "<id>"}`, either with `"after": <event id>` to resume;
//! - `{"type": "unsubscribe"}` / `{"type": "unsubscribe", "batch": "<id>"}`.
//!
//! photoq answers `{"type": "subscribed", "batch": …, "last_event_id": N}`, then
//! `{"type": "event", "batch": …, "event": {…}}` per event (`batch` names the subscription,
//! null for all), `{"type": "reset", …}` as on SSE, `{"type": "unsubscribed", "batch": …,
//! "reason": "requested" | "batch_finished"}`, and `{"type": "error", "code", "message"}`
//! for a message it cannot take. It pings every `events.keepalive_secs` and closes a
//! connection that has not answered two pings.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::auth::StreamCaller;
use super::error::ApiError;
use super::AppState;
use crate::events::{self, Event, Follower, Next, Start};

/// Largest message a client may send.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 100;
/// Messages queued for a slow client before its subscriptions wait.
const OUT_BUFFER: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        batch: Option<Uuid>,
        after: Option<i64>,
    },
    Unsubscribe {
        batch: Option<Uuid>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ServerMessage<'a> {
    Subscribed {
        batch: Option<Uuid>,
        last_event_id: i64,
    },
    Event {
        batch: Option<Uuid>,
        event: &'a Event,
    },
    Reset {
        batch: Option<Uuid>,
        last_event_id: i64,
    },
    Unsubscribed {
        batch: Option<Uuid>,
        reason: &'static str,
    },
    Error {
        code: &'static str,
        message: String,
    },
}

impl ServerMessage<'_> {
    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// Opens the WebSocket (auth by header, or `?token=` from `POST /v1/events/tokens`).
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    caller: StreamCaller,
) -> Result<HttpResponse, ApiError> {
    let (response, session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::BadRequest {
            code: "not_websocket",
            message: format!("not a WebSocket upgrade request: {e}"),
        })?;
    let stream = stream
        .max_frame_size(MAX_MESSAGE_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE_BYTES);
    let state = state.into_inner();
    actix_web::rt::spawn(run(state, caller.owner, session, stream));
    Ok(response)
}

async fn run(
    state: std::sync::Arc<AppState>,
    owner: Uuid,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    let (out_tx, mut out_rx) = mpsc::channel::<String>(OUT_BUFFER);
    let mut subscriptions: HashMap<Option<Uuid>, JoinHandle<()>> = HashMap::new();
    let keepalive = Duration::from_secs(state.config.events.keepalive_secs);
    let mut ping = tokio::time::interval(keepalive);
    ping.tick().await;
    let mut unanswered = 0u32;
    let reason = loop {
        tokio::select! {
            _ = state.hub.stopped() => break Some(CloseCode::Restart),
            out = out_rx.recv() => match out {
                Some(text) => {
                    if session.text(text).await.is_err() {
                        break None;
                    }
                }
                None => break None,
            },
            _ = ping.tick() => {
                if unanswered >= 2 {
                    break Some(CloseCode::Policy);
                }
                unanswered += 1;
                if session.ping(b"").await.is_err() {
                    break None;
                }
            }
            msg = stream.next() => match msg {
                None | Some(Err(_)) | Some(Ok(AggregatedMessage::Close(_))) => break None,
                Some(Ok(AggregatedMessage::Pong(_))) => unanswered = 0,
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    let _ = out_tx.try_send(error("bad_message", "send JSON text messages"));
                }
                Some(Ok(AggregatedMessage::Text(text))) => {
                    unanswered = 0;
                    let reply = handle(&state, owner, &text, &mut subscriptions, &out_tx).await;
                    if let Some(reply) = reply {
                        if session.text(reply).await.is_err() {
                            break None;
                        }
                    }
                }
            },
        }
    };
    for (_, task) in subscriptions {
        task.abort();
    }
    let _ = session
        .close(reason.map(|code| CloseReason {
            code,
            description: None,
        }))
        .await;
}

/// Takes one client message; answers at once only with an error (subscriptions answer
/// through `out`, so that `subscribed` comes before their events).
async fn handle(
    state: &AppState,
    owner: Uuid,
    text: &str,
    subscriptions: &mut HashMap<Option<Uuid>, JoinHandle<()>>,
    out: &mpsc::Sender<String>,
) -> Option<String> {
    subscriptions.retain(|_, task| !task.is_finished());
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Some(error("bad_message", &format!("malformed message: {e}"))),
    };
    match message {
        ClientMessage::Subscribe { batch, after } => {
            if after.is_some_and(|a| a < 0) {
                return Some(error(
                    "bad_message",
                    "`after` must be an event id, 0 or more",
                ));
            }
            if !subscriptions.contains_key(&batch) && subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Some(error(
                    "too_many_subscriptions",
                    "at most 100 per connection",
                ));
            }
            if let Some(batch) = batch {
                match super::batches::owned(state, owner, batch).await {
                    Ok(()) => {}
                    Err(ApiError::NotFound(_)) => {
                        return Some(error("not_found", "no such batch"));
                    }
                    Err(e) => return Some(error(e.code(), &e.to_string())),
                }
            }
            let start = Start::of(after, batch);
            let (follower, reset) = match Follower::open(&state.hub, owner, batch, start).await {
                Ok(f) => f,
                Err(e) => {
                    let e = ApiError::from(e);
                    return Some(error(e.code(), &e.to_string()));
                }
            };
            if let Some(old) = subscriptions.remove(&batch) {
                old.abort();
            }
            let task = tokio::spawn(follow(follower, batch, reset, out.clone()));
            subscriptions.insert(batch, task);
            None
        }
        ClientMessage::Unsubscribe { batch } => {
            if let Some(task) = subscriptions.remove(&batch) {
                task.abort();
            }
            let _ = out
                .send(
                    ServerMessage::Unsubscribed {
                        batch,
                        reason: "requested",
                    }
                    .text(),
                )
                .await;
            None
        }
    }
}

/// One subscription: as an SSE stream, in messages.
async fn follow(
    mut follower: Follower,
    batch: Option<Uuid>,
    reset: Option<i64>,
    out: mpsc::Sender<String>,
) {
    let send = |m: ServerMessage<'_>| {
        let text = m.text();
        let out = out.clone();
        async move { out.send(text).await.is_ok() }
    };
    let last_event_id = follower.position();
    if !send(ServerMessage::Subscribed {
        batch,
        last_event_id,
    })
    .await
    {
        return;
    }
    if let Some(id) = reset {
        if !send(ServerMessage::Reset {
            batch,
            last_event_id: id,
        })
        .await
        {
            return;
        }
    }
    // Long waits: pings keep the connection alive, not this loop.
    let wait = Duration::from_secs(60);
    loop {
        let next = match follower.next_within(wait).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "websocket subscription read failed");
                // The database is away: try again shortly, from where it was.
                follower.resync();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match next {
            Next::Events(list) => {
                let mut ended = false;
                for p in &list {
                    let event = &p.event;
                    if !send(ServerMessage::Event { batch, event }).await {
                        return;
                    }
                    ended |= batch.is_some() && events::ends_batch(&event.kind);
                }
                if ended {
                    send(ServerMessage::Unsubscribed {
                        batch,
                        reason: "batch_finished",
                    })
                    .await;
                    return;
                }
            }
            Next::Idle => match follower.batch_rest().await {
                Ok(Some(rest)) => {
                    for p in &rest {
                        let event = &p.event;
                        if !send(ServerMessage::Event { batch, event }).await {
                            return;
                        }
                    }
                    send(ServerMessage::Unsubscribed {
                        batch,
                        reason: "batch_finished",
                    })
                    .await;
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "websocket subscription read failed"),
            },
            Next::Closed => return,
        }
    }
}

fn error(code: &'static str, message: &str) -> String {
    ServerMessage::Error {
        code,
        message: message.to_owned(),
    }
    .text()
}
