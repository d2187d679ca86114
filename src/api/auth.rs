//! The `Authorization: Bearer <key>` extractor. Every query below it is scoped by `owner`.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use paperclip::actix::Apiv2Security;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;

/// The caller, identified by an active API key.
#[derive(Debug, Clone, Copy, Apiv2Security)]
#[openapi(
    apiKey,
    in = "header",
    name = "Authorization",
    description = "`Bearer <key>`, a key made with `photoq keys create --name NAME`"
)]
pub struct Caller {
    pub owner: Uuid,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let key = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|k| k.trim().to_owned());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
            let key = key.ok_or(ApiError::Unauthorized)?;
            crate::auth::authenticate(&state.pool, &key)
                .await?
                .map(|owner| Caller { owner })
                .ok_or(ApiError::Unauthorized)
        })
    }
}
