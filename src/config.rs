//! Layered configuration: `config/default.toml` (compiled in) → an optional file given with
//! `--config` → `PHOTOQ_*` environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The documented defaults, compiled into the binary so it runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of every environment variable photoq reads.
pub const ENV_PREFIX: &str = "PHOTOQ_";

/// Sections of the configuration; `PHOTOQ_<SECTION>_<KEY>` maps to `<section>.<key>`.
const SECTIONS: &[&str] = &[
    "database",
    "redis",
    "storage",
    "upload",
    "worker",
    "retry",
    "reconciler",
    "pipeline",
    "limits",
    "fetch",
    "import",
    "events",
    "webhooks",
    "telemetry",
    "signed_urls",
    "cors",
    "retention",
    "quotas",
    "privacy",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bind: SocketAddr,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub storage: StorageConfig,
    pub upload: UploadConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub reconciler: ReconcilerConfig,
    pub pipeline: PipelineConfig,
    pub limits: LimitsConfig,
    pub fetch: FetchConfig,
    pub import: ImportConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub telemetry: TelemetryConfig,
    pub signed_urls: SignedUrlsConfig,
    pub cors: CorsConfig,
    pub retention: RetentionConfig,
    pub quotas: QuotasConfig,
    pub privacy: PrivacyConfig,
    pub variants: BTreeMap<String, VariantConfig>,
    /// The URL signing keys, from `PHOTOQ_SIGNING_KEYS` only (secrets never come from a
    /// file).
    #[serde(skip)]
    pub signer: crate::signing::UrlSigner,
}

/// Signed URLs (`crate::signing`); the keys come from `PHOTOQ_SIGNING_KEYS` only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignedUrlsConfig {
    /// How long the signed URLs in a photo's JSON open its images.
    pub ttl_secs: u64,
}

/// Browsers on other origins (`Access-Control-*`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API; `"*"`: any.
    pub allowed_origins: Vec<String>,
    /// How long a browser may keep a preflight's answer.
    pub max_age_secs: u64,
}

/// How long photoq keeps what it stores (`crate::retention`). 0 days: for ever.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days after its photo completed that an original is removed (the variants stay).
    pub originals_days: u32,
    /// Days after they ended that failed, dead and cancelled photos are deleted.
    pub unsuccessful_days: u32,
    /// Hours an `Idempotency-Key`'s first answer is kept.
    pub idempotency_hours: u32,
    /// How often one process sweeps rows past their lifetime.
    pub sweep_interval_secs: u64,
    /// How often one process walks storage for objects no row records.
    pub orphan_interval_secs: u64,
    /// Age an unrecorded object must reach before the walk removes it.
    pub orphan_grace_secs: u64,
}

/// What each owner may store (`db::usage`); an owner's own values (`photoq quota`) come
/// first. 0: no limit.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasConfig {
    /// Photos an owner may add per UTC day (uploads and import images).
    pub photos_per_day: u64,
    /// Bytes an owner may have in storage (originals and variants).
    pub bytes_stored: u64,
}

impl QuotasConfig {
    /// No limit of either kind.
    pub const NONE: QuotasConfig = QuotasConfig {
        photos_per_day: 0,
        bytes_stored: 0,
    };
}

/// Where photos were taken (`pipeline::privacy`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Remove the GPS position from originals as workers first read them (and so from
    /// the EXIF recorded).
    pub strip_gps: bool,
    /// The scope a key needs to see a photo's GPS position in its EXIF.
    pub gps_scope: GpsScope,
}

/// Who sees a photo's GPS position: keys with a scope, or no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpsScope {
    Read,
    Upload,
    Admin,
    Operator,
    None,
}

impl GpsScope {
    /// The scope that shows it; `None` when no key sees it.
    pub fn scope(self) -> Option<crate::auth::Scope> {
        use crate::auth::Scope;
        match self {
            GpsScope::Read => Some(Scope::Read),
            GpsScope::Upload => Some(Scope::Upload),
            GpsScope::Admin => Some(Scope::Admin),
            GpsScope::Operator => Some(Scope::Operator),
            GpsScope::None => None,
        }
    }
}

