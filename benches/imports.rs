//! Imports end to end: `photoq serve` and a worker process on this machine, downloading
//! from a real HTTP server on loopback (the tests' fixture, serving a directory of JPEGs).
//!
//!   cargo bench --bench imports -- [--images N] [--background B] [--uploads U]
//!                                   [--dir DIR] [--concurrency C]
//!
//! 1. Throughput: N images imported (one per product, imports of 1,000 products), then the
//!    same N files uploaded (batches of 50 from 4 clients), in the same run; images/s of
//!    each from the first photo created to the last completed (server clock).
//! 2. Priority: an import of B images is started; once it is under way, U photos are
//!    uploaded one at a time, each once the one before is completed, and each upload's
//!    latency (created to completed, server clock: the thumbnail is ready then) is
//!    reported with how much of the import was still left; then the import runs to its end.
//!
//! `--background 0` skips the second part. Defaults: N = 500, B = 5000, U = 20, DIR the 12 MP set under /tmp/corpus/big/12mp if it
//! exists (`../shared/bench/make-big-corpus.sh`), else the shared corpus; C = 2 (the
//! default `worker.concurrency`). PostgreSQL and Redis as for `benches/e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use common::cluster::{Client, Cluster};
use common::fixture::Fixture;

/// Products per import request (the default `import.max_products`).
const PER_IMPORT: usize = 1000;
const UPLOAD_BATCH: usize = 50;
const UPLOADERS: usize = 4;
const POLL: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(3600);

