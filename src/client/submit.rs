//! `photoq submit DIR|FILE...`: uploads image files in batches that fit the server's limits
//! (each with an `Idempotency-Key` made from its files, so running the same command again
//! after an interruption submits nothing twice), follows them on the server's event stream
//! with progress bars, prints a summary (or `--json`), and can download the variants.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Client, ClientArgs, ClientError};
use crate::events::Event;
use crate::pipeline::sniff::{sniff, SNIFF_LEN};

/// With no event for this long, the batches are read directly (the stream may be stuck
/// behind a proxy, or the server restarting).
const QUIET: Duration = Duration::from_secs(5);
/// Wait before the event stream is opened again after it broke.
const RECONNECT: Duration = Duration::from_secs(1);
/// Longest error message shown in the summary (`--json` has them whole).
const MESSAGE_CHARS: usize = 80;
/// Times an upload refused as busy or rate limited is tried.
const UPLOAD_TRIES: u32 = 8;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Image files, or directories (read recursively).
    #[arg(required = true, value_name = "DIR|FILE")]
    pub paths: Vec<PathBuf>,
    /// Files per upload request (at most the server's limit, which is the default).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Print the results as JSON on standard output (progress stays on standard error).
    #[arg(long)]
    pub json: bool,
    /// Download every completed photo's variants into DIR/{file stem}/{variant}.{ext}.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,
}

/// How a submission ended, as the exit status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every file submitted and completed.
    Completed,
    /// Some photos failed or are dead, or some files could not be submitted.
    WithErrors,
}

/// One file's result.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: PathBuf,
    pub photo_id: Option<Uuid>,
    pub batch_id: Option<Uuid>,
    /// completed | failed | dead, or `skipped` when it was not submitted.
    pub state: String,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Files written by `--download`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub downloaded: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    batches: Vec<Uuid>,
    completed: usize,
    failed: usize,
    skipped: usize,
    files: &'a [FileResult],
}

pub async fn run(args: &SubmitArgs) -> Result<Finished, ClientError> {
    let client = Client::new(&args.client)?;
    let limits = client.get("/v1/limits").await?;
    let max_files = limits["upload_max_files"].as_u64().unwrap_or(1).max(1) as usize;
    let max_bytes = limits["upload_max_file_bytes"].as_u64().unwrap_or(u64::MAX);
    let per_batch = args
        .batch_size
        .map_or(max_files, |n| (n as usize).min(max_files));

    let (files, mut results) = collect(&args.paths, max_bytes)?;
    let bars = Bars::new(files.len() as u64);

    // Follow first, so nothing that happens to the uploads is missed.
    let (events_tx, mut events) = mpsc::channel::<Followed>(1024);
    let follower = tokio::spawn(follow(client.clone(), events_tx));

    let mut photos: HashMap<Uuid, usize> = HashMap::new();
    let mut batches: Vec<Uuid> = Vec::new();
    let mut states: HashMap<Uuid, PhotoState> = HashMap::new();
    let mut early: HashMap<Uuid, PhotoState> = HashMap::new();
    for chunk in files.chunks(per_batch) {
        let answer = upload(&client, chunk).await?;
        let batch: Uuid = serde_json::from_value(answer["batch_id"].clone())
            .map_err(|_| ClientError::Server("upload answer without a batch id".into()))?;
        batches.push(batch);
        let ids = answer["photos"].as_array().cloned().unwrap_or_default();
        for (file, photo) in chunk.iter().zip(ids) {
            let Some(id) = photo["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()) else {
                continue;
            };
            let index = results.len();
            results.push(FileResult {
                file: file.clone(),
                photo_id: Some(id),
                batch_id: Some(batch),
                state: photo["state"].as_str().unwrap_or("queued").to_owned(),
                error_code: None,
                error: None,
                downloaded: Vec::new(),
            });
            photos.insert(id, index);
            let state = early.remove(&id).unwrap_or(PhotoState {
                state: results[index].state.clone(),
                error_code: None,
                error: None,
            });
            states.insert(id, state);
        }
        bars.uploaded.inc(chunk.len() as u64);
        // Take what happened meanwhile, so the bars move during long uploads.
        while let Ok(f) = events.try_recv() {
            apply(f, &photos, &mut states, &mut early);
        }
        bars.show(&states);
    }
    bars.uploaded.finish();
    // Once, now: a batch answered again from its Idempotency-Key (a second run) is past
    // the events it would have told.
    reconcile(&client, &batches, &mut states).await?;
    bars.show(&states);

    while states.values().any(|s| !s.finished()) {
        match tokio::time::timeout(QUIET, events.recv()).await {
            Ok(Some(f)) => apply(f, &photos, &mut states, &mut early),
            // Quiet, or the stream was reset: read the batches themselves.
            Ok(None) | Err(_) => reconcile(&client, &batches, &mut states).await?,
        }
        bars.show(&states);
    }
    follower.abort();
    bars.done(&states);

    for r in results.iter_mut() {
        if let Some(s) = r.photo_id.and_then(|id| states.get(&id)) {
            r.state = s.state.clone();
            r.error_code = s.error_code.clone();
            r.error = s.error.clone();
        }
    }
    if let Some(dir) = &args.download {
        download(&client, dir, &mut results).await?;
    }
    let count = |s: &str| results.iter().filter(|r| r.state == s).count();
    let report = Report {
        batches,
        completed: count("completed"),
        failed: count("failed") + count("dead"),
        skipped: count("skipped"),
        files: &results,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".into())
        );
    } else {
        print_summary(&report);
    }
    Ok(if report.failed + report.skipped == 0 {
        Finished::Completed
    } else {
        Finished::WithErrors
    })
}

