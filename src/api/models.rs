//! The JSON shapes clients see. Field names are part of the contract (see the README).

use chrono::{DateTime, Utc};
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::models::{Attempt, Photo, PhotoState, Variant};
use crate::pipeline::Exif;

pub fn photo_url(id: Uuid) -> String {
    format!("/v1/photos/{id}")
}

/// `202 Accepted` answer to an upload.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct UploadResponse {
    pub batch_id: Uuid,
    pub photos: Vec<PhotoRef>,
}

/// A photo's id, state and where to follow it.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct PhotoRef {
    pub id: Uuid,
    /// queued | processing | completed | failed | dead | cancelled
    pub state: String,
    pub url: String,
}

impl PhotoRef {
    pub fn new(id: Uuid, state: &str) -> Self {
        PhotoRef {
            id,
            state: state.to_owned(),
            url: photo_url(id),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct PhotoView {
    pub id: Uuid,
    pub batch_id: Uuid,
    /// queued | processing | completed | failed | dead | cancelled
    pub state: String,
    /// Why the photo failed, or the last transient error while it is retried.
    pub error: Option<String>,
    /// The same as a stable code (`undecodable_image`, `download_not_found`, ...).
    pub error_code: Option<String>,
    /// Times a worker has started on this photo.
    pub attempts: i32,
    /// File name given by the client, if any.
    pub filename: Option<String>,
    /// Where a photo of an import is downloaded from.
    pub source_url: Option<String>,
    pub original: OriginalView,
    /// EXIF, once the photo has been processed.
    pub exif: Option<Exif>,
    /// A ThumbHash of the photo (base64, about 25 bytes), once processed: any ThumbHash
    /// library decodes it into a blurred placeholder of the right colours and aspect
    /// ratio, to show while the variants load.
    pub thumbhash: Option<String>,
    /// When this photo's bytes had already been processed for the same owner with the
    /// same variants: that photo. Its results were copied, not made again; the copies are
    /// this photo's own.
    pub reused_from: Option<Uuid>,
    pub variants: Vec<VariantView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while a retry is scheduled.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first (on `GET /v1/photos/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AttemptView>>,
}

/// One attempt at a photo.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct AttemptView {
    /// 1 for the first attempt (counting restarts at a redrive).
    pub attempt: i32,
    /// The worker (consumer name) that ran it.
    pub worker: String,
    /// running | completed | failed | retry | dead | interrupted | handed_back
    pub outcome: String,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        AttemptView {
            attempt: a.attempt,
            worker: a.worker,
            outcome: a.outcome,
            error: a.error,
            started_at: a.started_at,
            finished_at: a.finished_at,
            duration_ms: a.duration_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct OriginalView {
    /// Width as displayed (EXIF orientation applied); known once processed.
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// Size, hash and type are known from the upload, or once an imported image has been
    /// downloaded.
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    /// Sniffed from the bytes.
    pub content_type: Option<String>,
    pub url: String,
    /// `url` signed to open without a key until it expires (`signed_urls.ttl_secs`), for a
    /// browser's `<img src>`; absent unless the server has signing keys.
    pub signed_url: Option<String>,
    /// When retention removed the original's bytes (`retention.originals_days`); `url`
    /// then answers 410. Size, hash and type stay.
    pub removed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct VariantView {
    pub name: String,
    pub width: i32,
    pub height: i32,
    pub bytes: i64,
    pub content_type: String,
    /// Where to get it with the key. Its `v` names these bytes: answered with it, they are
    /// cached as immutable, and a reprocessed variant has a new URL (without `v`, or with
    /// an old one, the variant is revalidated each time).
    pub url: String,
    /// `url` signed to open without a key until it expires, as for the original.
    pub signed_url: Option<String>,
}

/// Hex digits of a variant's ETag its URL carries as `v`.
const VERSION_CHARS: usize = 12;

/// The version of a variant's bytes its URL carries as `v`: the start of its ETag.
pub fn version_of(etag: &str) -> &str {
    etag.get(..VERSION_CHARS).unwrap_or(etag)
}

/// How a caller's photo views are made: image URLs signed by the server's signer, at one
/// moment, for how long; and whether the caller's scopes may see where a photo was taken
/// (`privacy.gps_scope`).
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    signer: &'a crate::signing::UrlSigner,
    now: i64,
    ttl_secs: u64,
    gps: bool,
}

impl<'a> Viewer<'a> {
    pub fn of(config: &'a crate::config::Config, scopes: crate::auth::Scopes) -> Self {
        Viewer {
            signer: &config.signer,
            now: Utc::now().timestamp(),
            ttl_secs: config.signed_urls.ttl_secs,
            gps: config
                .privacy
                .gps_scope
                .scope()
                .is_some_and(|needed| scopes.has(needed)),
        }
    }

    fn url(&self, path: &str) -> Option<String> {
        self.signer.sign(path, self.now, self.ttl_secs)
    }
}

impl PhotoView {
    pub fn new(photo: Photo, variants: Vec<Variant>, signing: Viewer<'_>) -> Self {
        let original_url = format!("{}/original", photo_url(photo.id));
        let exif = photo
            .exif
            .and_then(|v| serde_json::from_value::<Exif>(v).ok())
            .map(|mut exif| {
                if !signing.gps {
                    exif.gps = None;
                    exif.tags.retain(|t| t.ifd != "gps");
                }
                exif
            });
        PhotoView {
            id: photo.id,
            batch_id: photo.batch_id,
            state: photo.state,
            error: photo.error,
            error_code: photo.error_code,
            attempts: photo.attempts,
            filename: photo.filename,
            source_url: photo.source_url,
            original: OriginalView {
                width: photo.width,
                height: photo.height,
                bytes: photo.bytes,
                sha256: photo.sha256,
                // An imported image not downloaded yet has no original to sign, nor one
                // retention removed.
                signed_url: photo
                    .content_type
                    .as_ref()
                    .filter(|_| photo.original_removed_at.is_none())
                    .and_then(|_| signing.url(&original_url)),
                removed_at: photo.original_removed_at,
                content_type: photo.content_type,
                url: original_url,
            },
            exif,
            thumbhash: photo.thumbhash,
            reused_from: photo.reused_from,
            variants: variants
                .into_iter()
                .map(|v| {
                    // Served as immutable: the URL names the bytes (`v`, from their hash), so
                    // a reprocessed variant has a new one.
                    let path = format!("{}/variants/{}", photo_url(v.photo_id), v.name);
                    let version = version_of(&v.etag);
                    let url = format!("{path}?v={version}");
                    VariantView {
                        signed_url: signing
                            .url(&path)
                            .map(|signed| signed.replacen('?', &format!("?v={version}&"), 1)),
                        url,
                        name: v.name,
                        width: v.width,
                        height: v.height,
                        bytes: v.bytes,
                        content_type: v.content_type,
                    }
                })
                .collect(),
            created_at: photo.created_at,
            updated_at: photo.updated_at,
            started_at: photo.started_at,
            completed_at: photo.completed_at,
            next_attempt_at: photo.next_attempt_at,
            history: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct PhotoPage {
    pub photos: Vec<PhotoView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/batches/{id}`: the batch's counts, as in a list, and every photo's state.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct BatchView {
    #[serde(flatten)]
    pub summary: BatchSummary,
    pub photos: Vec<PhotoRef>,
}

/// Per-state counts of a batch, and the overall state they add up to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts {
    pub queued: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    pub dead: i64,
    pub cancelled: i64,
}

impl StateCounts {
    pub fn from_rows(rows: &[(String, i64)]) -> Self {
        let mut c = StateCounts::default();
        for (state, n) in rows {
            match PhotoState::parse(state) {
                Some(PhotoState::Queued) => c.queued += n,
                Some(PhotoState::Processing) => c.processing += n,
                Some(PhotoState::Completed) => c.completed += n,
                Some(PhotoState::Failed) => c.failed += n,
                Some(PhotoState::Dead) => c.dead += n,
                Some(PhotoState::Cancelled) => c.cancelled += n,
                // Deleted photos are counted nowhere: they are gone.
                Some(PhotoState::Deleted) | None => {}
            }
        }
        c
    }

    pub fn total(&self) -> i64 {
        self.queued + self.processing + self.completed + self.failed + self.dead + self.cancelled
    }

    pub fn overall(&self) -> &'static str {
        let unfinished = self.queued + self.processing;
        let bad = self.failed + self.dead;
        if unfinished == self.total() && self.processing == 0 {
            "queued"
        } else if unfinished > 0 {
            "processing"
        } else if self.cancelled > 0 {
            "cancelled"
        } else if bad == 0 {
            "completed"
        } else if bad == self.total() {
            "failed"
        } else {
            "completed_with_errors"
        }
    }
}

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only photos of this batch.
    pub batch: Option<Uuid>,
    /// Only photos in this state.
    pub state: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Photos per page, 1–200 (default 50).
    pub limit: Option<i64>,
}

/// `202 Accepted` answer to an import.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ImportResponse {
    pub import_id: Uuid,
    /// Where to follow the import.
    pub url: String,
    pub products: Vec<ImportedProduct>,
}

/// A product as an import recorded it.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ImportedProduct {
    pub id: Uuid,
    pub external_id: String,
    /// False when an earlier import made the product and this one updated it.
    pub created: bool,
    pub url: String,
    /// The product's images in order, each a photo.
    pub images: Vec<ImportedImage>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ImportedImage {
    /// The photo's id.
    pub id: Uuid,
    /// The photo's state: `queued` for a new image; an image the product already had keeps
    /// its photo and state.
    pub state: String,
    /// The photo's URL.
    pub url: String,
    pub source_url: String,
}

pub fn product_url(id: Uuid) -> String {
    format!("/v1/products/{id}")
}

/// Where an import stands.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ImportView {
    pub id: Uuid,
    /// processing (some product still processing) | completed (every product processed) |
    /// completed_with_errors | failed (every product process_error)
    pub state: String,
    pub products: ProductCounts,
    /// The images of the import's products, by photo state.
    pub images: ImageCounts,
    pub created_at: DateTime<Utc>,
    /// Its products, paginated.
    pub products_url: String,
}