struct Args {
    images: usize,
    background: usize,
    uploads: usize,
    dir: Option<PathBuf>,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        images: 500,
        background: 5000,
        uploads: 20,
        dir: None,
        concurrency: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--images" => a.images = value().parse().expect("a number"),
            "--background" => a.background = value().parse().expect("a number"),
            "--uploads" => a.uploads = value().parse().expect("a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--concurrency" => a.concurrency = value().parse().expect("a number"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn jpegs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_ascii_lowercase().ends_with(".jpg"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no JPEGs in {}", dir.display());
    names
}

fn time(v: &Value, k: &str) -> DateTime<Utc> {
    v[k].as_str().and_then(|s| s.parse().ok()).expect(k)
}

/// Every photo of a batch (an import is a batch too).
async fn batch_photos(client: &Client, batch: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .get(&format!("/v1/photos?batch={batch}&limit=200{cursor}"))
            .await;
        out.extend(page["photos"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

/// Images/s from the first photo created to the last completed; all must be completed.
fn rate(photos: &[Value]) -> f64 {
    assert!(
        photos.iter().all(|p| p["state"] == "completed"),
        "not all completed"
    );
    let first = photos.iter().map(|p| time(p, "created_at")).min().unwrap();
    let last = photos
        .iter()
        .map(|p| time(p, "completed_at"))
        .max()
        .unwrap();
    photos.len() as f64 / (last - first).as_seconds_f64()
}

async fn import(
    client: &Client,
    fx: &Fixture,
    names: &[String],
    from: usize,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for start in (0..n).step_by(PER_IMPORT) {
        let products: Vec<Value> = (start..(start + PER_IMPORT).min(n))
            .map(|i| {
                let name = &names[(from + i) % names.len()];
                json!({"external_id": format!("p{}", from + i),
                       "images": [fx.url(&format!("/img/{name}?i={}", from + i))]})
            })
            .collect();
        let res = client
            .http
            .post(format!("{}/v1/imports", client.base))
            .bearer_auth(&client.key)
            .json(&json!({ "products": products }))
            .send()
            .await
            .expect("import");
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.expect("json");
        ids.push(body["import_id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn wait_imports(client: &Client, ids: &[String], clock: Instant) {
    for id in ids {
        while client.get(&format!("/v1/imports/{id}")).await["state"] == "processing" {
            assert!(clock.elapsed() < TIMEOUT, "timed out");
            tokio::time::sleep(POLL * 10).await;
        }
    }
}

async fn left_of(client: &Client, ids: &[String]) -> i64 {
    let mut left = 0;
    for id in ids {
        let v = client.get(&format!("/v1/imports/{id}")).await;
        left +=
            v["images"]["queued"].as_i64().unwrap() + v["images"]["processing"].as_i64().unwrap();
    }
    left
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(a: Args) {
    let big = PathBuf::from("/tmp/corpus/big/12mp");
    let dir = a.dir.clone().unwrap_or(if big.is_dir() {
        big
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/exif-samples/jpg/hdr")
    });
    let names = jpegs(&dir);
    println!(
        "images from {} ({} files, cycled)",
        dir.display(),
        names.len()
    );
    let fx = Fixture::serving(dir.clone()).await;
    let mut cluster = Cluster::new("pqimports");
    cluster.set("PHOTOQ_FETCH_ALLOW", "[\"127.0.0.1\"]");
    let key = cluster.key();
    let (api, base) = cluster.serve().await;
    let worker = cluster.work(a.concurrency);
    let client = Client::new(&base, &key);
    let clock = Instant::now();

    // 1. The same files, imported and uploaded.
    let imports = import(&client, &fx, &names, 0, a.images).await;
    wait_imports(&client, &imports, clock).await;
    let mut imported = Vec::new();
    for id in &imports {
        imported.extend(batch_photos(&client, id).await);
    }
    let files: Vec<(String, Vec<u8>)> = (0..a.images)
        .map(|i| {
            let name = &names[i % names.len()];
            (name.clone(), std::fs::read(dir.join(name)).unwrap())
        })
        .collect();
    let mut batches = Vec::new();
    for group in files
        .chunks(UPLOAD_BATCH)
        .collect::<Vec<_>>()
        .chunks(UPLOADERS)
    {
        let sent = group.iter().map(|b| client.upload(b));
        for body in futures_util::future::join_all(sent).await {
            batches.push(body["batch_id"].as_str().unwrap().to_owned());
        }
    }
    let mut uploaded = Vec::new();
    for id in &batches {
        client.wait_batch(id).await;
        uploaded.extend(batch_photos(&client, id).await);
    }

    if a.background == 0 {
        drop(worker);
        drop(api);
        cluster.cleanup().await;
        fx.stop().await;
        println!(
            "photoq imports: 1 worker process x concurrency {}; {} images imported: {:.2} images/s; \
             the same files uploaded: {:.2} images/s",
            a.concurrency,
            a.images,
            rate(&imported),
            rate(&uploaded)
        );
        return;
    }

    // 2. Uploads while a large import runs.
    let background = import(&client, &fx, &names, a.images, a.background).await;
    while left_of(&client, &background).await == a.background as i64 {
        tokio::time::sleep(POLL).await;
    }
    let mut latencies = Vec::new();
    let mut left_at_end = 0;
    for i in 0..a.uploads {
        let file = files[i % files.len()].clone();
        let body = client.upload(&[file]).await;
        let id = body["photos"][0]["id"].as_str().unwrap().to_owned();
        let photo = loop {
            let p = client.get(&format!("/v1/photos/{id}")).await;
            if p["state"] != "queued" && p["state"] != "processing" {
                break p;
            }
            assert!(clock.elapsed() < TIMEOUT, "timed out");
            tokio::time::sleep(POLL).await;
        };
        assert_eq!(photo["state"], "completed");
        latencies
            .push((time(&photo, "completed_at") - time(&photo, "created_at")).as_seconds_f64());
        left_at_end = left_of(&client, &background).await;
    }
    let import_start = Instant::now();
    wait_imports(&client, &background, clock).await;
    let mut all = Vec::new();
    for id in &background {
        all.extend(batch_photos(&client, id).await);
    }
    let tail = import_start.elapsed();
    drop(worker);
    drop(api);
    cluster.cleanup().await;
    fx.stop().await;

    latencies.sort_by(f64::total_cmp);
    println!(
        "photoq imports: 1 worker process x concurrency {}, {} cores",
        a.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  {} images imported from a local server: {:.2} images/s",
        a.images,
        rate(&imported)
    );
    println!(
        "  the same {} files uploaded:          {:.2} images/s",
        a.images,
        rate(&uploaded)
    );
    println!(
        "  {} uploads during a {}-image import: upload->completed p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        a.uploads,
        a.background,
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  import images still unfinished after the last upload: {left_at_end} of {}",
        a.background
    );
    println!(
        "  that import: {:.2} images/s overall ({:.0} s after the last upload)",
        rate(&all),
        tail.as_secs_f64()
    );
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(a));
}
