//! Every outgoing HTTP request photoq makes goes through here: one client with the address
//! rules of [`guard`] (checked on the URL, on every address a name resolves to, and again
//! on every redirect), connect, read and total timeouts, a byte cap, content sniffing and a
//! cap on concurrent requests per host.
//!
//! Errors say whether trying again can help ([`FetchError::is_transient`]) and carry a
//! stable code ([`FetchError::code`]) that is recorded on the photo.

pub mod guard;
pub mod resolve;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{header, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::config::FetchConfig;
use crate::pipeline::sniff::{sniff, SourceFormat, SNIFF_LEN};
pub use guard::Rules;
pub use resolve::{Lookup, StaticLookup, SystemLookup};

/// Longest wait a `Retry-After` may ask for; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not a valid URL: {0}")]
    BadUrl(String),
    #[error("scheme {0:?} is refused: only http and https")]
    Scheme(String),
    #[error("URLs with credentials (user@host) are refused")]
    Credentials,
    #[error("{host} is refused: {addr} is a {reason} address")]
    Refused {
        host: String,
        addr: IpAddr,
        reason: &'static str,
    },
    #[error("could not resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("timed out ({0})")]
    Timeout(&'static str),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("redirect without a usable Location header")]
    BadRedirect,
    #[error("the server answered {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("not an image (JPEG, PNG, WebP, HEIC or AVIF); declared as {0:?}")]
    NotImage(String),
    #[error("the connection failed while reading the body: {0}")]
    Body(String),
}

impl FetchError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::BadUrl(_) => "download_bad_url",
            FetchError::Scheme(_) => "download_bad_scheme",
            FetchError::Credentials => "download_credentials",
            FetchError::Refused { .. } => "download_refused_address",
            FetchError::Resolve { .. } => "download_resolve_failed",
            FetchError::Connect(_) => "download_connect_failed",
            FetchError::Timeout(_) => "download_timeout",
            FetchError::TooManyRedirects(_) => "download_too_many_redirects",
            FetchError::BadRedirect => "download_bad_redirect",
            FetchError::Status { status: 404, .. } => "download_not_found",
            FetchError::Status { status: 410, .. } => "download_gone",
            FetchError::Status { status: 429, .. } => "download_rate_limited",
            FetchError::Status { status, .. } if *status >= 500 => "download_server_error",
            FetchError::Status { .. } => "download_http_status",
            FetchError::TooLarge(_) => "download_too_large",
            FetchError::NotImage(_) => "download_not_an_image",
            FetchError::Body(_) => "download_interrupted",
        }
    }

    /// Whether another attempt later may succeed: timeouts, connection failures, name
    /// lookups, 408, 429 and 5xx answers.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Resolve { .. }
            | FetchError::Connect(_)
            | FetchError::Timeout(_)
            | FetchError::Body(_) => true,
            FetchError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            _ => false,
        }
    }

    /// How long the server asked us to wait (`Retry-After` on 429 or 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error behind a reqwest error: one of ours (a refused address, a failed lookup)
    /// when the resolver raised it, else a timeout or connection failure.
    fn from_reqwest(e: reqwest::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(ours) = s.downcast_ref::<FetchError>() {
                return ours.clone_shallow();
            }
            source = s.source();
        }
        if e.is_timeout() {
            FetchError::Timeout("no answer within the read timeout")
        } else if e.is_connect() {
            FetchError::Connect(chain(&e))
        } else if e.is_body() || e.is_decode() {
            FetchError::Body(chain(&e))
        } else {
            FetchError::Connect(chain(&e))
        }
    }

    fn clone_shallow(&self) -> Self {
        match self {
            FetchError::Refused { host, addr, reason } => FetchError::Refused {
                host: host.clone(),
                addr: *addr,
                reason,
            },
            FetchError::Resolve { host, detail } => FetchError::Resolve {
                host: host.clone(),
                detail: detail.clone(),
            },
            other => FetchError::Connect(other.to_string()),
        }
    }
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = source.and_then(|x| x.source());
    }
    out
}

/// Makes ring the process's TLS provider: reqwest is built without a default one, and every
/// HTTP client photoq (or its tests) builds needs it. Idempotent.
pub fn install_tls_provider() {
    // Err only when a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A downloaded image.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub format: SourceFormat,
    /// Where it was finally found, after redirects.
    pub url: Url,
}

/// The one client for outgoing requests.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    rules: Arc<Rules>,
    config: FetchConfig,
    hosts: HostLimits,
}

