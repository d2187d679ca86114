//! The web dashboard at `/dashboard`: three static files compiled into the binary (no
//! framework, no build step, nothing from a CDN). The page talks only to the public API with
//! the key the user signs in with (kept in the browser's session storage) and follows the
//! key's events over SSE with a short-lived stream token.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

/// What the browser may load and where it may connect: this origin only; images also from
/// `blob:` (variants are fetched with the key, then shown from memory).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("assets/index.html"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/style.css"),
    },
];

/// `/dashboard` (the page) and `/dashboard/{file}` (its script and style).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/dashboard", web::get().to(index))
        .route("/dashboard/", web::get().to(index))
        .route("/dashboard/{file}", web::get().to(asset));
}

async fn index() -> HttpResponse {
    serve(&INDEX)
}

async fn asset(path: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.name == path.as_str()) {
        Some(a) => serve(a),
        None => crate::api::error::ApiError::NotFound("file").into_response(),
    }
}

fn serve(asset: &Asset) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Built into the binary: a new build serves new files.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(asset.body)
}
