//! Liveness, readiness, Prometheus metrics, and the limits a client must respect.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use paperclip::actix::{api_v2_operation, web::Json, Apiv2Schema};
use serde::Deserialize;

use super::models::{Health, Readiness};
use super::AppState;

/// How long a readiness probe waits for each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness
///
/// 200 while the process is up.
#[api_v2_operation(tags(Operations))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// What readiness requires of Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Apiv2Schema)]
#[serde(rename_all = "lowercase")]
pub enum RedisNeed {
    /// Not ready while Redis does not answer.
    #[default]
    Required,
    /// Ready while PostgreSQL answers: uploads are still accepted without Redis (their jobs
    /// are published once it is back), so a load balancer may keep sending them here.
    Optional,
}

#[derive(Debug, Deserialize, Apiv2Schema)]
pub struct ReadyQuery {
    /// `optional`: ready whenever PostgreSQL answers (the Kubernetes manifests use it, so
    /// a Redis outage does not take every API process out of service). Default `required`.
    redis: Option<RedisNeed>,
}

/// Readiness
///
/// 200 when PostgreSQL and Redis both answer (or PostgreSQL alone, with
/// `?redis=optional`), 503 otherwise; the body says which is down.
#[api_v2_operation(tags(Operations))]
pub async fn readyz(state: web::Data<AppState>, query: web::Query<ReadyQuery>) -> HttpResponse {
    let (db_ok, redis_ok) = probe(&state).await;
    let ready = db_ok && (redis_ok || query.redis == Some(RedisNeed::Optional));
    let up = |ok: bool| if ok { "up" } else { "down" }.to_owned();
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" }.into(),
        database: up(db_ok),
        redis: up(redis_ok),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Whether PostgreSQL and Redis answer, each within [`PROBE_TIMEOUT`]; recorded in the
/// `photoq_ready` gauge.
async fn probe(state: &AppState) -> (bool, bool) {
    let (db, redis) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, crate::db::ping(&state.pool)),
        tokio::time::timeout(PROBE_TIMEOUT, state.queue.ping()),
    );
    let (db_ok, redis_ok) = (matches!(db, Ok(Ok(()))), matches!(redis, Ok(Ok(()))));
    state.metrics.readiness(db_ok, redis_ok);
    (db_ok, redis_ok)
}

/// Prometheus metrics, text format; readiness is probed first, so `photoq_ready` is as of
/// the scrape.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    probe(&state).await;
    render(&state.metrics)
}

/// `metrics` in Prometheus's text format.
pub fn render(metrics: &crate::metrics::Metrics) -> HttpResponse {
    match metrics.render() {
        Ok(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(text),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// What a client must stay within (the server's configuration).
#[derive(Debug, serde::Serialize, serde::Deserialize, paperclip::actix::Apiv2Schema)]
pub struct Limits {
    /// Files per upload request.
    pub upload_max_files: usize,
    /// Bytes per uploaded file.
    pub upload_max_file_bytes: u64,
    /// Products per import.
    pub import_max_products: usize,
    /// Images per imported product.
    pub import_max_images_per_product: usize,
    /// Longest `wait` of a long-poll request, in seconds.
    pub events_max_wait_secs: u64,
}

/// Limits
///
/// What this server accepts per request, for clients that split their work to fit
/// (`photoq submit` does).
#[api_v2_operation(tags(Operations))]
pub async fn limits(state: web::Data<AppState>, _caller: super::auth::Caller) -> Json<Limits> {
    let c = &state.config;
    Json(Limits {
        upload_max_files: c.upload.max_files,
        upload_max_file_bytes: c.upload.max_file_bytes,
        import_max_products: c.import.max_products,
        import_max_images_per_product: c.import.max_images_per_product,
        events_max_wait_secs: c.events.max_wait_secs,
    })
}
