//! `POST /v1/photos`: multipart upload of one or many photos.
//!
//! Each file is streamed to storage in parts, never held whole: its type is sniffed from its
//! first bytes (before anything is written), its size bounded and its SHA-256 computed on
//! the way; it is stored under a key derived from its new photo id. At most
//! `upload.max_concurrent` upload bodies are read at once; past that a request is answered
//! `503 busy` with `Retry-After`.
//! Then the batch and photo rows are committed in one transaction, and only then are the jobs
//! put on the stream (PostgreSQL first: see DESIGN rule 1).

use actix_multipart::{Field, Multipart};
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use bytes::BytesMut;
use chrono::Utc;
use futures_util::TryStreamExt;
use paperclip::actix::{api_v2_operation, AcceptedJson, OperationModifier};
use paperclip::v2::models::{
    DataType, DefaultOperationRaw, Either, MediaRange, Parameter, ParameterIn,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::models::{PhotoRef, UploadResponse};
use super::AppState;
use crate::db::idempotency;
use crate::db::models::{Batch, NewPhoto, PhotoState};
use crate::pipeline::sniff::SourceFormat;
use crate::pipeline::sniff::{sniff, SNIFF_LEN};
use crate::storage::{self, ObjectWriter};
use std::time::Duration;

/// Name of the multipart field carrying a photo.
pub const FILE_FIELD: &str = "file";
/// Error code of a body that is not well-formed multipart.
const BAD_MULTIPART: &str = "bad_multipart";
/// Longest client file name kept.
const FILENAME_MAX_CHARS: usize = 255;

/// The multipart body, documented as what it really carries: repeated `file` fields.
pub struct PhotoUpload(Multipart);

impl FromRequest for PhotoUpload {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        std::future::ready(Ok(PhotoUpload(Multipart::new(
            req.headers(),
            payload.take(),
        ))))
    }
}

impl paperclip::v2::schema::Apiv2Schema for PhotoUpload {}

impl OperationModifier for PhotoUpload {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        op.parameters.push(Either::Right(Parameter {
            description: Some(
                "A photo (JPEG, PNG, WebP, HEIC or AVIF). Repeat the field to upload several photos \
                 as one batch."
                    .into(),
            ),
            in_: ParameterIn::FormData,
            name: FILE_FIELD.into(),
            required: true,
            data_type: Some(DataType::File),
            ..Default::default()
        }));
        op.consumes = Some([MediaRange(mime::MULTIPART_FORM_DATA)].into());
    }
}

/// Longest `Idempotency-Key` accepted.
const IDEMPOTENCY_KEY_MAX: usize = 255;
/// The header that makes a retried upload safe.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The optional `Idempotency-Key` header: a retried upload with the same key (from the same
/// API key) gets the first answer back instead of making a second batch.
pub struct IdempotencyKey(pub(super) Option<String>);

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = match req.headers().get(IDEMPOTENCY_HEADER) {
            None => Ok(IdempotencyKey(None)),
            Some(v) => match v.to_str() {
                Ok(k) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX => {
                    Ok(IdempotencyKey(Some(k.to_owned())))
                }
                _ => Err(ApiError::BadRequest {
                    code: "bad_header",
                    message: format!(
                        "{IDEMPOTENCY_HEADER} must be 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"
                    ),
                }),
            },
        };
        std::future::ready(key)
    }
}

impl paperclip::v2::schema::Apiv2Schema for IdempotencyKey {}

impl OperationModifier for IdempotencyKey {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        op.parameters.push(Either::Right(Parameter {
            description: Some(
                "Optional. A retried request with the same key returns the first answer \
                 instead of creating a second batch."
                    .into(),
            ),
            in_: ParameterIn::Header,
            name: IDEMPOTENCY_HEADER.into(),
            required: false,
            data_type: Some(DataType::String),
            max_length: Some(IDEMPOTENCY_KEY_MAX as u32),
            ..Default::default()
        }));
    }
}

