//! End to end: the real system (`photoq serve`, worker processes, PostgreSQL, Redis) on
//! this machine, driven over HTTP.
//!
//!   cargo bench --bench e2e -- [--photos N] [--workers W] [--concurrency C] [--dir DIR]
//!   cargo bench --bench e2e -- --no-op [--jobs N] [--workers W] [--concurrency C]
//!
//! Image mode uploads N photos from DIR (cycled; default the 12 MP set under
//! /tmp/corpus/big/12mp, else the shared corpus) in batches of 50 from 4 concurrent
//! clients, waits until every photo is final and prints images/s, the upload-to-completed
//! latency percentiles (the photo's `created_at` to its `completed_at`, both server clock)
//! and each worker's peak RSS (VmHWM).
//!
//! No-op mode measures the queue and the bookkeeping alone: N jobs are committed and
//! published up front, then workers started with `--no-op` take each one through the
//! same path (read, start recorded, completion recorded, acknowledged) without image work.
//! It prints jobs/s from the first start to the last completion, as recorded in PostgreSQL.
//!
//! PostgreSQL and Redis are taken from `PHOTOQ_BENCH_PG` (server URL without a database,
//! default postgres://postgres@127.0.0.1:5432) and `PHOTOQ_BENCH_REDIS` (default
//! redis://127.0.0.1:6379). Each run uses its own database, key prefix and storage
//! directory and removes them at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Double, Nullable};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use photoq::config::Config;
use photoq::db::models::{Batch, NewPhoto};
use serde_json::Value;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_photoq");
/// Photos per upload request (the default upload limit).
const BATCH: usize = 50;
/// Upload requests in flight at once.
const UPLOADERS: usize = 4;
/// Jobs committed and published per round in no-op mode.
const PUBLISH_CHUNK: usize = 5000;
const POLL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(1800);

struct Args {
    no_op: bool,
    count: usize,
    workers: usize,
    concurrency: usize,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        no_op: false,
        count: 0,
        workers: 1,
        concurrency: 0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--no-op" => a.no_op = true,
            "--photos" | "--jobs" => a.count = value().parse().expect("a number"),
            "--workers" => a.workers = value().parse().expect("a number"),
            "--concurrency" => a.concurrency = value().parse().expect("a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    if a.count == 0 {
        a.count = if a.no_op { 100_000 } else { 200 };
    }
    if a.concurrency == 0 {
        a.concurrency = if a.no_op { 500 } else { 2 };
    }
    a
}

/// A run's database, prefix and storage, and the processes started on them.
struct Rig {
    name: String,
    pg_server: String,
    redis_url: String,
    storage: PathBuf,
    procs: Vec<Child>,
}