/// Traces (`crate::telemetry`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`; empty: traces are not exported.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of photos traced, 0 to 1 (the decision is the photo's, kept by its attempts).
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub statement_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server's URL, or with `cluster`, some cluster nodes' URLs separated by commas.
    pub url: String,
    pub cluster: bool,
    pub prefix: String,
    /// Job streams, each its own hash tag (1: all under `prefix`).
    pub shards: u32,
    pub block_ms: u64,
    pub response_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Local,
    S3,
}

impl RedisConfig {
    /// The URLs in `url`: one, or the cluster nodes named.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// How stored images reach clients.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    /// The API reads the object and sends its bytes.
    Proxy,
    /// The API answers 302 to a presigned GET (S3 only).
    Redirect,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// Directory of the `local` backend.
    pub root: PathBuf,
    /// S3 bucket, key prefix, endpoint ("" for AWS), region, path-style addressing and
    /// whether http:// is allowed. Credentials come from the environment only.
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    pub allow_http: bool,
    /// Longest one S3 request may take.
    pub timeout_secs: u64,
    pub serve: ServeMode,
    /// Lifetime of a presigned URL handed out by a redirect.
    pub redirect_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_concurrent: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs in flight at once (reading ahead, downloads, storage and database round trips).
    pub concurrency: Count,
    /// Images decoded, resized and encoded at once.
    pub cpu_slots: Count,
    pub visibility_timeout_secs: u64,
    pub heartbeat_secs: u64,
    pub reclaim_interval_secs: u64,
    pub retry_poll_ms: u64,
    pub shutdown_grace_secs: u64,
    pub job_timeout_ms: u64,
    /// Share of reads given to the bulk lane (imports) while uploads wait too, 0 to 1.
    pub bulk_share: f64,
    /// Where a worker-only process (`photoq work`) serves `/metrics` and `/healthz`;
    /// unset, nowhere (`photoq all` has them on the API's address).
    #[serde(default)]
    pub metrics_bind: Option<SocketAddr>,
}

/// Jobs in flight per CPU slot when `worker.concurrency` is `"auto"`: while one job of a
/// slot decodes, the next is read, started and fetched, and the one before is stored and
/// committed (measured best on 2 cores: README "End to end").
pub const JOBS_PER_CPU_SLOT: usize = 2;

/// How many of something a worker runs at once: a number, or `"auto"` (derived from the
/// machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Auto,
    Fixed(usize),
}