impl Fetcher {
    pub fn new(config: &FetchConfig, lookup: Arc<dyn Lookup>) -> Result<Self, String> {
        install_tls_provider();
        let rules = Arc::new(Rules::new(&config.allow)?);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .read_timeout(Duration::from_millis(config.read_timeout_ms))
            .user_agent(config.user_agent.clone())
            .dns_resolver(Arc::new(resolve::Guarded {
                lookup,
                rules: rules.clone(),
            }))
            .build()
            .map_err(|e| format!("HTTP client: {}", chain(&e)))?;
        Ok(Fetcher {
            client,
            rules,
            config: config.clone(),
            hosts: HostLimits::new(config.per_host),
        })
    }

    /// Downloads the image at `url`, within the total timeout.
    pub async fn image(&self, url: &str) -> Result<Fetched, FetchError> {
        let total = Duration::from_millis(self.config.total_timeout_ms);
        match tokio::time::timeout(total, self.follow(url)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(
                "the download took longer than its total limit",
            )),
        }
    }

    /// POSTs `body` to `url` under the address rules, within `timeout`, following no
    /// redirect (a 3xx answer is an error). Returns the status of a 2xx answer, reading at
    /// most a little of its body.
    pub async fn post(
        &self,
        url: &str,
        headers: header::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<u16, FetchError> {
        /// Bytes of a receiver's answer read (and dropped).
        const ANSWER_BYTES: usize = 64 * 1024;
        let url = self.rules.check_url(url)?;
        let send = async {
            let _permit = self.hosts.acquire(host_key(&url)).await;
            let mut res = self
                .client
                .post(url.clone())
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(FetchError::from_reqwest)?;
            let status = res.status();
            if !status.is_success() {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                    retry_after: retry_after(res.headers()),
                });
            }
            let mut read = 0;
            while let Some(chunk) = res.chunk().await.map_err(FetchError::from_reqwest)? {
                read += chunk.len();
                if read >= ANSWER_BYTES {
                    break;
                }
            }
            Ok(status.as_u16())
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout("no answer within the timeout")),
        }
    }

    async fn follow(&self, raw: &str) -> Result<Fetched, FetchError> {
        let mut url = self.rules.check_url(raw)?;
        let mut redirects = 0;
        loop {
            let _permit = self.hosts.acquire(host_key(&url)).await;
            let res = self
                .client
                .get(url.clone())
                .header(header::ACCEPT, "image/jpeg, image/png, image/webp")
                .send()
                .await
                .map_err(FetchError::from_reqwest)?;
            let status = res.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                if redirects > self.config.max_redirects {
                    return Err(FetchError::TooManyRedirects(self.config.max_redirects));
                }
                let next = res
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or(FetchError::BadRedirect)?;
                self.rules.check_parsed(&next)?;
                tracing::debug!(from = %url, to = %next, "redirected");
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                    retry_after: retry_after(res.headers()),
                });
            }
            let (bytes, format) = self.body(res).await?;
            return Ok(Fetched { bytes, format, url });
        }
    }

    /// Reads the body, sniffing its first bytes and stopping past the byte cap.
    async fn body(&self, mut res: reqwest::Response) -> Result<(Bytes, SourceFormat), FetchError> {
        let max = self.config.max_bytes;
        let declared = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if res.content_length().is_some_and(|n| n > max) {
            return Err(FetchError::TooLarge(max));
        }
        let mut buf = BytesMut::with_capacity(
            res.content_length()
                .map_or(64 * 1024, |n| n as usize)
                .min(max as usize),
        );
        let mut format = None;
        loop {
            let chunk = res.chunk().await.map_err(FetchError::from_reqwest)?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                if (buf.len() + chunk.len()) as u64 > max {
                    return Err(FetchError::TooLarge(max));
                }
                buf.extend_from_slice(&chunk);
            }
            if format.is_none() && (buf.len() >= SNIFF_LEN || done) {
                format = Some(sniff(&buf).ok_or_else(|| FetchError::NotImage(declared.clone()))?);
            }
            if done {
                break;
            }
        }
        let format = format.ok_or(FetchError::NotImage(declared))?;
        Ok((buf.freeze(), format))
    }
}

fn host_key(url: &Url) -> String {
    url.host_str().unwrap_or("").to_ascii_lowercase()
}

/// `Retry-After` as seconds or as an HTTP date, at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// At most `per_host` requests at once to any one host, so one slow supplier holds only
/// that many of a worker's jobs.
#[derive(Clone)]
struct HostLimits {
    per_host: usize,
    hosts: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// Hosts remembered before idle ones are forgotten.
const HOSTS_KEPT: usize = 1024;

impl HostLimits {
    fn new(per_host: usize) -> Self {
        HostLimits {
            per_host: per_host.max(1),
            hosts: Arc::default(),
        }
    }

    async fn acquire(&self, host: String) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            if hosts.len() >= HOSTS_KEPT {
                let all = self.per_host;
                hosts.retain(|_, s| s.available_permits() < all);
            }
            hosts
                .entry(host)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }
}