impl Rig {
    fn new() -> Self {
        let name = format!("pqbench_{}", &Uuid::new_v4().simple().to_string()[..10]);
        Rig {
            storage: std::env::temp_dir().join(&name),
            pg_server: std::env::var("PHOTOQ_BENCH_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            redis_url: std::env::var("PHOTOQ_BENCH_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            name,
            procs: Vec::new(),
        }
    }

    fn database_url(&self) -> String {
        format!("{}/{}", self.pg_server, self.name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("PHOTOQ_DATABASE_URL", self.database_url())
            .env("PHOTOQ_REDIS_URL", &self.redis_url)
            .env("PHOTOQ_REDIS_PREFIX", &self.name)
            .env("PHOTOQ_STORAGE_ROOT", &self.storage)
            .env("PHOTOQ_LOG", "warn")
            .stdout(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).stdout(Stdio::piped()).output().expect("run");
        assert!(out.status.success(), "photoq {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&mut self, args: &[&str], env: &[(&str, String)]) -> u32 {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.spawn().expect("spawn photoq");
        let pid = child.id();
        self.procs.push(child);
        pid
    }

    /// Panics if a process started by this run has exited (a bad flag, a crash).
    fn assert_alive(&mut self) {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.try_wait() {
                panic!("photoq process {} exited: {status}", p.id());
            }
        }
    }

    fn config(&self) -> Config {
        let mut config = Config::defaults().expect("defaults");
        config.database.url = self.database_url();
        config.redis.url = self.redis_url.clone();
        config.redis.prefix = self.name.clone();
        config
    }

    async fn cleanup(&mut self) {
        for p in &mut self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status();
        }
        for p in &mut self.procs {
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.storage);
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.name))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                for k in keys {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(k).query_async(&mut conn).await;
                }
            }
        }
        let admin = format!("{}/postgres", self.pg_server);
        if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Peak resident set (VmHWM) of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn wait_ready(base: &str) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "api not ready");
        tokio::time::sleep(POLL).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn photo_files(dir: Option<PathBuf>) -> Vec<(String, Vec<u8>)> {
    let big = PathBuf::from("/tmp/corpus/big/12mp");
    let corpus =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/exif-samples/jpg/hdr");
    let dir = dir.unwrap_or(if big.is_dir() { big } else { corpus });
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no JPEGs in {}", dir.display());
    println!(
        "photos from {} ({} files, cycled)",
        dir.display(),
        files.len()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn images(a: Args) {
    let mut rig = Rig::new();
    rig.run(&["migrate"]);
    let key = rig
        .run(&["keys", "create", "--name", "bench"])
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    rig.spawn(&["serve"], &[("PHOTOQ_BIND", format!("127.0.0.1:{port}"))]);
    let conc = a.concurrency.to_string();
    let workers: Vec<u32> = (0..a.workers)
        .map(|_| rig.spawn(&["work", "--concurrency", &conc], &[]))
        .collect();
    wait_ready(&base).await;

    let files = photo_files(a.dir);
    let started = Utc::now();
    let clock = Instant::now();
    let http = reqwest::Client::new();
    let chunks: Vec<Vec<usize>> = (0..a.count)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    let mut batch_ids = Vec::new();
    for group in chunks.chunks(UPLOADERS) {
        let uploads = group.iter().map(|chunk| {
            let mut form = reqwest::multipart::Form::new();
            for &i in chunk {
                let (name, data) = &files[i % files.len()];
                let part = reqwest::multipart::Part::bytes(data.clone())
                    .file_name(name.clone())
                    .mime_str("image/jpeg")
                    .unwrap();
                form = form.part("file", part);
            }
            http.post(format!("{base}/v1/photos"))
                .bearer_auth(&key)
                .multipart(form)
                .send()
        });
        for res in futures_util::future::join_all(uploads).await {
            let res = res.expect("upload");
            assert_eq!(res.status(), 202, "upload refused");
            let body: Value = res.json().await.unwrap();
            batch_ids.push(body["batch_id"].as_str().unwrap().to_owned());
        }
    }
    let uploaded = clock.elapsed();

    // Wait for every batch to be final, then read each photo's timestamps.
    let mut photos: Vec<Value> = Vec::new();
    for id in &batch_ids {
        loop {
            let b: Value = http
                .get(format!("{base}/v1/batches/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if b["queued"] == 0 && b["processing"] == 0 {
                assert_eq!(b["completed"], b["total"], "not all completed: {b}");
                break;
            }
            assert!(clock.elapsed() < TIMEOUT, "timed out");
            rig.assert_alive();
            tokio::time::sleep(POLL).await;
        }
        let list: Value = http
            .get(format!("{base}/v1/photos?batch={id}&limit=100"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        photos.extend(list["photos"].as_array().cloned().unwrap_or_default());
    }
    let rss: Vec<f64> = workers.iter().filter_map(|&p| peak_rss_mib(p)).collect();
    rig.cleanup().await;

    assert_eq!(photos.len(), a.count, "every photo listed");
    let time = |v: &Value, k: &str| -> DateTime<Utc> {
        v[k].as_str().and_then(|s| s.parse().ok()).expect(k)
    };
    let mut latencies: Vec<f64> = photos
        .iter()
        .map(|p| (time(p, "completed_at") - time(p, "created_at")).as_seconds_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let last = photos
        .iter()
        .map(|p| time(p, "completed_at"))
        .max()
        .unwrap();
    let window = (last - started).as_seconds_f64();

    println!(
        "photoq e2e: {} photos, {} worker process(es) x concurrency {}, {} cores",
        a.count,
        a.workers,
        a.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  uploads done after   {:.2} s", uploaded.as_secs_f64());
    println!("  all completed after  {window:.2} s");
    println!("  images/s             {:.2}", a.count as f64 / window);
    println!(
        "  latency upload->completed: p50 {:.2} s, p95 {:.2} s, p99 {:.2} s, max {:.2} s",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    let rss: Vec<String> = rss.iter().map(|r| format!("{r:.0}")).collect();
    println!("  peak worker RSS (MiB): {}", rss.join(", "));
}

async fn no_op(a: Args) {
    let mut rig = Rig::new();
    rig.run(&["migrate"]);
    let config = rig.config();
    let pool = photoq::db::connect(&config.database).await.expect("db");
    let queue = photoq::queue::Queue::new(&config.redis).expect("redis");
    queue.ensure_group().await.expect("group");
    let (owner, _) = photoq::auth::create_key(&pool, "bench").await.expect("key");

    let clock = Instant::now();
    let mut remaining = a.count;
    while remaining > 0 {
        let n = remaining.min(PUBLISH_CHUNK);
        remaining -= n;
        let batch = Batch {
            id: Uuid::now_v7(),
            owner_id: owner.id,
            created_at: Utc::now(),
        };
        let photos: Vec<NewPhoto> = (0..n)
            .map(|_| {
                let id = Uuid::now_v7();
                NewPhoto {
                    id,
                    batch_id: batch.id,
                    owner_id: owner.id,
                    filename: None,
                    content_type: "image/jpeg".into(),
                    bytes: 0,
                    sha256: String::new(),
                    original_key: format!("originals/{id}"),
                }
            })
            .collect();
        let ids: Vec<Uuid> = photos.iter().map(|p| p.id).collect();
        {
            let mut conn = photoq::db::conn(&pool).await.expect("conn");
            photoq::db::photos::insert_batch(&mut conn, &batch, &photos, None)
                .await
                .expect("insert");
        }
        photoq::dispatch::publish(&pool, &queue, &ids)
            .await
            .expect("publish");
    }
    println!(
        "{} jobs committed and published in {:.2} s",
        a.count,
        clock.elapsed().as_secs_f64()
    );
    // Planner statistics for the freshly filled tables, as autovacuum keeps them on a
    // database in service (it would only get to them a minute later).
    {
        let mut conn = photoq::db::conn(&pool).await.expect("conn");
        diesel::sql_query("ANALYZE photos, photo_attempts")
            .execute(&mut conn)
            .await
            .expect("analyze");
    }

    let conc = a.concurrency.to_string();
    let workers: Vec<u32> = (0..a.workers)
        .map(|_| rig.spawn(&["work", "--no-op", "--concurrency", &conc], &[]))
        .collect();
    let clock = Instant::now();
    let mut conn = AsyncPgConnection::establish(&rig.database_url())
        .await
        .expect("db");
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    loop {
        let done: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM photos WHERE state IN ('completed', 'failed', 'dead')",
        )
        .get_result(&mut conn)
        .await
        .expect("count");
        if done.n as usize >= a.count {
            break;
        }
        assert!(clock.elapsed() < TIMEOUT, "timed out at {} jobs", done.n);
        rig.assert_alive();
        tokio::time::sleep(POLL).await;
    }
    let wall = clock.elapsed();

    #[derive(diesel::QueryableByName)]
    struct Window {
        #[diesel(sql_type = Nullable<Double>)]
        secs: Option<f64>,
        #[diesel(sql_type = BigInt)]
        completed: i64,
        #[diesel(sql_type = BigInt)]
        attempts: i64,
    }
    let w: Window = diesel::sql_query(
        "SELECT extract(epoch FROM max(completed_at) - min(started_at))::float8 AS secs, \
         count(*) FILTER (WHERE state = 'completed') AS completed, \
         (SELECT count(*) FROM photo_attempts WHERE outcome = 'completed') AS attempts \
         FROM photos",
    )
    .get_result(&mut conn)
    .await
    .expect("window");
    let rss: Vec<String> = workers
        .iter()
        .filter_map(|&p| peak_rss_mib(p))
        .map(|r| format!("{r:.0}"))
        .collect();
    drop(conn);
    drop(pool);
    rig.cleanup().await;

    let secs = w.secs.unwrap_or(f64::NAN);
    println!(
        "photoq no-op: {} jobs, {} worker process(es) x concurrency {}",
        a.count, a.workers, a.concurrency
    );
    println!(
        "  completed {} (each with its attempt recorded: {})",
        w.completed, w.attempts
    );
    println!("  first start -> last completion: {secs:.2} s");
    println!("  jobs/s                {:.0}", a.count as f64 / secs);
    println!(
        "  jobs/s (wall, incl. worker start-up) {:.0}",
        a.count as f64 / wall.as_secs_f64()
    );
    println!("  peak worker RSS (MiB): {}", rss.join(", "));
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if a.no_op {
            no_op(a).await
        } else {
            images(a).await
        }
    });
}
