//! The `Authorization: Bearer <key>` extractor (and, for event streams, `?token=`). Every
//! query below it is scoped by `owner`.

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
    /// An operator key (`photoq keys create --operator`): also sees queue-wide aggregates.
    pub operator: bool,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(identify(req, None))
    }
}

/// The caller of an event stream: an API key in the header, as for [`Caller`], or a stream
/// token (`POST /v1/events/tokens`) as `?token=`, for browsers, whose EventSource and
/// WebSocket cannot send headers.
#[derive(Debug, Clone, Copy, Apiv2Security)]
#[openapi(
    apiKey,
    in = "query",
    name = "token",
    description = "A short-lived stream token from `POST /v1/events/tokens` (event routes only)"
)]
pub struct StreamCaller {
    pub owner: Uuid,
}

impl FromRequest for StreamCaller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = web::Query::<TokenParam>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.into_inner().token);
        let caller = identify(req, token);
        Box::pin(async move {
            Ok(StreamCaller {
                owner: caller.await?.owner,
            })
        })
    }
}

#[derive(serde::Deserialize)]
struct TokenParam {
    token: Option<String>,
}

/// Refuses an address that failed to authenticate too often (before looking at its key,
/// so it cannot go on guessing), authenticates the key from the header (else the stream
/// `token`, if given), counts a failure against the address, and takes one request from
/// the key's rate limit.
fn identify(
    req: &HttpRequest,
    token: Option<String>,
) -> impl Future<Output = Result<Caller, ApiError>> + 'static {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let key = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| k.trim().to_owned());
    let forwarded: Vec<String> = req
        .headers()
        .get_all("X-Forwarded-For")
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let peer = req.peer_addr().map(|a| a.ip());
    async move {
        let state = state.ok_or_else(|| ApiError::Internal("no app state".into()))?;
        let limiter = &state.limiter;
        let addr = peer.map(|peer| {
            let hops: Vec<&str> = forwarded.iter().map(String::as_str).collect();
            crate::limits::client_addr(peer, &hops, &state.config.limits.trusted_proxies)
        });
        if let Some(addr) = addr {
            if let Some(wait) = limiter.refused(addr).await {
                return Err(ApiError::RateLimited(wait));
            }
        }
        let owner = match (&key, &token) {
            (Some(key), _) => crate::auth::authenticate(&state.pool, key).await?,
            // A stream token opens its owner's event streams, nothing queue-wide.
            (None, Some(token)) => crate::auth::stream_token_owner(&state.pool, token)
                .await?
                .map(|owner| crate::auth::KeyOwner {
                    owner,
                    operator: false,
                }),
            (None, None) => None,
        };
        let Some(crate::auth::KeyOwner { owner, operator }) = owner else {
            // A key that does not open counts against the address; no key at all is
            // not a guess.
            if let (Some(addr), true) = (addr, key.is_some() || token.is_some()) {
                limiter.failed(addr).await;
            }
            return Err(ApiError::Unauthorized);
        };
        if let Some(wait) = limiter.take(owner).await {
            return Err(ApiError::RateLimited(wait));
        }
        Ok(Caller { owner, operator })
    }
}