#[derive(Debug, Default, Serialize, Deserialize, Apiv2Schema)]
pub struct ProductCounts {
    pub total: i64,
    pub processing: i64,
    pub processed: i64,
    pub process_error: i64,
}

impl ProductCounts {
    pub fn from_rows(rows: &[(String, i64)]) -> Self {
        let mut c = ProductCounts::default();
        for (state, n) in rows {
            match state.as_str() {
                PRODUCT_PROCESSING => c.processing += n,
                PRODUCT_PROCESSED => c.processed += n,
                PRODUCT_ERROR => c.process_error += n,
                _ => {}
            }
            c.total += n;
        }
        c
    }

    pub fn overall(&self) -> &'static str {
        if self.processing > 0 {
            "processing"
        } else if self.process_error == 0 {
            "completed"
        } else if self.process_error == self.total {
            "failed"
        } else {
            "completed_with_errors"
        }
    }
}

/// Product states: `processing` while any image is unfinished, then `processed` (every
/// image completed) or `process_error` (any image failed or dead).
pub const PRODUCT_PROCESSING: &str = "processing";
pub const PRODUCT_PROCESSED: &str = "processed";
pub const PRODUCT_ERROR: &str = "process_error";
pub const PRODUCT_STATES: [&str; 3] = [PRODUCT_PROCESSING, PRODUCT_PROCESSED, PRODUCT_ERROR];

