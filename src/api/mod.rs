//! The HTTP API (actix-web, documented with paperclip): routes, extractors, the error
//! mapping, and the OpenAPI document with Swagger UI.

pub mod account;
pub mod auth;
pub mod batches;
pub mod binary;
pub mod dead_letters;
pub mod error;
pub mod events;
pub mod health;
pub mod import_body;
pub mod imports;
pub mod keys;
pub mod lifecycle;
pub mod models;
pub mod openapi;
pub mod operator;
pub mod photos;
pub mod products;
pub mod reprocess;
pub mod upload;
pub mod webhooks;
pub mod ws;

use std::sync::Arc;

use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{body::MessageBody, HttpResponse};
use paperclip::actix::{web, OpenApiExt};
use paperclip::v2::models::{DefaultApiRaw, Info, Tag};

use crate::config::Config;
use crate::db::DbPool;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::storage::Storage;
use error::{json_error, path_error, query_error, ApiError};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: DbPool,
    pub queue: Queue,
    pub storage: Storage,
    pub metrics: Metrics,
    /// One permit per upload body being read (`upload.max_concurrent`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    pub limiter: crate::limits::Limiter,
    /// The address rules import URLs are checked against before they are accepted.
    pub fetch_rules: Arc<crate::fetch::Rules>,
    /// Hands this process's event followers their owners' new events.
    pub hub: crate::events::Hub,
}

/// Largest JSON body accepted (the JSON routes take a few small fields).
const JSON_BODY_LIMIT: usize = 64 * 1024;
/// One line per request: request line, status, response bytes, milliseconds.
const ACCESS_LOG_FORMAT: &str = "%r %s %b %Dms";
/// Where the OpenAPI document and Swagger UI are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";
/// Files of the Swagger UI bundle; any other path under /docs is a 404.
const DOCS_FILES: &[&str] = &[
    "index.html",
    "swagger-ui.css",
    "swagger-ui.js",
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "swagger-ui-es-bundle.js",
    "swagger-ui-es-bundle-core.js",
    "oauth2-redirect.html",
    "favicon-16x16.png",
    "favicon-32x32.png",
];

fn spec() -> DefaultApiRaw {
    DefaultApiRaw {
        info: Info {
            title: "photoq".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some(
                "Upload photos, follow their processing, fetch thumbnails, previews and EXIF. \
                 Authenticate with `Authorization: Bearer <key>`. Errors are \
                 `{\"error\": {\"code\", \"message\"}}`."
                    .into(),
            ),
            ..Default::default()
        },
        tags: [
            "Photos",
            "Batches",
            "Imports",
            "Events",
            "Webhooks",
            "Keys",
            "DeadLetters",
            "Operations",
        ]
        .iter()
        .map(|t| Tag {
            name: (*t).into(),
            ..Default::default()
        })
        .collect(),
        ..Default::default()
    }
}

/// What a worker-only process serves (`worker.metrics_bind`): `/metrics` and `/healthz`.
pub fn metrics_app(
    metrics: crate::metrics::Metrics,
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .route(
            "/metrics",
            actix_web::web::get().to(move || {
                let metrics = metrics.clone();
                async move { health::render(&metrics) }
            }),
        )
        .route("/healthz", actix_web::web::get().to(health::healthz))
}