impl Count {
    /// The number given, or `auto` when derived.
    pub fn or(self, auto: usize) -> usize {
        match self {
            Count::Auto => auto,
            Count::Fixed(n) => n,
        }
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Auto => s.serialize_str("auto"),
            Count::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Count, E> {
                usize::try_from(n)
                    .map(Count::Fixed)
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Count, E> {
                usize::try_from(n)
                    .map(Count::Fixed)
                    .map_err(|_| E::custom("expected \"auto\" or a number > 0"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Count, E> {
                match v {
                    "auto" => Ok(Count::Auto),
                    other => other
                        .parse()
                        .map(Count::Fixed)
                        .map_err(|_| E::custom("expected \"auto\" or a number")),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How much a worker process runs at once, resolved from the configuration, the command
/// line and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSize {
    /// Jobs in flight.
    pub concurrency: usize,
    /// Image work (decode, resize, encode) at once.
    pub cpu_slots: usize,
}

impl WorkerConfig {
    /// `cpu_slots` defaults to the cores this process may use (its CPU affinity and cgroup
    /// quota, as `std::thread::available_parallelism` reads them), `concurrency` to
    /// `JOBS_PER_CPU_SLOT` per slot. Given jobs in flight fewer than the slots, the slots
    /// follow them (no more images at once than jobs).
    pub fn size(&self, concurrency: Option<usize>, cpu_slots: Option<usize>) -> WorkerSize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_slots = cpu_slots.unwrap_or(self.cpu_slots.or(cores)).max(1);
        let concurrency = concurrency
            .unwrap_or(self.concurrency.or(cpu_slots * JOBS_PER_CPU_SLOT))
            .max(1);
        WorkerSize {
            concurrency,
            cpu_slots: cpu_slots.min(concurrency),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Days an event is kept in the log.
    pub retention_days: u32,
    /// Seconds between keep-alive comments on an idle SSE stream (and WebSocket pings).
    pub keepalive_secs: u64,
    /// While Redis pub/sub is down: how often the sequencer looks for committed changes,
    /// and an API process reads the log on its own.
    pub fallback_poll_ms: u64,
    /// Longest `wait` a long-poll request may ask for.
    pub max_wait_secs: u64,
    /// Lifetime of a stream token (`POST /v1/events/tokens`).
    pub token_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Attempts at a delivery before it is dead.
    pub max_attempts: u32,
    /// Backoff between attempts: base × 2^(attempt-1), at most max, with jitter.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Longest a receiver may take to answer.
    pub timeout_ms: u64,
    /// Deliveries one worker process makes at once.
    pub concurrency: usize,
    /// How often a worker looks for due deliveries.
    pub poll_ms: u64,
}

impl WebhooksConfig {
    /// The backoff policy, in the shape the photo retries use.
    pub fn retry(&self) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts,
            base_delay_ms: self.base_delay_ms,
            max_delay_ms: self.max_delay_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerConfig {
    pub interval_secs: u64,
    pub grace_secs: u64,
    pub batch_size: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second per API key, over all API processes; 0 is no limit.
    pub requests_per_sec: u32,
    /// Requests a key may make at once beyond that rate.
    pub burst: u32,
    /// Failed authentications per client address per minute; 0 is no limit.
    pub auth_failures_per_min: u32,
    /// Peers trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Outgoing HTTP (`src/fetch/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub max_redirects: usize,
    pub max_bytes: u64,
    pub per_host: usize,
    pub user_agent: String,
    /// Host names and networks exempt from the address rules (development and tests).
    pub allow: Vec<String>,
}

/// Product imports (`POST /v1/imports`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    pub max_products: usize,
    pub max_images_per_product: usize,
    pub max_url_chars: usize,
    pub max_body_bytes: usize,
    /// Whether imported images also get a `compressed` rendition: the original size,
    /// orientation applied, re-encoded without metadata.
    pub compressed: bool,
    pub compressed_format: OutputFormat,
    pub compressed_quality: u8,
    /// Metadata of a JPEG original kept in a JPEG `compressed` rendition.
    pub compressed_keep: Vec<KeptMetadata>,
}

/// Metadata a rendition may keep from its original.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeptMetadata {
    /// The EXIF block (camera, date, GPS, ...), its orientation reset to 1.
    Exif,
    /// The ICC colour profile.
    Icc,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub max_pixels: u64,
    pub max_dimension: u32,
    pub shrink_on_load: bool,
    pub colour: Colour,
    /// What transparent pixels are flattened onto in variants without alpha (JPEG).
    pub background: HexColour,
    /// A PNG (with alpha) composited on the variants that place it; empty: none.
    pub watermark: PathBuf,
    /// A photo whose bytes its owner already had processed with the same variants reuses
    /// those results (copies) instead of being processed again.
    pub reuse_duplicates: bool,
    /// libaom's speed for AVIF variants, 0 (slowest, smallest files) to 9 (fastest).
    pub avif_speed: u8,
    /// The chroma resolution of AVIF variants.
    pub avif_chroma: crate::pipeline::heif::AvifChroma,
}

/// An opaque colour, written `"#rrggbb"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HexColour(pub [u8; 3]);

impl TryFrom<String> for HexColour {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let invalid = || format!("{s:?} is not a colour written \"#rrggbb\"");
        let hex = s
            .strip_prefix('#')
            .filter(|h| h.len() == 6)
            .ok_or_else(invalid)?;
        let mut rgb = [0u8; 3];
        for (i, c) in rgb.iter_mut().enumerate() {
            *c = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(invalid)?;
        }
        Ok(HexColour(rgb))
    }
}

impl From<HexColour> for String {
    fn from(c: HexColour) -> String {
        format!("#{:02x}{:02x}{:02x}", c.0[0], c.0[1], c.0[2])
    }
}

/// What the variants' colours are.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// Converted to sRGB from the source's ICC profile (a source without one is sRGB).
    #[default]
    Srgb,
    /// The source's values, with its profile embedded in every variant.
    Keep,
}

/// One output made for every photo. See `config/default.toml` for the meaning of each field.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// Box width; with `fit = "inside"` either side may be left out (unbounded).
    pub width: Option<u32>,
    pub height: Option<u32>,
    #[serde(default)]
    pub fit: Fit,
    #[serde(default)]
    pub format: OutputFormat,
    #[serde(default = "default_quality")]
    pub quality: u8,
    #[serde(default)]
    pub grayscale: bool,
    /// Unsharp-mask amount applied after the resize; 0 is off.
    #[serde(default)]
    pub sharpen: f32,
    /// Where a `cover` crop goes.
    #[serde(default)]
    pub focus: Focus,
    /// The configured watermark (`pipeline.watermark`) on this variant, placed so.
    #[serde(default)]
    pub watermark: Option<WatermarkPlacement>,
}

/// Where the crop of a `cover` variant goes on a photo of another aspect ratio.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Focus {
    /// The middle.
    #[default]
    Centre,
    /// The most varied grey levels (Shannon entropy).
    Entropy,
    /// The most edges, skin tones and saturated colours.
    Attention,
}

/// How the watermark sits on a variant.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatermarkPlacement {
    #[serde(default)]
    pub position: Position,
    /// Gap to the variant's edges, as a share of its shorter side.
    #[serde(default = "default_watermark_margin")]
    pub margin: f32,
    /// 0 (invisible) to 1 (as drawn).
    #[serde(default = "default_watermark_opacity")]
    pub opacity: f32,
    /// The watermark's width as a share of the variant's (it is made smaller if it would
    /// not fit the height).
    #[serde(default = "default_watermark_size")]
    pub size: f32,
}

fn default_watermark_margin() -> f32 {
    0.03
}

fn default_watermark_opacity() -> f32 {
    0.5
}

fn default_watermark_size() -> f32 {
    0.25
}

/// One of nine places on an image.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    TopLeft,
    Top,
    TopRight,
    Left,
    Centre,
    Right,
    BottomLeft,
    Bottom,
    #[default]
    BottomRight,
}

fn default_quality() -> u8 {
    DEFAULT_QUALITY
}

/// Quality of a variant that names none.
const DEFAULT_QUALITY: u8 = 80;
/// Largest sharpen amount accepted (beyond it halos dominate).
const MAX_SHARPEN: f32 = 5.0;

/// How an image is fitted to a variant's box.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Inside the box, aspect ratio kept; never enlarged.
    #[default]
    Inside,
    /// Fills the box, aspect ratio kept, centre cropped; never enlarged beyond the source.
    Cover,
    /// Exactly the box, stretched if the aspect ratios differ.
    Exact,
}