#[derive(Debug, Default, Serialize, Deserialize, Apiv2Schema)]
pub struct ImageCounts {
    pub total: i64,
    pub queued: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    pub dead: i64,
    pub cancelled: i64,
}

impl From<StateCounts> for ImageCounts {
    fn from(c: StateCounts) -> Self {
        ImageCounts {
            total: c.total(),
            queued: c.queued,
            processing: c.processing,
            completed: c.completed,
            failed: c.failed,
            dead: c.dead,
            cancelled: c.cancelled,
        }
    }
}

/// A product and its images.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ProductView {
    pub id: Uuid,
    pub external_id: String,
    pub name: Option<String>,
    /// processing | processed | process_error
    pub state: String,
    /// Why images failed: one entry per failed or dead image.
    pub errors: Vec<ProductError>,
    /// The images in order, as photos (same JSON as `GET /v1/photos/{id}`).
    pub images: Vec<PhotoView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ProductError {
    /// Position of the image in the product's `images`.
    pub position: usize,
    pub photo_id: Uuid,
    pub source_url: Option<String>,
    /// failed | dead
    pub state: String,
    /// Stable code, e.g. `download_not_found`, `download_not_an_image`.
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ProductPage {
    pub products: Vec<ProductView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct ProductQuery {
    /// Only products of this import.
    pub import: Option<Uuid>,
    /// Only the product with this external id.
    pub external_id: Option<String>,
    /// Only products in this state: processing | processed | process_error.
    pub state: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Products per page, 1–200 (default 50).
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Only photos of this batch.
    pub batch: Option<Uuid>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Photos per page, 1–200 (default 50).
    pub limit: Option<i64>,
}

/// Which dead letters to put back in the queue; `{}` means all of the caller's.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only photos of this batch.
    pub batch: Option<Uuid>,
    /// Also retry photos that `failed` (e.g. after raising a limit), not only `dead` ones.
    pub include_failed: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct RedriveResponse {
    /// How many photos were put back in the queue.
    pub redriven: usize,
    pub photos: Vec<PhotoRef>,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct Readiness {
    /// ready | unavailable
    pub status: String,
    /// up | down
    pub database: String,
    /// up | down
    pub redis: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_state_follows_counts() {
        let c = |q, p, c, f, d| StateCounts {
            queued: q,
            processing: p,
            completed: c,
            failed: f,
            dead: d,
            cancelled: 0,
        };
        assert_eq!(c(3, 0, 0, 0, 0).overall(), "queued");
        assert_eq!(c(2, 1, 0, 0, 0).overall(), "processing");
        assert_eq!(c(1, 0, 2, 0, 0).overall(), "processing");
        assert_eq!(c(0, 0, 3, 0, 0).overall(), "completed");
        assert_eq!(c(0, 0, 2, 1, 0).overall(), "completed_with_errors");
        assert_eq!(c(0, 0, 0, 1, 1).overall(), "failed");
        let cancelled = StateCounts {
            cancelled: 2,
            ..c(0, 0, 1, 0, 0)
        };
        assert_eq!(cancelled.overall(), "cancelled");
        assert_eq!(cancelled.total(), 3);
    }
}

/// `GET /v1/stats`: the caller's photos not yet final.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct UnfinishedCounts {
    /// Waiting to start (or for a retry).
    pub queued: i64,
    /// Being processed now.
    pub processing: i64,
}

/// A batch's counts and overall state.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct BatchSummary {
    pub id: Uuid,
    /// queued (nothing started) | processing | completed (all completed) |
    /// completed_with_errors (all done, some failed or dead) | failed (all failed or dead) |
    /// cancelled (cancelled before all had started)
    pub state: String,
    /// Photos of the batch, deleted ones left out.
    pub total: i64,
    pub queued: i64,
    pub processing: i64,
    pub completed: i64,
    pub failed: i64,
    pub dead: i64,
    pub cancelled: i64,
    pub created_at: DateTime<Utc>,
    pub url: String,
}

impl BatchSummary {
    pub fn new(batch: &crate::db::models::Batch, counts: StateCounts) -> Self {
        BatchSummary {
            id: batch.id,
            state: counts.overall().to_owned(),
            total: counts.total(),
            queued: counts.queued,
            processing: counts.processing,
            completed: counts.completed,
            failed: counts.failed,
            dead: counts.dead,
            cancelled: counts.cancelled,
            created_at: batch.created_at,
            url: format!("/v1/batches/{}", batch.id),
        }
    }
}

/// `GET /v1/batches`: the caller's batches, newest first.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct BatchPage {
    pub batches: Vec<BatchSummary>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
#[serde(deny_unknown_fields)]
pub struct BatchListQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Batches per page, 1–200 (default 50).
    pub limit: Option<i64>,
}