/// The whole application: routes, documentation, JSON errors everywhere.
pub fn app(
    state: AppState,
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .wrap(actix_web::middleware::from_fn(guard_docs))
        .wrap(actix_web::middleware::from_fn(observe_http))
        .wrap(actix_web::middleware::from_fn(amend_spec))
        .wrap(cors(&state.config.cors))
        .wrap(actix_web::middleware::Logger::new(ACCESS_LOG_FORMAT))
        // A WebSocket upgrade, outside paperclip (`openapi::amend` documents it); ahead of
        // the `/v1` scope, which would otherwise take the path.
        .route("/v1/ws", actix_web::web::get().to(ws::ws))
        .wrap_api_with_spec(spec())
        .app_data(actix_web::web::Data::new(state))
        .app_data(actix_web::web::PathConfig::default().error_handler(|e, _| path_error(e)))
        .app_data(actix_web::web::QueryConfig::default().error_handler(|e, _| query_error(e)))
        .app_data(
            actix_web::web::JsonConfig::default()
                .limit(JSON_BODY_LIMIT)
                .error_handler(|e, _| json_error(e)),
        )
        .service(
            web::scope("/v1")
                .service(
                    web::resource("/photos")
                        .route(web::post().to(upload::upload))
                        .route(web::get().to(photos::list_photos)),
                )
                .service(
                    web::resource("/photos/{id}")
                        .route(web::get().to(photos::get_photo))
                        .route(web::delete().to(lifecycle::delete_photo)),
                )
                .service(
                    web::resource("/photos/{id}/retry").route(web::post().to(photos::retry_photo)),
                )
                .service(
                    web::resource("/photos/{id}/reprocess")
                        .route(web::post().to(reprocess::reprocess_photo)),
                )
                .service(
                    web::resource("/batches/{id}/reprocess")
                        .route(web::post().to(reprocess::reprocess_batch)),
                )
                .service(web::resource("/reprocess/{id}").route(web::get().to(reprocess::get_run)))
                .service(
                    web::resource("/dead-letters")
                        .route(web::get().to(dead_letters::list_dead_letters)),
                )
                .service(
                    web::resource("/dead-letters/redrive")
                        .route(web::post().to(dead_letters::redrive)),
                )
                .service(
                    web::resource("/photos/{id}/variants/{name}")
                        .route(web::get().to(photos::get_variant)),
                )
                .service(
                    web::resource("/photos/{id}/original")
                        .route(web::get().to(photos::get_original)),
                )
                .service(web::resource("/me").route(web::get().to(account::me)))
                .service(web::resource("/usage").route(web::get().to(account::usage)))
                .service(
                    web::resource("/keys")
                        .route(web::post().to(keys::create_key))
                        .route(web::get().to(keys::list_keys)),
                )
                .service(web::resource("/keys/{id}").route(web::delete().to(keys::revoke_key)))
                .service(web::resource("/stats").route(web::get().to(account::stats)))
                .service(
                    web::resource("/operator/overview").route(web::get().to(operator::overview)),
                )
                .service(web::resource("/batches").route(web::get().to(batches::list_batches)))
                .service(
                    web::resource("/batches/{id}")
                        .route(web::get().to(batches::get_batch))
                        .route(web::delete().to(lifecycle::delete_batch)),
                )
                .service(
                    web::resource("/batches/{id}/cancel")
                        .route(web::post().to(lifecycle::cancel_batch)),
                )
                .service(
                    web::resource("/batches/{id}/events")
                        .route(web::get().to(events::batch_events)),
                )
                .service(web::resource("/events").route(web::get().to(events::events)))
                .service(web::resource("/limits").route(web::get().to(health::limits)))
                .service(
                    web::resource("/webhooks")
                        .route(web::post().to(webhooks::create_webhook))
                        .route(web::get().to(webhooks::list_webhooks)),
                )
                .service(
                    web::resource("/webhooks/{id}")
                        .route(web::delete().to(webhooks::delete_webhook)),
                )
                .service(
                    web::resource("/webhooks/{id}/deliveries")
                        .route(web::get().to(webhooks::list_deliveries)),
                )
                .service(
                    web::resource("/events/tokens").route(web::post().to(events::create_token)),
                )
                .service(web::resource("/imports").route(web::post().to(imports::create_import)))
                .service(
                    web::resource("/imports/{id}")
                        .route(web::get().to(imports::get_import))
                        .route(web::delete().to(lifecycle::delete_import)),
                )
                .service(
                    web::resource("/imports/{id}/cancel")
                        .route(web::post().to(lifecycle::cancel_import)),
                )
                .service(web::resource("/products").route(web::get().to(products::list_products)))
                .service(
                    web::resource("/products/{id}").route(web::get().to(products::get_product)),
                ),
        )
        .service(web::resource("/healthz").route(web::get().to(health::healthz)))
        .service(web::resource("/readyz").route(web::get().to(health::readyz)))
        .with_json_spec_v3_at(OPENAPI_PATH)
        .with_swagger_ui_at(DOCS_PATH)
        .build()
        .route("/metrics", actix_web::web::get().to(health::metrics))
        .configure(crate::dashboard::routes)
        .default_service(actix_web::web::to(|| async {
            ApiError::NotFound("route").into_response()
        }))
}

/// CORS for the configured origins (`cors.allowed_origins`): they may send the API's methods
/// with the headers clients use, and read the headers clients need. Never credentials:
/// keys travel in `Authorization`, which a page sets itself. A request from any other
/// origin gets no CORS headers, and the browser keeps its page from reading the answer.
fn cors(config: &crate::config::CorsConfig) -> actix_cors::Cors {
    use actix_web::http::header;
    let mut cors = actix_cors::Cors::default()
        .allowed_methods(["GET", "POST", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::ETAG, header::RETRY_AFTER, header::LOCATION])
        .max_age(usize::try_from(config.max_age_secs).ok());
    for origin in &config.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin().send_wildcard()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

impl ApiError {
    pub fn into_response(self) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

/// The amended OpenAPI document (see `openapi`), made from paperclip's on first request.
static AMENDED_SPEC: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();

/// Serves the OpenAPI document amended where paperclip cannot describe the service.
async fn amend_spec(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    if req.path() != OPENAPI_PATH {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    if let Some(body) = AMENDED_SPEC.get() {
        let res = HttpResponse::Ok()
            .content_type(mime::APPLICATION_JSON)
            .body(body.clone());
        return Ok(req.into_response(res));
    }
    let res = next.call(req).await?;
    if !res.status().is_success() {
        return Ok(res.map_into_boxed_body());
    }
    let (req, res) = res.map_into_boxed_body().into_parts();
    let raw = actix_web::body::to_bytes(res.into_body())
        .await
        .map_err(|e| ApiError::Internal(format!("openapi body: {e}")))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| ApiError::Internal(format!("openapi: {e}")))?;
    openapi::amend(&mut spec);
    let body = bytes::Bytes::from(
        serde_json::to_vec(&spec).map_err(|e| ApiError::Internal(format!("openapi: {e}")))?,
    );
    let body = AMENDED_SPEC.get_or_init(|| body).clone();
    let res = HttpResponse::Ok()
        .content_type(mime::APPLICATION_JSON)
        .body(body);
    Ok(ServiceResponse::new(req, res))
}

/// Counts every request by route template (`unmatched` when no route took it, so the label
/// set stays bounded), method and status, and times it to its response head.
async fn observe_http(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let metrics = req
        .app_data::<actix_web::web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let method = req.method().clone();
    let res = next.call(req).await?.map_into_boxed_body();
    if let Some(metrics) = metrics {
        let route = res.request().match_pattern();
        metrics.http(
            route.as_deref().unwrap_or("unmatched"),
            method.as_str(),
            res.status().as_u16(),
            started.elapsed(),
        );
    }
    Ok(res)
}

/// Swagger UI's file handler panics on a name it does not have; answer those with a 404.
async fn guard_docs(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    if let Some(file) = req
        .path()
        .strip_prefix(DOCS_PATH)
        .and_then(|p| p.strip_prefix('/'))
    {
        if !DOCS_FILES.contains(&file) {
            let res = ApiError::NotFound("file").into_response();
            return Ok(req.into_response(res));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
