//! Responses that carry image bytes, documented as files in the OpenAPI document.

use actix_web::body::BoxBody;
use actix_web::http::header::{self, EntityTag};
use actix_web::{HttpRequest, HttpResponse, Responder};
use bytes::Bytes;
use paperclip::actix::OperationModifier;
use paperclip::v2::models::{DataType, DefaultOperationRaw, DefaultSchemaRaw, Either, Response};

use super::error::ApiError;
use crate::storage::Storage;

/// Variants and originals never change under the same URL, so clients may keep them.
const CACHE_CONTROL: &str = "private, max-age=31536000, immutable";

pub struct ImageBytes {
    pub content_type: String,
    pub etag: String,
    pub body: Option<Bytes>,
}

impl ImageBytes {
    /// The object at `key`, or a 304 when the request already holds this `etag`.
    pub async fn serve(
        req: &HttpRequest,
        storage: &Storage,
        key: &str,
        content_type: String,
        etag: String,
    ) -> Result<Self, ApiError> {
        let body = if Self::not_modified(req, &etag) {
            None
        } else {
            Some(storage.get(key).await?)
        };
        Ok(ImageBytes {
            content_type,
            etag,
            body,
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
        let tag = EntityTag::new_strong(self.etag);
        match self.body {
            None => HttpResponse::NotModified()
                .insert_header(header::ETag(tag))
                .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
                .finish(),
            Some(body) => HttpResponse::Ok()
                .content_type(self.content_type)
                // Browsers must take the sniffed type we send, never guess another.
                .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .insert_header(header::ETag(tag))
                .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
                .body(body),
        }
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
            "304".into(),
            Either::Right(Response {
                description: Some("Not modified (If-None-Match matched the ETag)".into()),
                ..Default::default()
            }),
        );
    }
}
