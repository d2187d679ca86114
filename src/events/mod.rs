//! Live progress. The event log is in PostgreSQL (`db::events`): the database's triggers
//! stage each change in the transaction that makes it, and the [`sequencer`] (one process
//! at a time) numbers them and appends them to the log. Redis pub/sub only says "something
//! new" (`Queue::changes_written` to the sequencer, `Queue::events_appended` from it). Each
//! API process keeps one [`Hub`]: a feed per owner that
//! somebody follows reads the owner's new events once and hands them to every
//! [`Follower`] (an SSE stream, a WebSocket subscription, a long-poll request). Followers
//! resume from an event id by reading the log, and fall back to it whenever they could
//! have missed something, so every event reaches them once, in id order.

mod follow;
mod hub;
mod notices;
pub mod sequencer;

pub use follow::{Follower, Next, Start};
pub use hub::Hub;

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::events::EventRow;

/// Every event type, in the order the README and the OpenAPI document list them.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    (
        "photo.queued",
        "a photo was accepted, or is waiting for its next attempt",
    ),
    ("photo.processing", "an attempt at a photo started"),
    ("photo.completed", "a photo's variants are stored"),
    (
        "photo.failed",
        "a photo cannot be processed (its input is at fault)",
    ),
    ("photo.dead", "a photo ran out of attempts"),
    (
        "photo.cancelled",
        "a photo's batch was cancelled before the photo started",
    ),
    ("photo.deleted", "a photo was deleted by its owner"),
    (
        "photo.reprocessed",
        "a completed photo's variants were made again (reprocess); not part of its batch's events",
    ),
    ("batch.started", "the first photo of a batch started"),
    ("batch.completed", "every photo of a batch completed"),
    (
        "batch.completed_with_errors",
        "every photo of a batch finished, some failed or dead",
    ),
    (
        "product.processing",
        "an imported product has images still being processed",
    ),
    ("product.processed", "every image of a product is processed"),
    (
        "product.process_error",
        "a product's images are finished, some failed",
    ),
];

/// The type a client reloads its state after: the events it asked to resume from are gone
/// (older than the retention) or unknown.
pub const RESET: &str = "reset";

/// True for the types that end a batch.
pub fn ends_batch(kind: &str) -> bool {
    kind == "batch.completed" || kind == "batch.completed_with_errors"
}

/// One event, as clients receive it (SSE `data:`, long-poll, WebSocket, webhook body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Apiv2Schema)]
pub struct Event {
    /// Per API key: 1, 2, 3, … with no gaps, in commit order. Resume after it with
    /// `Last-Event-ID` or `after`.
    pub id: i64,
    /// One of the event types listed in the README (`photo.completed`, `batch.completed`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// When the change was written.
    pub created_at: DateTime<Utc>,
    /// The batch (or import) the event belongs to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub photo_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub product_id: Option<Uuid>,
    /// The change: `state`, `previous_state`, `attempts`, `error_code`, `error`,
    /// `next_attempt_at`, `width`, `height` for photos; counts for batch ends; `external_id`
    /// and states for products.
    pub data: serde_json::Value,
}

impl From<EventRow> for Event {
    fn from(r: EventRow) -> Self {
        let mut data = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| {
            if !value.is_null() {
                data.insert(key.to_owned(), value);
            }
        };
        if r.product_id.is_some() {
            // A product's status change: its batch is the import that last named it.
            put("product_id", json(&r.product_id));
            put("external_id", json(&r.external_id));
        } else {
            put("photo_id", json(&r.photo_id));
            put("batch_id", json(&r.batch_id));
        }
        put("state", json(&r.state));
        put("previous_state", json(&r.previous_state));
        put("attempts", json(&r.attempts));
        put("error_code", json(&r.error_code));
        put("error", json(&r.error));
        put("next_attempt_at", json(&r.next_attempt_at));
        put("width", json(&r.width));
        put("height", json(&r.height));
        put("total", json(&r.total));
        put("completed", json(&r.completed));
        put("failed", json(&r.failed));
        put("dead", json(&r.dead));
        Event {
            id: r.id,
            kind: r.kind,
            created_at: r.created_at,
            batch_id: r.batch_id,
            photo_id: r.photo_id,
            product_id: r.product_id,
            data: serde_json::Value::Object(data),
        }
    }
}

/// A stored field as JSON (`null` when absent).
fn json<T: Serialize>(value: &Option<T>) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// An event as handed to followers: shared by all of them, with its SSE message rendered
/// once however many streams send it.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    sse: std::sync::OnceLock<bytes::Bytes>,
}

impl Published {
    pub fn new(event: Event) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Published {
            event,
            sse: std::sync::OnceLock::new(),
        })
    }

    /// The event as one SSE message: `id:`, `event:` (its type), `data:` (its JSON).
    pub fn sse(&self) -> bytes::Bytes {
        self.sse
            .get_or_init(|| {
                let e = &self.event;
                let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
                bytes::Bytes::from(format!(
                    "id: {}\nevent: {}\ndata: {}\n\n",
                    e.id, e.kind, data
                ))
            })
            .clone()
    }
}
