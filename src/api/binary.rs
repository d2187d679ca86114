//! Responses that carry image bytes, documented as files in the OpenAPI document.

use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::http::header::{self, EntityTag};
use actix_web::{HttpRequest, HttpResponse, Responder};
use bytes::Bytes;
use paperclip::actix::{Apiv2Schema, OperationModifier};
use paperclip::v2::models::{DataType, DefaultOperationRaw, DefaultSchemaRaw, Either, Response};
use serde::Deserialize;

use super::error::ApiError;
use crate::storage::Storage;

/// A URL that names its bytes (an original's, a variant's with its `v`) never answers
/// other bytes, so clients may keep them.
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";
/// A variant asked for without the `v` of its bytes: kept, but checked again (ETag) each
/// time, as reprocessing may give it new bytes.
const REVALIDATE: &str = "private, no-cache";

/// Options of the routes that serve stored images.
/// Other parameters are ignored (cache busters, say).
#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct ServeQuery {
    /// With `storage.serve = "redirect"`: `false` asks for the bytes through the API instead
    /// of a redirect to the bucket (for pages whose policy allows only their own origin).
    /// Ignored otherwise.
    pub redirect: Option<bool>,
    /// A signed URL's expiry (Unix seconds), with `kid` and `sig`: as given in `signed_url`.
    pub exp: Option<i64>,
    /// The id of the key a signed URL was signed with.
    pub kid: Option<String>,
    /// Variants: the version of the bytes, as the photo's JSON gives it in `url`. When it
    /// names the bytes served, they are cached as immutable; otherwise revalidated.
    pub v: Option<String>,
}

/// A stored image as answered: its bytes, "not modified", or a redirect to a presigned GET.
pub enum ImageBytes {
    Bytes {
        content_type: String,
        etag: String,
        body: Bytes,
        immutable: bool,
    },
    NotModified {
        etag: String,
        immutable: bool,
    },
    Redirect {
        location: String,
        ttl: Duration,
        immutable: bool,
    },
}

impl ImageBytes {
    /// The object at `key`: a 304 when the request already holds this `etag`, a redirect
    /// when storage serves by redirects (and the request did not ask otherwise), else its
    /// bytes; cached as `immutable` when the URL names these bytes.
    pub async fn serve(
        req: &HttpRequest,
        query: &ServeQuery,
        storage: &Storage,
        key: &str,
        content_type: String,
        etag: String,
        immutable: bool,
    ) -> Result<Self, ApiError> {
        if Self::not_modified(req, &etag) {
            return Ok(ImageBytes::NotModified { etag, immutable });
        }
        if query.redirect != Some(false) {
            if let Some((url, ttl)) = storage.presigned_get(key, &content_type).await? {
                return Ok(ImageBytes::Redirect {
                    location: url.into(),
                    ttl,
                    immutable,
                });
            }
        }
        Ok(ImageBytes::Bytes {
            body: storage.get(key).await?,
            content_type,
            etag,
            immutable,
        })
    }

    /// True when the request's `If-None-Match` already names this entity.
    fn not_modified(req: &HttpRequest, etag: &str) -> bool {
        req.headers()
            .get_all(header::IF_NONE_MATCH)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag)
    }
}

impl Responder for ImageBytes {
    type Body = BoxBody;

    fn respond_to(self, _req: &HttpRequest) -> HttpResponse {
        match self {
            ImageBytes::NotModified { etag, immutable } => HttpResponse::NotModified()
                .insert_header(header::ETag(EntityTag::new_strong(etag)))
                .insert_header((header::CACHE_CONTROL, cache_control(immutable)))
                .finish(),
            ImageBytes::Bytes {
                content_type,
                etag,
                body,
                immutable,
            } => HttpResponse::Ok()
                .content_type(content_type)
                // Browsers must take the sniffed type we send, never guess another.
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .insert_header(header::ETag(EntityTag::new_strong(etag)))
                .insert_header((header::CACHE_CONTROL, cache_control(immutable)))
                .body(body),
            // Cached for half the URL's life, so a cached redirect never points at an
            // expired URL; not at all when the URL does not name the bytes (they may change).
            ImageBytes::Redirect {
                location,
                ttl,
                immutable,
            } => HttpResponse::Found()
                .insert_header((header::LOCATION, location))
                .insert_header((
                    header::CACHE_CONTROL,
                    if immutable {
                        format!("private, max-age={}", ttl.as_secs() / 2)
                    } else {
                        REVALIDATE.to_owned()
                    },
                ))
                .finish(),
        }
    }
}

fn cache_control(immutable: bool) -> &'static str {
    if immutable {
        CACHE_CONTROL
    } else {
        REVALIDATE
    }
}

impl paperclip::v2::schema::Apiv2Schema for ImageBytes {}

impl OperationModifier for ImageBytes {
    fn update_response(op: &mut DefaultOperationRaw) {
        op.responses.insert(
            "200".into(),
            Either::Right(Response {
                description: Some("The image bytes, with ETag and Cache-Control".into()),
                schema: Some(DefaultSchemaRaw {
                    data_type: Some(DataType::File),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        op.responses.insert(
            "302".into(),
            Either::Right(Response {
                description: Some(
                    "With storage.serve = \"redirect\": Location is a presigned GET of the \
                     image in the bucket, valid for storage.redirect_ttl_secs"
                        .into(),
                ),
                ..Default::default()
            }),
        );
        op.responses.insert(
            "304".into(),
            Either::Right(Response {
                description: Some("Not modified (If-None-Match matched the ETag)".into()),
                ..Default::default()
            }),
        );
    }
}
