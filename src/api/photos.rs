//! Reading photos: one, a page of them, a variant's bytes, the original's bytes.

use actix_web::{web, HttpRequest};
use paperclip::actix::{api_v2_operation, web::Json, AcceptedJson};
use uuid::Uuid;

use super::auth::{Caller, ImageCaller};
use super::binary::{ImageBytes, ServeQuery};
use super::error::ApiError;
use super::models::{ListQuery, PhotoPage, PhotoRef, PhotoView, Viewer};
use super::AppState;
use crate::db::{self, jobs::RedriveFilter, models::PhotoState, photos::ListFilter};
use crate::dispatch;

/// Page size when `limit` is not given, and the largest allowed.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

/// Get a photo
///
/// State, timestamps, attempts, error, EXIF and variants with their URLs.
#[api_v2_operation(tags(Photos))]
pub async fn get_photo(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<PhotoView>, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    let photo = db::photos::get(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("photo"))?;
    let variants = db::photos::variants_of(&mut conn, &[id]).await?;
    let history = db::attempts::of_photo(&mut conn, id).await?;
    let mut view = PhotoView::new(photo, variants, Viewer::of(&state.config, caller.scopes));
    view.history = Some(history.into_iter().map(Into::into).collect());
    Ok(Json(view))
}

/// List photos
///
/// Newest last, keyset-paginated: pass `next_cursor` back as `cursor`. Filter by `batch`
/// and `state`.
#[api_v2_operation(tags(Photos))]
pub async fn list_photos(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<Json<PhotoPage>, ApiError> {
    let q = query.into_inner();
    let state_filter = q
        .state
        .as_deref()
        .map(|s| {
            // Deleted photos are gone: not a state to list by.
            PhotoState::parse(s)
                .filter(|st| *st != PhotoState::Deleted)
                .ok_or_else(|| {
                    ApiError::bad_query(format!(
                        "state must be one of queued, processing, completed, failed, dead, \
                         cancelled; got {s:?}"
                    ))
                })
        })
        .transpose()?;
    let page = page(&state, &caller, q.batch, state_filter, q.cursor, q.limit).await?;
    Ok(Json(page))
}

/// The keyset cursor (the last id of the previous page) and the page size, checked.
pub(super) fn keyset(
    cursor: Option<&str>,
    limit: Option<i64>,
) -> Result<(Option<Uuid>, i64), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_query(format!("limit must be 1..={MAX_PAGE}")));
    }
    let after = cursor
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| {
                ApiError::bad_query("invalid cursor: pass back a `next_cursor` unchanged")
            })
        })
        .transpose()?;
    Ok((after, limit))
}

/// Photos with their variants, in the order of `photos`.
pub(super) async fn views(
    conn: &mut diesel_async::AsyncPgConnection,
    photos: Vec<crate::db::models::Photo>,
    signing: Viewer<'_>,
) -> Result<Vec<PhotoView>, ApiError> {
    let ids: Vec<Uuid> = photos.iter().map(|p| p.id).collect();
    let mut variants = db::photos::variants_of(conn, &ids).await?;
    Ok(photos
        .into_iter()
        .map(|p| {
            let mine: Vec<_> = variants.extract_if(.., |v| v.photo_id == p.id).collect();
            PhotoView::new(p, mine, signing)
        })
        .collect())
}

/// One page of the owner's photos, with their variants.
pub(super) async fn page(
    state: &AppState,
    caller: &Caller,
    batch: Option<Uuid>,
    photo_state: Option<PhotoState>,
    cursor: Option<String>,
    limit: Option<i64>,
) -> Result<PhotoPage, ApiError> {
    let (after, limit) = keyset(cursor.as_deref(), limit)?;
    let owner = caller.owner;
    if let Some(batch) = batch {
        super::batches::owned(state, owner, batch).await?;
    }
    let filter = ListFilter {
        batch,
        state: photo_state,
        after,
        limit,
    };
    let mut conn = db::conn(&state.pool).await?;
    let photos = db::photos::list(&mut conn, owner, &filter).await?;
    let next_cursor = (photos.len() as i64 == limit)
        .then(|| photos.last().map(|p| p.id.to_string()))
        .flatten();
    let photos = views(&mut conn, photos, Viewer::of(&state.config, caller.scopes)).await?;
    Ok(PhotoPage {
        photos,
        next_cursor,
    })
}

/// Retry a photo
///
/// Puts a `dead` or `failed` photo back in the queue with a fresh attempt budget. 409 if the
/// photo is in any other state.
#[api_v2_operation(tags(Photos))]
pub async fn retry_photo(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<AcceptedJson<PhotoRef>, ApiError> {
    let id = path.into_inner();
    let photo = {
        let mut conn = db::conn(&state.pool).await?;
        db::photos::get(&mut conn, caller.owner, id)
            .await?
            .ok_or(ApiError::NotFound("photo"))?
    };
    let filter = RedriveFilter {
        owner: Some(caller.owner),
        photo: Some(id),
        include_failed: true,
        ..Default::default()
    };
    let ids = dispatch::redrive(&state.pool, &state.queue, &filter).await?;
    if ids.is_empty() {
        return Err(ApiError::Conflict(format!(
            "photo is {}; only dead or failed photos can be retried",
            photo.state
        )));
    }
    Ok(AcceptedJson(PhotoRef::new(id, PhotoState::Queued.as_str())))
}

/// Get a variant's bytes
///
/// The image (e.g. `thumbnail`, `preview`), with its Content-Type, a strong ETag and
/// Cache-Control. Answers 304 to a matching `If-None-Match`. Opens with a key, or without
/// one by the variant's `signed_url` until it expires.
#[api_v2_operation(tags(Photos))]
pub async fn get_variant(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: ImageCaller,
    path: web::Path<(Uuid, String)>,
    query: web::Query<ServeQuery>,
) -> Result<ImageBytes, ApiError> {
    let (id, name) = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    db::photos::get_for(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("photo"))?;
    let variant = db::photos::variant(&mut conn, id, &name)
        .await?
        .ok_or(ApiError::NotFound("variant"))?;
    drop(conn);
    let named = query
        .v
        .as_deref()
        .is_some_and(|v| v == super::models::version_of(&variant.etag));
    ImageBytes::serve(
        &req,
        &query,
        &state.storage,
        &variant.storage_key,
        variant.content_type,
        variant.etag,
        named,
    )
    .await
}

/// Get the original's bytes
///
/// The file as uploaded, with its sniffed Content-Type. Opens with a key, or without one by
/// the original's `signed_url` until it expires. Once retention has removed it
/// (`retention.originals_days`), 410 `original_removed`.
#[api_v2_operation(tags(Photos))]
pub async fn get_original(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: ImageCaller,
    path: web::Path<Uuid>,
    query: web::Query<ServeQuery>,
) -> Result<ImageBytes, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    let photo = db::photos::get_for(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("photo"))?;
    drop(conn);
    if photo.original_removed_at.is_some() {
        return Err(ApiError::OriginalRemoved);
    }
    // An imported image not downloaded yet has no original.
    let (Some(content_type), Some(sha256)) = (photo.content_type, photo.sha256) else {
        return Err(ApiError::NotFound("original"));
    };
    ImageBytes::serve(
        &req,
        &query,
        &state.storage,
        &photo.original_key,
        content_type,
        sha256,
        true,
    )
    .await
}