/// Encoding of a variant.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Jpeg,
    Webp,
    Png,
    Avif,
}

impl OutputFormat {
    /// Whether the format keeps transparency.
    pub fn has_alpha(self) -> bool {
        !matches!(self, OutputFormat::Jpeg)
    }
}

impl Config {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The built-in defaults alone, ignoring files and the environment.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)))
    }

    /// The layered sources, before extraction; tests add their own layers on top.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            fig = fig.merge(Toml::file_exact(file));
        }
        fig.merge(env_provider())
    }

    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        let keys = std::env::var(crate::signing::KEYS_ENV).unwrap_or_default();
        config.signer = crate::signing::UrlSigner::parse(&keys).map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.variants.is_empty() {
            return invalid("at least one variant must be configured".into());
        }
        for (name, v) in &self.variants {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return invalid(format!(
                    "variant name {name:?}: use lowercase letters, digits and '-'"
                ));
            }
            if v.width == Some(0) || v.height == Some(0) {
                return invalid(format!("variant {name}: width and height must be > 0"));
            }
            match (v.fit, v.width, v.height) {
                (Fit::Inside, None, None) => {
                    return invalid(format!("variant {name}: set width, height or both"));
                }
                (Fit::Cover | Fit::Exact, None, _) | (Fit::Cover | Fit::Exact, _, None) => {
                    return invalid(format!(
                        "variant {name}: fit {:?} needs both width and height",
                        v.fit
                    ));
                }
                _ => {}
            }
            if !(1..=100).contains(&v.quality) {
                return invalid(format!("variant {name}: quality must be 1..=100"));
            }
            if let Some(w) = &v.watermark {
                if self.pipeline.watermark.as_os_str().is_empty() {
                    return invalid(format!(
                        "variant {name} places a watermark, but pipeline.watermark names no file"
                    ));
                }
                let valid = (0.0..=0.5).contains(&w.margin)
                    && (0.0..=1.0).contains(&w.opacity)
                    && w.size > 0.0
                    && w.size <= 1.0;
                if !valid {
                    return invalid(format!(
                        "variant {name}: watermark margin must be 0 to 0.5, opacity 0 to 1, size above 0 up to 1"
                    ));
                }
            }
            if v.focus != Focus::Centre && v.fit != Fit::Cover {
                return invalid(format!(
                    "variant {name}: focus applies to fit \"cover\" only"
                ));
            }
            if !(0.0..=MAX_SHARPEN).contains(&v.sharpen) {
                return invalid(format!(
                    "variant {name}: sharpen must be between 0 and {MAX_SHARPEN}"
                ));
            }
        }
        if self.storage.backend == StorageBackend::S3 && self.storage.bucket.is_empty() {
            return invalid("storage.backend = \"s3\" needs storage.bucket".into());
        }
        if self.storage.timeout_secs == 0 {
            return invalid("storage.timeout_secs must be > 0".into());
        }
        if self.storage.serve == ServeMode::Redirect {
            if self.storage.backend != StorageBackend::S3 {
                return invalid(
                    "storage.serve = \"redirect\" needs storage.backend = \"s3\"".into(),
                );
            }
            // SigV4 presigned URLs live at most 7 days.
            if !(1..=604_800).contains(&self.storage.redirect_ttl_secs) {
                return invalid("storage.redirect_ttl_secs must be 1 to 604800".into());
            }
        }
        if self.upload.max_files == 0
            || self.upload.max_file_bytes == 0
            || self.upload.max_concurrent == 0
        {
            return invalid("upload limits must be > 0".into());
        }
        if self.fetch.max_bytes == 0 || self.fetch.per_host == 0 || self.fetch.total_timeout_ms == 0
        {
            return invalid(
                "fetch.max_bytes, fetch.per_host and fetch.total_timeout_ms must be > 0".into(),
            );
        }
        crate::fetch::Rules::new(&self.fetch.allow).map_err(ConfigError::Invalid)?;
        if self.events.retention_days == 0
            || self.events.keepalive_secs == 0
            || self.events.fallback_poll_ms == 0
            || self.events.token_ttl_secs == 0
        {
            return invalid(
                "events.retention_days, keepalive_secs, fallback_poll_ms and token_ttl_secs \
                 must be > 0"
                    .into(),
            );
        }
        let r = &self.retention;
        if r.idempotency_hours == 0
            || r.sweep_interval_secs == 0
            || r.orphan_interval_secs == 0
            || r.orphan_grace_secs < 600
        {
            return invalid(
                "retention.idempotency_hours, sweep_interval_secs and orphan_interval_secs \
                 must be > 0, orphan_grace_secs at least 600 (uploads in progress are younger)"
                    .into(),
            );
        }
        if self.webhooks.max_attempts == 0
            || self.webhooks.timeout_ms == 0
            || self.webhooks.concurrency == 0
            || self.webhooks.poll_ms == 0
        {
            return invalid(
                "webhooks.max_attempts, timeout_ms, concurrency and poll_ms must be > 0".into(),
            );
        }
        if self.import.max_products == 0 || self.import.max_images_per_product == 0 {
            return invalid(
                "import.max_products and import.max_images_per_product must be > 0".into(),
            );
        }
        if self.import.compressed && self.variants.contains_key(crate::pipeline::COMPRESSED) {
            return invalid(format!(
                "variant name {:?} is taken by imports' compressed rendition \
                 (or set import.compressed = false)",
                crate::pipeline::COMPRESSED
            ));
        }
        if !self.import.compressed_keep.is_empty()
            && self.import.compressed_format != OutputFormat::Jpeg
        {
            return invalid(
                "import.compressed_keep needs import.compressed_format = \"jpeg\"".into(),
            );
        }
        if self.pipeline.avif_speed > 9 {
            return invalid("pipeline.avif_speed must be 0..=9".into());
        }
        for origin in &self.cors.allowed_origins {
            let ok = origin == "*"
                || url::Url::parse(origin).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.path() == "/"
                        && !origin.ends_with('/')
                });
            if !ok {
                return invalid(format!(
                    "cors.allowed_origins: {origin:?} is not an origin (scheme://host[:port]) or \"*\""
                ));
            }
        }
        if !(1..=100).contains(&self.import.compressed_quality) {
            return invalid("import.compressed_quality must be 1..=100".into());
        }
        if self.database.pool_size < 2 {
            // The reconciler holds one connection (its lock) while it uses another.
            return invalid("database.pool_size must be at least 2".into());
        }
        if !(0.0..=1.0).contains(&self.worker.bulk_share) {
            return invalid("worker.bulk_share must be between 0 and 1".into());
        }
        if self.worker.concurrency == Count::Fixed(0) || self.worker.cpu_slots == Count::Fixed(0) {
            return invalid(
                "worker.concurrency and worker.cpu_slots must be > 0 or \"auto\"".into(),
            );
        }
        if self.worker.heartbeat_secs == 0
            || self.worker.heartbeat_secs >= self.worker.visibility_timeout_secs
        {
            return invalid(
                "worker.heartbeat_secs must be > 0 and below worker.visibility_timeout_secs".into(),
            );
        }
        if self.retry.max_attempts == 0 || self.retry.base_delay_ms > self.retry.max_delay_ms {
            return invalid(
                "retry.max_attempts must be > 0 and retry.base_delay_ms <= retry.max_delay_ms"
                    .into(),
            );
        }
        if self.reconciler.batch_size <= 0 {
            return invalid("reconciler.batch_size must be > 0".into());
        }
        if self.limits.requests_per_sec > 0 && self.limits.burst == 0 {
            return invalid("limits.burst must be > 0 when limits.requests_per_sec is".into());
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return invalid("telemetry.sample_ratio must be between 0 and 1".into());
        }
        if self.redis.prefix.is_empty() {
            return invalid("redis.prefix must not be empty".into());
        }
        if !(1..=crate::queue::MAX_SHARDS).contains(&self.redis.shards) {
            return invalid(format!(
                "redis.shards must be 1 to {}",
                crate::queue::MAX_SHARDS
            ));
        }
        if self.redis.urls().is_empty() || (!self.redis.cluster && self.redis.urls().len() > 1) {
            return invalid(
                "redis.url: one URL, or several separated by commas with redis.cluster = true"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `PHOTOQ_DATABASE_URL` → `database.url`, `PHOTOQ_BIND` → `bind`,
/// `PHOTOQ_VARIANTS_THUMBNAIL_WIDTH` → `variants.thumbnail.width`.
fn env_provider() -> Env {
    // Not configuration: the config file, logging, the client subcommands' key and server,
    // the URL signing keys (secrets, read by `signing`), and the test suite's own variables.
    Env::prefixed(ENV_PREFIX)
        .ignore(&["CONFIG", "LOG", "API_KEY", "SERVER", "SIGNING_KEYS"])
        .filter(|key| !key.as_str().starts_with("TEST_") && !key.as_str().starts_with("test_"))
        .map(|key| env_key_to_path(key.as_str()).into())
}

/// Maps the part of an environment variable after the prefix (figment lowercases it) to a
/// dotted configuration path.
pub fn env_key_to_path(key: &str) -> String {
    let key = key.to_ascii_lowercase();
    if let Some(rest) = key.strip_prefix("variants_") {
        // Variant names hold no '_', so the first '_' ends the name.
        if let Some((name, field)) = rest.split_once('_') {
            if let Some(placement) = field.strip_prefix("watermark_") {
                return format!("variants.{name}.watermark.{placement}");
            }
            return format!("variants.{name}.{field}");
        }
    }
    for section in SECTIONS {
        if let Some(field) = key.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            return format!("{section}.{field}");
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_map_to_sections() {
        assert_eq!(env_key_to_path("DATABASE_URL"), "database.url");
        assert_eq!(env_key_to_path("redis_prefix"), "redis.prefix");
        assert_eq!(
            env_key_to_path("UPLOAD_MAX_FILE_BYTES"),
            "upload.max_file_bytes"
        );
        assert_eq!(env_key_to_path("BIND"), "bind");
        assert_eq!(
            env_key_to_path("VARIANTS_THUMBNAIL_WIDTH"),
            "variants.thumbnail.width"
        );
        assert_eq!(
            env_key_to_path("VARIANTS_PREVIEW_WATERMARK_OPACITY"),
            "variants.preview.watermark.opacity"
        );
    }

    #[test]
    fn background_colours_are_hex() {
        assert_eq!(
            HexColour::try_from("#0a80Ff".to_owned()),
            Ok(HexColour([10, 128, 255]))
        );
        for bad in ["0a80ff", "#0a80f", "#0a80fg", "#0a80ff0", "#ééé"] {
            assert!(HexColour::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert_eq!(String::from(HexColour([1, 2, 255])), "#0102ff");
    }

    #[test]
    fn defaults_parse_and_validate() {
        let config = Config::defaults().expect("defaults load");
        let thumb = &config.variants["thumbnail"];
        assert_eq!((thumb.width, thumb.height), (Some(256), Some(256)));
        assert_eq!((thumb.fit, thumb.format), (Fit::Inside, OutputFormat::Jpeg));
        assert_eq!(config.variants["preview"].width, Some(1280));
        assert_eq!(config.upload.max_files, 50);
        assert_eq!(config.upload.max_file_bytes, 25 * 1024 * 1024);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PHOTOQ_DATABASE_URL", "postgres://x@h/db");
            jail.set_env("PHOTOQ_BIND", "0.0.0.0:9000");
            jail.set_env("PHOTOQ_VARIANTS_THUMBNAIL_WIDTH", "300");
            jail.set_env("PHOTOQ_VARIANTS_THUMBNAIL_FIT", "cover");
            jail.set_env("PHOTOQ_UPLOAD_MAX_FILES", "3");
            let config = Config::load(None).expect("load");
            assert_eq!(config.database.url, "postgres://x@h/db");
            assert_eq!(config.bind.port(), 9000);
            assert_eq!(config.variants["thumbnail"].width, Some(300));
            assert_eq!(config.variants["thumbnail"].fit, Fit::Cover);
            assert_eq!(config.upload.max_files, 3);
            Ok(())
        });
    }

    #[test]
    fn bad_variant_name_is_refused() {
        let fig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[variants.Big_One]\nwidth = 10\nquality = 80"));
        assert!(matches!(
            Config::from_figment(fig),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn incomplete_variants_are_refused() {
        for bad in [
            "[variants.a]\nfit = \"inside\"",
            "[variants.a]\nwidth = 10\nfit = \"cover\"",
            "[variants.a]\nwidth = 0",
            "[variants.a]\nwidth = 10\nsharpen = 9.0",
            "[variants.a]\nwidth = 10\nformat = \"gif\"",
        ] {
            let fig = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(bad));
            assert!(Config::from_figment(fig).is_err(), "{bad}");
        }
        let fig = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(
            "[variants.wide]\nwidth = 800\nformat = \"webp\"",
        ));
        let config = Config::from_figment(fig).expect("width alone is enough for inside");
        assert_eq!(config.variants["wide"].quality, DEFAULT_QUALITY);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type.
    fn worker_size_is_derived_from_the_machine_unless_given() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Config::defaults().expect("defaults load");
        assert_eq!(
            config.worker.size(None, None),
            WorkerSize {
                concurrency: cores * JOBS_PER_CPU_SLOT,
                cpu_slots: cores
            }
        );
        // Given jobs in flight only: the slots stay the cores, never more than the jobs.
        assert_eq!(config.worker.size(Some(1), None).cpu_slots, 1);
        assert_eq!(
            config.worker.size(Some(64), None),
            WorkerSize {
                concurrency: 64,
                cpu_slots: cores
            }
        );
        // Given slots only: jobs in flight follow them.
        assert_eq!(
            config.worker.size(None, Some(3)).concurrency,
            3 * JOBS_PER_CPU_SLOT
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("PHOTOQ_WORKER_CONCURRENCY", "12");
            jail.set_env("PHOTOQ_WORKER_CPU_SLOTS", "auto");
            let config = Config::load(None).expect("load");
            assert_eq!(config.worker.concurrency, Count::Fixed(12));
            assert_eq!(config.worker.cpu_slots, Count::Auto);
            Ok(())
        });
        for bad in ["concurrency = 0", "cpu_slots = \"many\"", "cpu_slots = -1"] {
            let fig = Figment::from(Toml::string(DEFAULT_TOML))
                .merge(Toml::string(&format!("[worker]\n{bad}")));
            assert!(Config::from_figment(fig).is_err(), "{bad}");
        }
    }
}