/// The image files under `paths` (sorted, directories walked), and a result for each file
/// that cannot be submitted (not an image, or larger than the server takes).
fn collect(
    paths: &[PathBuf],
    max_bytes: u64,
) -> Result<(Vec<PathBuf>, Vec<FileResult>), ClientError> {
    let mut found = Vec::new();
    for p in paths {
        walk(p, &mut found)?;
    }
    found.sort();
    found.dedup();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for file in found {
        let meta = std::fs::metadata(&file).map_err(|e| ClientError::File(file.clone(), e))?;
        let mut head = vec![0u8; SNIFF_LEN];
        let n = {
            use std::io::Read;
            let mut f =
                std::fs::File::open(&file).map_err(|e| ClientError::File(file.clone(), e))?;
            f.read(&mut head)
                .map_err(|e| ClientError::File(file.clone(), e))?
        };
        let reason = if sniff(&head[..n]).is_none() {
            Some((
                "not_an_image",
                "not a JPEG, PNG, WebP, HEIC or AVIF file".to_owned(),
            ))
        } else if meta.len() > max_bytes {
            Some((
                "too_large",
                format!("larger than the server's {max_bytes} bytes"),
            ))
        } else {
            None
        };
        match reason {
            None => files.push(file),
            Some((code, message)) => skipped.push(FileResult {
                file,
                photo_id: None,
                batch_id: None,
                state: "skipped".into(),
                error_code: Some(code.into()),
                error: Some(message),
                downloaded: Vec::new(),
            }),
        }
    }
    Ok((files, skipped))
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ClientError> {
    let meta = std::fs::metadata(path).map_err(|e| ClientError::File(path.into(), e))?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| ClientError::File(path.into(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ClientError::File(path.into(), e))?;
            let name = entry.file_name();
            // Hidden files and directories (.git, .DS_Store) are not photos.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            walk(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// An Idempotency-Key naming exactly these files' names and contents.
fn batch_key(files: &[PathBuf]) -> Result<String, ClientError> {
    let mut all = Sha256::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| ClientError::File(f.clone(), e))?;
        all.update(file_name(f).as_bytes());
        all.update([0]);
        all.update(Sha256::digest(&bytes));
    }
    Ok(format!("submit-{}", &hex::encode(all.finalize())[..32]))
}

fn file_name(f: &Path) -> String {
    f.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Uploads one batch; waits and tries again while the server is busy or rate limits.
async fn upload(client: &Client, files: &[PathBuf]) -> Result<Value, ClientError> {
    let key = batch_key(files)?;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut form = reqwest::multipart::Form::new();
        for f in files {
            let bytes = tokio::fs::read(f)
                .await
                .map_err(|e| ClientError::File(f.clone(), e))?;
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(file_name(f)),
            );
        }
        match client.post_multipart("/v1/photos", form, Some(&key)).await {
            Err(ClientError::Api { status, .. })
                if (status == 503 || status == 429) && tries < UPLOAD_TRIES =>
            {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
            }
            other => return other,
        }
    }
}

/// What the follower hands over.
enum Followed {
    Event(Event),
    /// The stream said its position is gone: read the batches instead.
    Reset,
}

