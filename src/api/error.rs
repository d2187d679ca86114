//! The one place errors become HTTP: `{"error": {"code": "...", "message": "..."}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use paperclip::actix::{api_v2_errors, Apiv2Schema};
use serde::Serialize;

use crate::db::DbError;
use crate::storage::StorageError;

/// Seconds a `busy` answer asks the client to wait.
const BUSY_RETRY_SECS: u64 = 1;

/// The body of every error response.
#[derive(Debug, Serialize, Apiv2Schema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Apiv2Schema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `unsupported_media_type`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Every problem found in the items of a request (`invalid_items` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<Problem>>,
}

/// One problem with one item of a request.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Apiv2Schema)]
pub struct Problem {
    /// Position of the item (0-based; for CSV, the data row, header excluded).
    pub index: usize,
    /// The field at fault, e.g. `external_id` or `images[2]`.
    pub field: String,
    pub message: String,
}

#[api_v2_errors(
    code = 400,
    description = "Bad request: malformed input",
    code = 401,
    description = "Missing, unknown or revoked API key",
    code = 403,
    description = "The key lacks the scope the route needs (its description names it), or would give another key a scope it lacks; a signed URL expired (`url_expired`) or altered (`bad_signature`); uploads and imports: the owner's storage quota is used up (`storage_quota_exceeded`)",
    code = 404,
    description = "No such resource, or it belongs to another key",
    code = 409,
    description = "The resource is not in a state that allows this",
    code = 410,
    description = "The photo's original was removed by retention (`original_removed`); its variants remain",
    code = 413,
    description = "Too many files, or a file over the size limit",
    code = 415,
    description = "Not a supported image type (judged from the bytes)",
    code = 422,
    description = "Some items of the request are invalid (`invalid_items`); `problems` lists each with its index and field; nothing was stored",
    code = 429,
    description = "Too many requests for the key, or failed authentications from the address; uploads and imports: the owner's photos for the day are used up (`daily_quota_exceeded`, until midnight UTC); see Retry-After",
    code = 503,
    description = "PostgreSQL or storage unreachable (`unavailable`), or too busy (`busy`, with Retry-After); retry later",
    code = 500,
    description = "Internal error",
    default_schema = "ErrorBody"
)]
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing, unknown or revoked API key; send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The key is valid but may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A signed URL that does not open: expired, altered, or signing not enabled.
    #[error("{0}")]
    Signature(#[from] crate::signing::SignatureError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// A request would take its owner past a quota (`[quotas]`).
    #[error("{0}")]
    Quota(crate::db::usage::Exceeded),
    /// Retention removed the photo's original (`retention.originals_days`).
    #[error("the original was removed by retention; the variants remain")]
    OriginalRemoved,
    #[error("{message}")]
    PayloadTooLarge { code: &'static str, message: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Items of a request that cannot be accepted, each with its index and field.
    #[error("{} item problem(s); nothing was stored", .0.len())]
    Invalid(Vec<Problem>),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Over a rate limit; the client may come back after the given time.
    #[error("too many requests; retry in {} s", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
    /// Too much work at once (e.g. too many uploads being read); retry after a moment.
    #[error("too busy: {0}; retry in a moment")]
    Busy(&'static str),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "bad_request",
            message: message.into(),
        }
    }

    /// A query parameter out of its range or format.
    pub fn bad_query(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "bad_query",
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::PayloadTooLarge { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Signature(crate::signing::SignatureError::Expired) => "url_expired",
            ApiError::Signature(_) => "bad_signature",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::OriginalRemoved => "original_removed",
            ApiError::Quota(crate::db::usage::Exceeded::PhotosPerDay { .. }) => {
                "daily_quota_exceeded"
            }
            ApiError::Quota(crate::db::usage::Exceeded::BytesStored { .. }) => {
                "storage_quota_exceeded"
            }
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Invalid(_) => "invalid_items",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Busy(_) => "busy",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Signature(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::OriginalRemoved => StatusCode::GONE,
            ApiError::Quota(crate::db::usage::Exceeded::PhotosPerDay { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Quota(crate::db::usage::Exceeded::BytesStored { .. }) => {
                StatusCode::FORBIDDEN
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            ApiError::Internal(detail) => {
                // Logged, never shown.
                tracing::error!(error = %detail, "internal error");
                self.to_string()
            }
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "dependency unavailable");
                "a backing service is unavailable; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        let retry_after = match self {
            ApiError::Busy(_) => Some(BUSY_RETRY_SECS),
            // Whole seconds, rounded up.
            ApiError::RateLimited(wait) => Some(wait.as_millis().div_ceil(1000).max(1) as u64),
            ApiError::Quota(crate::db::usage::Exceeded::PhotosPerDay { resets_at, .. }) => {
                Some((*resets_at - chrono::Utc::now()).num_seconds().max(1) as u64)
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
                problems: match self {
                    ApiError::Invalid(p) => Some(p.clone()),
                    _ => None,
                },
            },
        })
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if let DbError::Quota(exceeded) = e {
            return ApiError::Quota(exceeded);
        }
        if e.is_transient() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<crate::dispatch::DispatchError> for ApiError {
    fn from(e: crate::dispatch::DispatchError) -> Self {
        match e {
            crate::dispatch::DispatchError::Db(e) => e.into(),
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound(_) => ApiError::NotFound("object"),
            StorageError::Backend(m) => ApiError::Unavailable(m),
        }
    }
}

/// A malformed path: `bad_path`.
pub fn path_error(err: actix_web::error::PathError) -> actix_web::Error {
    bad("bad_path", format!("malformed path: {err}"))
}

/// A malformed query string, or one with a parameter the route does not take: `bad_query`.
pub fn query_error(err: actix_web::error::QueryPayloadError) -> actix_web::Error {
    bad("bad_query", format!("malformed query: {err}"))
}

/// A JSON body of the wrong Content-Type (`bad_content_type`), or malformed, or with a
/// field the route does not take (`bad_json`).
pub fn json_error(err: actix_web::error::JsonPayloadError) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::ContentType => bad(
            "bad_content_type",
            "the body must be JSON, sent with Content-Type: application/json".into(),
        ),
        other => bad("bad_json", format!("malformed JSON body: {other}")),
    }
}

fn bad(code: &'static str, message: String) -> actix_web::Error {
    ApiError::BadRequest { code, message }.into()
}