/// An upload body being read: holds one of the `upload.max_concurrent` permits and counts
/// itself in `photoq_uploads_in_flight` until dropped.
struct Reading {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Reading {
    /// `None` when every permit is taken.
    fn start(state: &AppState) -> Option<Self> {
        let permit = state.uploads.clone().try_acquire_owned().ok()?;
        let gauge = state.metrics.uploads_in_flight.clone();
        gauge.inc();
        Some(Reading {
            _permit: permit,
            gauge,
        })
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One file taken in, stored, not yet committed.
struct Received {
    photo: NewPhoto,
}

/// Upload photos
///
/// Multipart form with one `file` field per photo. Answers 202 with the batch id and, for
/// each photo, its id and status URL; processing happens in the background. With an
/// `Idempotency-Key`, a repeated request gets the first answer and creates nothing.
#[api_v2_operation(tags(Photos))]
pub async fn upload(
    state: web::Data<AppState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    body: PhotoUpload,
) -> Result<AcceptedJson<UploadResponse>, ApiError> {
    let PhotoUpload(mut multipart) = body;
    let IdempotencyKey(idempotency) = idempotency;
    let Some(_reading) = Reading::start(&state) else {
        // Read (and drop) the body all the same, so the client gets the answer rather
        // than a reset connection.
        drain(&mut multipart, state.config.upload.max_file_bytes).await;
        return Err(ApiError::Busy("too many uploads at once"));
    };
    if let Some(key) = &idempotency {
        if let Some(first) = first_answer(&state, caller.owner, key).await? {
            drain(&mut multipart, state.config.upload.max_file_bytes).await;
            return Ok(AcceptedJson(first));
        }
    }
    // An owner whose quota is used up is told before its files are read.
    let admitted = async {
        let mut conn = crate::db::conn(&state.pool).await?;
        crate::db::usage::admit(
            &mut conn,
            caller.owner,
            1,
            0,
            state.config.quotas,
            Utc::now(),
        )
        .await
    }
    .await;
    if let Err(e) = admitted {
        drain(&mut multipart, state.config.upload.max_file_bytes).await;
        return Err(e.into());
    }
    let batch_id = Uuid::now_v7();
    let mut received: Vec<Received> = Vec::new();

    let outcome = receive_all(
        &state,
        caller.owner,
        batch_id,
        &mut multipart,
        &mut received,
    )
    .await;
    if let Err(e) = outcome {
        discard(&state, &received).await;
        // A multipart stream that failed must not be polled again; one we refused is read
        // to its end so the client gets our answer rather than a reset connection.
        if !matches!(
            e,
            ApiError::BadRequest {
                code: BAD_MULTIPART,
                ..
            }
        ) {
            drain(&mut multipart, state.config.upload.max_file_bytes).await;
        }
        return Err(e);
    }
    if received.is_empty() {
        return Err(ApiError::BadRequest {
            code: "no_files",
            message: format!("no photos: send one or more multipart fields named `{FILE_FIELD}`"),
        });
    }

    let batch = Batch {
        id: batch_id,
        owner_id: caller.owner,
        created_at: Utc::now(),
    };
    let photos: Vec<NewPhoto> = received.into_iter().map(|r| r.photo).collect();
    let answer = UploadResponse {
        batch_id,
        photos: photos
            .iter()
            .map(|p| PhotoRef::new(p.id, PhotoState::Queued.as_str()))
            .collect(),
    };
    let answer_json =
        serde_json::to_value(&answer).map_err(|e| ApiError::Internal(e.to_string()))?;
    let committed = async {
        let mut conn = crate::db::conn(&state.pool).await?;
        let idem = idempotency.as_deref().map(|k| (k, &answer_json));
        crate::db::photos::insert_batch(&mut conn, &batch, &photos, idem, state.config.quotas).await
    }
    .await;
    if let Err(e) = committed {
        for p in &photos {
            let _ = state.storage.delete(&p.original_key).await;
        }
        return match lost_race(&state, caller.owner, idempotency.as_deref(), &e).await? {
            Some(first) => Ok(AcceptedJson(first)),
            None => Err(e.into()),
        };
    }

    let jobs: Vec<(Uuid, Option<String>)> = photos
        .iter()
        .map(|p| (p.id, p.trace_parent.clone()))
        .collect();
    publish_accepted(&state, crate::queue::Lane::Interactive, batch_id, &jobs).await;
    state.metrics.photos_uploaded.inc_by(photos.len() as u64);
    state
        .metrics
        .upload_bytes
        .inc_by(photos.iter().filter_map(|p| p.bytes).sum::<i64>().max(0) as u64);
    tracing::info!(batch_id = %batch_id, photos = photos.len(), "batch accepted");

    Ok(AcceptedJson(answer))
}

/// Puts the jobs of photos just committed on the stream. The request is accepted whether
/// or not that works: the rows are committed, and the reconciler publishes unfinished jobs
/// that never reached Redis.
pub(super) async fn publish_accepted(
    state: &AppState,
    lane: crate::queue::Lane,
    batch_id: Uuid,
    jobs: &[(Uuid, Option<String>)],
) {
    state.queue.changes_written();
    let publish = crate::dispatch::publish_new(&state.pool, &state.queue, lane, jobs);
    let timeout = Duration::from_secs(state.config.redis.response_timeout_secs);
    match tokio::time::timeout(timeout, publish).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(batch_id = %batch_id, error = %e, "publish failed; jobs left to the reconciler")
        }
        Err(_) => {
            tracing::warn!(batch_id = %batch_id, "publish timed out; jobs left to the reconciler")
        }
    }
}

/// When a commit failed because a concurrent request with the same idempotency key
/// committed first: that request's answer, to give again.
pub(super) async fn lost_race<T: serde::de::DeserializeOwned>(
    state: &AppState,
    owner: Uuid,
    key: Option<&str>,
    error: &crate::db::DbError,
) -> Result<Option<T>, ApiError> {
    match key.filter(|_| error.violates(idempotency::CONSTRAINT)) {
        Some(key) => first_answer(state, owner, key).await,
        None => Ok(None),
    }
}

/// The answer first given for this idempotency key, if any. A key first used for another
/// kind of request (an upload's key sent with an import) is a conflict.
pub(super) async fn first_answer<T: serde::de::DeserializeOwned>(
    state: &AppState,
    owner: Uuid,
    key: &str,
) -> Result<Option<T>, ApiError> {
    let mut conn = crate::db::conn(&state.pool).await?;
    idempotency::find(&mut conn, owner, key)
        .await?
        .map(|v| {
            serde_json::from_value(v).map_err(|_| {
                ApiError::Conflict(format!(
                    "{IDEMPOTENCY_HEADER} {key:?} was first used for another kind of request"
                ))
            })
        })
        .transpose()
}

async fn receive_all(
    state: &AppState,
    owner: Uuid,
    batch_id: Uuid,
    multipart: &mut Multipart,
    received: &mut Vec<Received>,
) -> Result<(), ApiError> {
    let limits = &state.config.upload;
    while let Some(field) = multipart.try_next().await.map_err(bad_multipart)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name != FILE_FIELD {
            return Err(ApiError::BadRequest {
                code: "unknown_field",
                message: format!(
                    "unexpected multipart field {name:?}; photos go in `{FILE_FIELD}`"
                ),
            });
        }
        if received.len() >= limits.max_files {
            return Err(ApiError::PayloadTooLarge {
                code: "too_many_files",
                message: format!("at most {} files per request", limits.max_files),
            });
        }
        let photo = receive_one(state, owner, batch_id, field, received.len()).await?;
        received.push(Received { photo });
    }
    Ok(())
}

