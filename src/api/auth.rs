//! The `Authorization: Bearer <key>` extractor (and, for event streams, `?token=`), and the
//! scope each route needs ([`required_scope`], one table for every route). Every query
//! below it is scoped by `owner`.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::Method;
use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use paperclip::actix::Apiv2Security;
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::auth::{KeyOwner, Scope, Scopes};

/// The scope a request to the route `pattern` (its template, `/v1/photos/{id}`) with
/// `method` needs: reading needs `read`; adding work `upload`; deleting, cancelling,
/// reprocessing, webhooks and keys `admin`; the queue overview `operator`. `None`: any
/// active key (`GET /v1/me`, `GET /v1/usage`). A route missing here needs `admin`.
pub fn required_scope(method: &Method, pattern: &str) -> Option<Scope> {
    let path = pattern.strip_prefix("/v1").unwrap_or(pattern);
    match (method.as_str(), path) {
        (_, "/me" | "/usage") => None,
        (_, p) if p.starts_with("/operator/") => Some(Scope::Operator),
        ("GET", "/keys") => Some(Scope::Admin),
        ("GET", _) | ("POST", "/events/tokens") => Some(Scope::Read),
        ("POST", "/photos" | "/imports" | "/photos/{id}/retry" | "/dead-letters/redrive") => {
            Some(Scope::Upload)
        }
        _ => Some(Scope::Admin),
    }
}

/// The refusal of a key without `scope`.
fn lacks(scope: Scope) -> ApiError {
    ApiError::Forbidden(match scope {
        Scope::Read => "this key lacks the `read` scope",
        Scope::Upload => "this key lacks the `upload` scope",
        Scope::Admin => "this key lacks the `admin` scope",
        Scope::Operator => {
            "the queue overview needs a key with the `operator` scope \
             (photoq keys create --operator)"
        }
    })
}

/// The caller, identified by an active API key that has the scope the route needs.
#[derive(Debug, Clone, Copy, Apiv2Security)]
#[openapi(
    apiKey,
    in = "header",
    name = "Authorization",
    description = "`Bearer <key>`, a key made with `photoq keys create --name NAME`"
)]
pub struct Caller {
    /// Whose data the request reaches.
    pub owner: Uuid,
    /// The key that made it.
    pub key: Uuid,
    pub scopes: Scopes,
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

/// The caller of an image route: an API key with `read`, as for [`Caller`], or a signed URL
/// (`?exp=&kid=&sig=`, see `crate::signing`), which opens that one path until it expires,
/// without a key: for `<img src>` in a browser.
#[derive(Debug, Clone, Copy, Apiv2Security)]
#[openapi(
    apiKey,
    in = "query",
    name = "sig",
    description = "A signed URL's `sig` (with `exp` and `kid`), as given in a photo's \
                   `signed_url` fields (image routes only)"
)]
pub struct ImageCaller {
    /// The key's owner; `None` for a signed URL, whose path names the photo.
    pub owner: Option<Uuid>,
}

#[derive(serde::Deserialize)]
struct SignedParams {
    exp: Option<i64>,
    kid: Option<String>,
    sig: Option<String>,
}

impl FromRequest for ImageCaller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let params = web::Query::<SignedParams>::from_query(req.query_string())
            .ok()
            .map(web::Query::into_inner);
        let Some(SignedParams {
            exp,
            kid,
            sig: Some(sig),
        }) = params
        else {
            let caller = identify(req, None);
            return Box::pin(async move {
                Ok(ImageCaller {
                    owner: Some(caller.await?.owner),
                })
            });
        };
        let verdict = req
            .app_data::<web::Data<AppState>>()
            .ok_or_else(|| ApiError::Internal("no app state".into()))
            .and_then(|state| {
                let signature = crate::signing::Signature {
                    expires: exp.unwrap_or(0),
                    key_id: kid.as_deref().unwrap_or(""),
                    sig: &sig,
                };
                let now = chrono::Utc::now().timestamp();
                Ok(state.config.signer.verify(req.path(), &signature, now)?)
            });
        Box::pin(async move { verdict.map(|()| ImageCaller { owner: None }) })
    }
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
    let needs = required_scope(
        req.method(),
        req.match_pattern().as_deref().unwrap_or(req.path()),
    );
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
            // A stream token opens its owner's event streams (reading), nothing more.
            (None, Some(token)) => crate::auth::stream_token_owner(&state.pool, token)
                .await?
                .map(|(key, owner)| KeyOwner {
                    key,
                    owner,
                    scopes: Scopes::of([Scope::Read]),
                }),
            (None, None) => None,
        };
        let Some(KeyOwner { key, owner, scopes }) = owner else {
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
        if let Some(scope) = needs.filter(|s| !scopes.has(*s)) {
            return Err(lacks(scope));
        }
        Ok(Caller { owner, key, scopes })
    }
}