/// Follows the key's event stream from now on, reconnecting with `Last-Event-ID`.
async fn follow(client: Client, tx: mpsc::Sender<Followed>) {
    let mut last: Option<String> = None;
    loop {
        if let Ok(res) = client.open_events(last.as_deref()).await {
            let mut stream = res.bytes_stream().eventsource();
            while let Some(Ok(m)) = stream.next().await {
                if !m.id.is_empty() {
                    last = Some(m.id.clone());
                }
                let followed = if m.event == crate::events::RESET {
                    Followed::Reset
                } else {
                    match serde_json::from_str::<Event>(&m.data) {
                        Ok(e) => Followed::Event(e),
                        Err(_) => continue,
                    }
                };
                if tx.send(followed).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

#[derive(Debug, Clone)]
struct PhotoState {
    state: String,
    error_code: Option<String>,
    error: Option<String>,
}

impl PhotoState {
    fn finished(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "failed" | "dead")
    }
}

fn apply(
    f: Followed,
    photos: &HashMap<Uuid, usize>,
    states: &mut HashMap<Uuid, PhotoState>,
    early: &mut HashMap<Uuid, PhotoState>,
) {
    let Followed::Event(e) = f else {
        // Read the batches at the next quiet moment.
        for s in states.values_mut() {
            if !s.finished() {
                s.state = "unknown".into();
            }
        }
        return;
    };
    let Some(photo) = e.photo_id else { return };
    let Some(state) = e.data["state"].as_str() else {
        return;
    };
    let text = |k: &str| e.data[k].as_str().map(str::to_owned);
    let next = PhotoState {
        state: state.to_owned(),
        error_code: text("error_code"),
        error: text("error"),
    };
    if photos.contains_key(&photo) {
        states.insert(photo, next);
    } else {
        // Its upload's answer is still on its way.
        early.insert(photo, next);
    }
}

/// Reads the unfinished photos' states from their batches.
async fn reconcile(
    client: &Client,
    batches: &[Uuid],
    states: &mut HashMap<Uuid, PhotoState>,
) -> Result<(), ClientError> {
    for batch in batches {
        let view = client.get(&format!("/v1/batches/{batch}")).await?;
        for p in view["photos"].as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()) else {
                continue;
            };
            let Some(s) = states.get_mut(&id) else {
                continue;
            };
            let now = p["state"].as_str().unwrap_or("").to_owned();
            if now != s.state {
                if matches!(now.as_str(), "failed" | "dead") {
                    let photo = client.get(&format!("/v1/photos/{id}")).await?;
                    s.error_code = photo["error_code"].as_str().map(str::to_owned);
                    s.error = photo["error"].as_str().map(str::to_owned);
                }
                s.state = now;
            }
        }
    }
    Ok(())
}

async fn download(
    client: &Client,
    dir: &Path,
    results: &mut [FileResult],
) -> Result<(), ClientError> {
    for r in results.iter_mut().filter(|r| r.state == "completed") {
        let Some(id) = r.photo_id else { continue };
        let photo = client.get(&format!("/v1/photos/{id}")).await?;
        let stem = r
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_string());
        let target = dir.join(&stem);
        std::fs::create_dir_all(&target).map_err(|e| ClientError::File(target.clone(), e))?;
        for v in photo["variants"].as_array().into_iter().flatten() {
            let (Some(name), Some(url)) = (v["name"].as_str(), v["url"].as_str()) else {
                continue;
            };
            let ext = match v["content_type"].as_str() {
                Some("image/png") => "png",
                Some("image/webp") => "webp",
                Some("image/avif") => "avif",
                _ => "jpg",
            };
            let bytes = client.get_bytes(url).await?;
            let path = target.join(format!("{name}.{ext}"));
            std::fs::write(&path, &bytes).map_err(|e| ClientError::File(path.clone(), e))?;
            r.downloaded.push(path);
        }
    }
    Ok(())
}

/// The progress bars: files uploaded; photos done (completed or failed) of all, with how
/// many are processing and how many failed.
struct Bars {
    uploaded: ProgressBar,
    processed: ProgressBar,
}

impl Bars {
    fn new(files: u64) -> Self {
        let multi = MultiProgress::new();
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let uploaded = multi.add(ProgressBar::new(files));
        uploaded.set_style(style("uploaded  [{bar:40}] {pos}/{len} files"));
        let processed = multi.add(ProgressBar::new(files));
        processed.set_style(style("done      [{bar:40}] {pos}/{len} photos {msg}"));
        Bars {
            uploaded,
            processed,
        }
    }

    fn show(&self, states: &HashMap<Uuid, PhotoState>) {
        let n = |f: fn(&PhotoState) -> bool| states.values().filter(|s| f(s)).count();
        self.processed.set_position(n(PhotoState::finished) as u64);
        self.processed.set_message(format!(
            "({} processing, {} failed)",
            n(|s| s.state == "processing"),
            n(|s| matches!(s.state.as_str(), "failed" | "dead"))
        ));
    }

    fn done(&self, states: &HashMap<Uuid, PhotoState>) {
        self.show(states);
        self.processed.finish();
    }
}

fn print_summary(report: &Report<'_>) {
    println!(
        "{} photos in {} batches: {} completed, {} failed, {} not submitted",
        report.files.len(),
        report.batches.len(),
        report.completed,
        report.failed,
        report.skipped
    );
    let problems: BTreeMap<&Path, &FileResult> = report
        .files
        .iter()
        .filter(|r| r.state != "completed")
        .map(|r| (r.file.as_path(), r))
        .collect();
    for (file, r) in problems {
        let message: String = r
            .error
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(MESSAGE_CHARS)
            .collect();
        println!(
            "  {}  {}  {}  {message}",
            file.display(),
            r.state,
            r.error_code.as_deref().unwrap_or("-"),
        );
    }
}