async fn receive_one(
    state: &AppState,
    owner: Uuid,
    batch_id: Uuid,
    mut field: Field,
    index: usize,
) -> Result<NewPhoto, ApiError> {
    let filename = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .map(|f| {
            f.chars()
                .filter(|c| !c.is_control())
                .take(FILENAME_MAX_CHARS)
                .collect::<String>()
        })
        .filter(|f| !f.is_empty());
    let label = filename
        .clone()
        .unwrap_or_else(|| format!("file #{}", index + 1));

    let id = Uuid::now_v7();
    let key = storage::original_key(id);
    let mut writer = None;
    let received = stream_to_storage(state, &mut field, &key, &label, &mut writer).await;
    let (bytes, sha256, format) = match received {
        Ok(done) => done,
        Err(e) => {
            if let Some(w) = writer {
                w.abort().await;
            }
            return Err(e);
        }
    };
    Ok(NewPhoto {
        id,
        batch_id,
        owner_id: owner,
        filename,
        content_type: Some(format.mime().to_owned()),
        bytes: Some(bytes),
        sha256: Some(sha256),
        original_key: key,
        source_url: None,
        trace_parent: Some(crate::telemetry::accepted(id, batch_id)),
    })
}

/// Streams one file to storage under `key`, never holding more than a part of it: its
/// size is bounded, its SHA-256 computed and its type sniffed from its first bytes on the
/// way (nothing is written before the type is known). Returns (size, SHA-256, type).
/// `writer` holds the write under way, for the caller to abort if this fails.
async fn stream_to_storage(
    state: &AppState,
    field: &mut Field,
    key: &str,
    label: &str,
    writer: &mut Option<ObjectWriter>,
) -> Result<(i64, String, SourceFormat), ApiError> {
    let max = state.config.upload.max_file_bytes;
    let mut size: u64 = 0;
    let mut hasher = Sha256::new();
    // The first bytes, kept until there are enough to sniff.
    let mut head = BytesMut::new();
    let mut format = None;
    while let Some(chunk) = field.try_next().await.map_err(bad_multipart)? {
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::PayloadTooLarge {
                code: "file_too_large",
                message: format!("{label} is larger than {max} bytes"),
            });
        }
        hasher.update(&chunk);
        if let Some(w) = writer.as_mut() {
            w.write(chunk).await?;
            continue;
        }
        head.extend_from_slice(&chunk);
        if head.len() >= SNIFF_LEN {
            let sniffed = sniff(&head).ok_or_else(|| unsupported(label))?;
            format = Some(sniffed);
            let w = writer.insert(state.storage.writer(key, sniffed.mime()).await?);
            w.write(head.split().freeze()).await?;
        }
    }
    if size == 0 {
        return Err(ApiError::BadRequest {
            code: "empty_file",
            message: format!("{label} is empty"),
        });
    }
    let format = match format {
        Some(f) => f,
        // Smaller than the sniffing window: all of it is in `head`.
        None => {
            let f = sniff(&head).ok_or_else(|| unsupported(label))?;
            let w = writer.insert(state.storage.writer(key, f.mime()).await?);
            w.write(head.freeze()).await?;
            f
        }
    };
    if let Some(w) = writer.take() {
        w.finish().await?;
    }
    Ok((size as i64, hex::encode(hasher.finalize()), format))
}

fn unsupported(label: &str) -> ApiError {
    ApiError::UnsupportedMediaType(format!(
        "{label} is not a JPEG, PNG, WebP, HEIC or AVIF image (judged from its bytes)"
    ))
}

fn bad_multipart(e: actix_multipart::MultipartError) -> ApiError {
    ApiError::BadRequest {
        code: BAD_MULTIPART,
        message: format!("malformed multipart body: {e}"),
    }
}

/// Removes the originals of a request that was refused part-way.
async fn discard(state: &AppState, received: &[Received]) {
    for r in received {
        if let Err(e) = state.storage.delete(&r.photo.original_key).await {
            tracing::warn!(key = %r.photo.original_key, error = %e, "could not remove original");
        }
    }
}

/// Reads what is left of a refused request, up to a bound.
async fn drain(multipart: &mut Multipart, max_bytes: u64) {
    let mut left = max_bytes;
    while let Ok(Some(mut field)) = multipart.try_next().await {
        while let Ok(Some(chunk)) = field.try_next().await {
            match left.checked_sub(chunk.len() as u64) {
                Some(l) => left = l,
                None => return,
            }
        }
    }
}