/// `GET /v1/operator/overview`: the queue as a whole. Aggregates only: no photo of any
/// owner appears here.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct OperatorOverview {
    pub lanes: Vec<LaneView>,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Photos of every owner not yet final.
    pub unfinished: UnfinishedCounts,
    /// How long the oldest photo due to start has waited, seconds (absent when none waits).
    pub oldest_waiting_secs: Option<f64>,
    /// Every worker the consumer groups know, most recently active first.
    pub workers: Vec<WorkerView>,
    /// Attempts that ended in an error over the last `error_window_minutes`, by code, most
    /// frequent first.
    pub recent_errors: Vec<ErrorCount>,
    pub error_window_minutes: u64,
}

/// One lane's stream.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct LaneView {
    /// interactive | bulk
    pub lane: String,
    /// Entries waiting or delivered and not acknowledged.
    pub entries: u64,
    /// Delivered to a worker, not acknowledged.
    pub pending: u64,
    /// Not yet delivered to any worker (the consumer group's lag).
    pub waiting: u64,
    /// Retries waiting for their time.
    pub scheduled: u64,
}

/// A worker (consumer) of a lane.
#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct WorkerView {
    /// The worker's consumer name (host, process and task).
    pub name: String,
    pub lane: String,
    /// Entries delivered to it and not acknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
    /// Read or claimed within the last minute.
    pub active: bool,
}

#[derive(Debug, Serialize, Deserialize, Apiv2Schema)]
pub struct ErrorCount {
    /// The stable error code, as in a photo's `error_code`.
    pub code: String,
    pub attempts: u64,
}
