//! photoq's own API client, for the client subcommands (`photoq import`, `photoq submit`):
//! the server URL, the key (from `PHOTOQ_API_KEY` or `--key-file`), JSON requests, the
//! event stream and typed errors.

pub mod import;
pub mod submit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::Value;

/// The environment variable a client subcommand takes its key from.
pub const KEY_ENV: &str = "PHOTOQ_API_KEY";
/// The environment variable naming the server, if `--server` is not given.
pub const SERVER_ENV: &str = "PHOTOQ_SERVER";
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence on an event stream (the server sends keep-alives every 15 s by default).
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a request is sent again when the server says to come back later (`Client::send`).
const RETRIES_WHEN_TOLD: u32 = 10;
/// The longest `Retry-After` the client waits out itself.
const LONGEST_WAIT_SECS: u64 = 60;

/// What every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The photoq API to talk to.
    #[arg(long, env = SERVER_ENV, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub server: String,
    /// A file holding the API key (else the key is read from PHOTOQ_API_KEY).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no API key: set {KEY_ENV} or pass --key-file")]
    NoKey,
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("invalid server URL {0:?}")]
    Server(String),
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        /// The whole error body (e.g. `problems` of an import).
        body: Value,
    },
}

/// A client of one photoq server, with one key. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For event streams: no limit on the whole request, only on silence.
    streams: reqwest::Client,
    base: url::Url,
    key: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let key = match &args.key_file {
            Some(path) => read_key(path)?,
            None => std::env::var(KEY_ENV)
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty())
                .ok_or(ClientError::NoKey)?,
        };
        let base = url::Url::parse(&args.server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ClientError::Server(args.server.clone()))?;
        crate::fetch::install_tls_provider();
        let agent = concat!("photoq-cli/", env!("CARGO_PKG_VERSION"));
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(agent)
            .build()?;
        let streams = reqwest::Client::builder()
            .read_timeout(STREAM_READ_TIMEOUT)
            .user_agent(agent)
            .build()?;
        Ok(Client {
            http,
            streams,
            base,
            key,
        })
    }

    fn url(&self, path: &str) -> Result<url::Url, ClientError> {
        self.base
            .join(path)
            .map_err(|_| ClientError::Server(format!("{}{path}", self.base)))
    }

    /// POSTs `body` as `content_type`; the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let req = self
            .http
            .post(self.url(path)?)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send_post(req, idempotency_key).await
    }

    /// POSTs a multipart form; the JSON answer.
    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let req = self.http.post(self.url(path)?).multipart(form);
        self.send_post(req, idempotency_key).await
    }

    /// Sends a POST with the key (and the idempotency key, if any); the JSON answer.
    async fn send_post(
        &self,
        req: reqwest::RequestBuilder,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut req = req.bearer_auth(&self.key);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        answer(self.send(req).await?).await
    }

    /// Sends `req`; when the server answers `429` or `503` with a `Retry-After` of at most
    /// [`LONGEST_WAIT_SECS`] (its rate limit, too many uploads at once), waits as told and
    /// sends it again, up to [`RETRIES_WHEN_TOLD`] times. A request whose body cannot be sent twice (a streamed
    /// multipart form) is sent once.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let mut tries = 0;
        loop {
            let again = req.try_clone();
            let res = match again {
                Some(r) => r.send().await?,
                None => return Ok(req.send().await?),
            };
            let busy = matches!(res.status().as_u16(), 429 | 503);
            let wait = res
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match wait {
                // A longer wait (a daily quota, say) is the caller's to know about.
                Some(secs) if busy && tries < RETRIES_WHEN_TOLD && secs <= LONGEST_WAIT_SECS => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
                }
                _ => return Ok(res),
            }
        }
    }

    /// Opens the key's event stream (SSE), after `last_event_id` if given, else from now.
    pub async fn open_events(
        &self,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self
            .streams
            .get(self.url("/v1/events")?)
            .bearer_auth(&self.key)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        success(req.send().await?).await
    }

    /// GETs raw bytes (a variant).
    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        let req = self.http.get(self.url(path)?).bearer_auth(&self.key);
        Ok(success(self.send(req).await?).await?.bytes().await?)
    }

    /// GETs a JSON resource.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let req = self.http.get(self.url(path)?).bearer_auth(&self.key);
        answer(self.send(req).await?).await
    }
}

fn read_key(path: &Path) -> Result<String, ClientError> {
    let raw = std::fs::read_to_string(path).map_err(|e| ClientError::File(path.into(), e))?;
    let key = raw.trim().to_owned();
    if key.is_empty() {
        return Err(ClientError::NoKey);
    }
    Ok(key)
}

/// A successful response, or the API's error.
async fn success(res: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if res.status().is_success() {
        return Ok(res);
    }
    Err(match answer(res).await {
        Err(e) => e,
        Ok(body) => ClientError::Api {
            status: 0,
            code: String::new(),
            message: "unexpected answer".into(),
            body,
        },
    })
}

/// The JSON body of a success, or the API's error.
async fn answer(res: reqwest::Response) -> Result<Value, ClientError> {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let field = |f: &str| {
        body.pointer(&format!("/error/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    Err(ClientError::Api {
        status: status.as_u16(),
        code: field("code"),
        message: field("message"),
        body,
    })
}
