//! End to end: the real system (`photoq serve`, worker processes, PostgreSQL, Redis) on
//! this machine, driven over HTTP.
//!
//!   cargo bench --bench e2e -- [--photos N] [--workers W] [--concurrency C] [--dir DIR]
//!                                  [--costs]
//!   cargo bench --bench e2e -- --no-op [--jobs N] [--workers W] [--concurrency C] [--no-events]
//!                                  [--scrapes S] [--costs]
//!   cargo bench --bench e2e -- --uploads N --upload-mib M
//!   cargo bench --bench e2e -- --latency N [--dir DIR]
//!
//! `--concurrency C` and `--cpu-slots S` are passed to the workers; without them the workers
//! run at photoq's defaults (derived from the machine), except in no-op mode (500 jobs).
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
//! It prints jobs/s from the first start to the last completion, as recorded in PostgreSQL,
//! and Redis's `used_memory` before the jobs were published and once every one is
//! acknowledged (with the job stream's length then). `--no-events` switches the event log's
//! triggers off in the run's database: the same run without events, to price them.
//! `--scrapes S` then starts `photoq serve` on the finished database and times S scrapes
//! of its `/metrics` (once the queue-wide gauges are in it), printing the median, p99 and
//! the size of the answer.
//!
//! `--costs` adds what the run cost per job (`benches/usage`): CPU of the API and worker
//! processes, of PostgreSQL and of Redis, SQL statements (when the server has
//! pg_stat_statements in shared_preload_libraries), Redis commands and bytes stored; the
//! driver then polls once a second instead of every 50 ms, so it adds little of its own.
//! In no-op mode the jobs are published by the driver itself (its CPU is not counted; the
//! statements and commands of publishing are).
//!
//! Latency mode measures one photo at a time on an idle service: `photoq serve` and one
//! worker at its defaults; each of N photos (12 MP by default) is uploaded once the one
//! before is completed and the worker has sat idle for 200 ms (blocked in its stream
//! read). It prints p50/p99/max of: the upload request (client clock), upload committed to
//! attempt started (`created_at` to the attempt's `started_at`), started to completed, and
//! upload sent to thumbnail ready (the client's clock before the request to the photo's
//! `completed_at`: one machine, one clock). The driver watches for the end by reading the
//! photo's row every 2 ms.
//!
//! Upload mode starts `photoq serve` alone and has N clients upload one file of M MiB each,
//! all at once; it prints the API process's peak RSS (VmHWM) and how many were accepted.
//!
//! The processes are started by the integration tests' harness (`tests/common/cluster.rs`):
//! PostgreSQL and Redis come from `PHOTOQ_TEST_DATABASE_URL` (server URL without a
//! database, default postgres://postgres@127.0.0.1:5432) and `PHOTOQ_TEST_REDIS_URL`
//! (default redis://127.0.0.1:6379). Each run uses its own database, key prefix and storage
//! directory and removes them at the end. `PHOTOQ_TEST_BIN` runs another build of photoq
//! (an earlier commit's, say) under the same driver; the processes inherit the environment,
//! so e.g. `PHOTOQ_TELEMETRY_OTLP_ENDPOINT` reaches them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod usage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Double, Nullable};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use photoq::config::Config;
use serde_json::Value;

use common::cluster::{Client, Cluster, Proc};
/// Photos per upload request (the default upload limit).
const BATCH: usize = 50;
/// Upload requests in flight at once.
const UPLOADERS: usize = 4;
/// Jobs committed and published per round in no-op mode.
const PUBLISH_CHUNK: usize = 5000;
const POLL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(1800);
/// How often the driver looks for the end of a run whose costs are measured.
const COST_POLL: Duration = Duration::from_secs(1);

struct Args {
    no_op: bool,
    /// Report the run's cost per job.
    costs: bool,
    /// No-op mode without the event log's triggers.
    no_events: bool,
    /// No-op mode: scrapes of `/metrics` timed at the end.
    scrapes: usize,
    /// Upload mode: clients, and MiB each uploads.
    uploads: usize,
    upload_mib: usize,
    count: usize,
    workers: usize,
    /// Passed to the workers when set (else photoq's defaults).
    concurrency: Option<usize>,
    cpu_slots: Option<usize>,
    /// Latency mode: photos, one at a time.
    latency: usize,
    dir: Option<PathBuf>,
}

impl Args {
    /// `photoq work` with this run's sizing flags.
    fn work_args(&self, no_op: bool) -> Vec<String> {
        let mut args = vec!["work".to_owned()];
        if no_op {
            args.push("--no-op".into());
        }
        if let Some(c) = self.concurrency {
            args.extend(["--concurrency".into(), c.to_string()]);
        }
        if let Some(s) = self.cpu_slots {
            args.extend(["--cpu-slots".into(), s.to_string()]);
        }
        args
    }

    /// How the workers are sized, for the report.
    fn sizing(&self) -> String {
        let show = |v: Option<usize>| v.map_or("default".to_owned(), |n| n.to_string());
        format!(
            "concurrency {}, cpu slots {}",
            show(self.concurrency),
            show(self.cpu_slots)
        )
    }
}

fn args() -> Args {
    let mut a = Args {
        no_op: false,
        costs: false,
        no_events: false,
        scrapes: 0,
        uploads: 0,
        upload_mib: 20,
        count: 0,
        workers: 1,
        concurrency: None,
        cpu_slots: None,
        latency: 0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--no-op" => a.no_op = true,
            "--costs" => a.costs = true,
            "--no-events" => a.no_events = true,
            "--scrapes" => a.scrapes = value().parse().expect("a number"),
            "--photos" | "--jobs" => a.count = value().parse().expect("a number"),
            "--workers" => a.workers = value().parse().expect("a number"),
            "--concurrency" => a.concurrency = Some(value().parse().expect("a number")),
            "--cpu-slots" => a.cpu_slots = Some(value().parse().expect("a number")),
            "--latency" => a.latency = value().parse().expect("a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            "--uploads" => a.uploads = value().parse().expect("a number"),
            "--upload-mib" => a.upload_mib = value().parse().expect("a number"),
            "--bench" => {} // added by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    if a.count == 0 {
        a.count = if a.no_op { 100_000 } else { 200 };
    }
    if a.no_op && a.concurrency.is_none() {
        a.concurrency = Some(500);
    }
    a
}

/// Panics if one of the processes has exited (a bad flag, a crash).
fn assert_alive(procs: &mut [Proc]) {
    for p in procs {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("photoq process {} exited: {status}", p.pid());
        }
    }
}

/// The configuration the cluster's processes run with, for the harness's own connections.
fn config_of(cluster: &Cluster) -> Config {
    let mut config = Config::defaults().expect("defaults");
    config.database.url = cluster.database_url();
    config.redis.url = cluster.redis_url.clone();
    config.redis.prefix = cluster.name.clone();
    config
}

/// Peak resident set (VmHWM) of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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

/// `photoq serve` and `workers` worker processes sized as the run asks, on a fresh database
/// and key prefix, and a client with a key: the processes are the workers, then the API.
async fn service(a: &Args, workers: usize) -> (Cluster, Client, Vec<Proc>) {
    let cluster = Cluster::new("pqbench");
    let key = cluster.key();
    let (api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let work = a.work_args(false);
    let work: Vec<&str> = work.iter().map(String::as_str).collect();
    let mut procs: Vec<Proc> = (0..workers).map(|_| cluster.spawn(&work, &[])).collect();
    procs.push(api);
    (cluster, client, procs)
}

async fn images(a: Args) {
    let (cluster, client, mut procs) = service(&a, a.workers).await;
    let workers: Vec<u32> = procs[..a.workers].iter().map(Proc::pid).collect();

    let files = photo_files(a.dir.clone());
    let (mut db, usage_before, poll) = costs_from_now(&a, &cluster).await;
    let started = Utc::now();
    let clock = Instant::now();
    let batches: Vec<Vec<(String, Vec<u8>)>> = (0..a.count)
        .map(|i| files[i % files.len()].clone())
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[_]>::to_vec)
        .collect();
    let mut batch_ids = Vec::new();
    for group in batches.chunks(UPLOADERS) {
        let uploads = group.iter().map(|batch| client.upload(batch));
        for body in futures_util::future::join_all(uploads).await {
            batch_ids.push(body["batch_id"].as_str().unwrap().to_owned());
        }
    }
    let uploaded = clock.elapsed();

    // Wait for every batch to be final, then read each photo's timestamps.
    let mut photos: Vec<Value> = Vec::new();
    for id in &batch_ids {
        loop {
            let b = client.get(&format!("/v1/batches/{id}")).await;
            if b["queued"] == 0 && b["processing"] == 0 {
                assert_eq!(b["completed"], b["total"], "not all completed: {b}");
                break;
            }
            assert!(clock.elapsed() < TIMEOUT, "timed out");
            assert_alive(&mut procs);
            tokio::time::sleep(poll).await;
        }
        let list = client
            .get(&format!("/v1/photos?batch={id}&limit=100"))
            .await;
        photos.extend(list["photos"].as_array().cloned().unwrap_or_default());
    }
    let rss: Vec<f64> = workers.iter().filter_map(|&p| peak_rss_mib(p)).collect();
    let costs = match usage_before {
        Some(before) => {
            let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
            let after = usage::Usage::take(&pids, &mut db, &cluster.redis_url).await;
            let stored: u64 = cluster
                .stored("")
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            Some((before, after, stored))
        }
        None => None,
    };
    let api_rss = peak_rss_mib(procs.last().map(Proc::pid).unwrap_or(0));
    drop(procs);
    drop(db);
    cluster.cleanup().await;

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
        "photoq e2e: {} photos, {} worker process(es), {}, {} cores",
        a.count,
        a.workers,
        a.sizing(),
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
    if let Some(r) = api_rss {
        println!("  peak API RSS (MiB):    {r:.0}");
    }
    if let Some((before, after, stored)) = costs {
        let mut roles = vec!["photoq work"; a.workers];
        roles.push("photoq serve");
        after.report(&before, &roles, a.count, stored);
    }
}

/// A connection to the run's database, what was used so far when the run's costs are
/// measured, and how often the driver polls then.
async fn costs_from_now(
    a: &Args,
    cluster: &Cluster,
) -> (AsyncPgConnection, Option<usage::Usage>, Duration) {
    let mut db = AsyncPgConnection::establish(&cluster.database_url())
        .await
        .expect("db");
    if a.costs {
        let before = usage::Usage::take(&[], &mut db, &cluster.redis_url).await;
        (db, Some(before), COST_POLL)
    } else {
        (db, None, POLL)
    }
}

/// Redis's `used_memory`, in bytes.
async fn used_memory(url: &str) -> u64 {
    let mut conn = redis::Client::open(url)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

/// Timestamps of one photo's way through, from its row and its attempt's.
#[derive(diesel::QueryableByName)]
struct Way {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    started_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Timestamptz>)]
    completed_at: Option<DateTime<Utc>>,
}

async fn latency(a: Args) {
    let (cluster, client, mut procs) = service(&a, 1).await;
    let files = photo_files(a.dir.clone());
    let mut db = AsyncPgConnection::establish(&cluster.database_url())
        .await
        .expect("db");
    let (mut upload, mut to_start, mut running, mut ready) = (vec![], vec![], vec![], vec![]);
    for i in 0..a.latency + 1 {
        // Idle: the worker is blocked in its stream read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = Utc::now();
        let clock = Instant::now();
        let body = client.upload(&[files[i % files.len()].clone()]).await;
        let took = clock.elapsed().as_secs_f64();
        let id: uuid::Uuid = body["photos"][0]["id"].as_str().unwrap().parse().unwrap();
        let way = loop {
            let way: Way = diesel::sql_query(
                "SELECT p.created_at, a.started_at, p.completed_at FROM photos AS p \
                 LEFT JOIN photo_attempts AS a ON a.photo_id = p.id WHERE p.id = $1",
            )
            .bind::<diesel::sql_types::Uuid, _>(id)
            .get_result(&mut db)
            .await
            .expect("photo");
            if way.completed_at.is_some() {
                break way;
            }
            assert!(
                clock.elapsed() < Duration::from_secs(60),
                "photo {id} not done"
            );
            assert_alive(&mut procs);
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if i == 0 {
            continue; // warm-up: connections opened, code paged in
        }
        let (started, completed) = (way.started_at.unwrap(), way.completed_at.unwrap());
        upload.push(took);
        to_start.push((started - way.created_at).as_seconds_f64());
        running.push((completed - started).as_seconds_f64());
        ready.push((completed - sent).as_seconds_f64());
    }
    drop(procs);
    drop(db);
    cluster.cleanup().await;
    println!(
        "photoq latency at idle: {} photos one at a time, 1 worker process, {}, {} cores",
        a.latency,
        a.sizing(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (name, mut v) in [
        ("upload request", upload),
        ("committed -> started", to_start),
        ("started -> completed", running),
        ("upload sent -> thumbnail ready", ready),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:32} p50 {:7.1} ms  p99 {:7.1} ms  max {:7.1} ms",
            percentile(&v, 50.0) * 1e3,
            percentile(&v, 99.0) * 1e3,
            v.last().copied().unwrap_or(f64::NAN) * 1e3
        );
    }
}

async fn uploads(a: Args) {
    let cluster = Cluster::new("pqbench");
    let key = cluster.key();
    let (api, base) = cluster.serve().await;
    // A real JPEG padded to size: the API sniffs the first bytes and streams the rest.
    let mut file = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus/exif-samples/jpg/Canon_40D.jpg"),
    )
    .expect("photo");
    file.resize(a.upload_mib << 20, 0);
    let idle = peak_rss_mib(api.pid()).unwrap_or(f64::NAN);
    let clock = Instant::now();
    let clients: Vec<_> = (0..a.uploads)
        .map(|i| {
            let client = Client::new(&base, &key);
            let file = file.clone();
            tokio::spawn(async move {
                let form = reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(file).file_name(format!("{i}.jpg")),
                );
                client
                    .http
                    .post(format!("{}/v1/photos", client.base))
                    .bearer_auth(&client.key)
                    .multipart(form)
                    .send()
                    .await
                    .expect("upload")
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for c in clients {
        *statuses.entry(c.await.expect("client")).or_insert(0) += 1;
    }
    let secs = clock.elapsed().as_secs_f64();
    let peak = peak_rss_mib(api.pid()).unwrap_or(f64::NAN);
    drop(api);
    cluster.cleanup().await;
    println!(
        "photoq serve: {} clients x {} MiB at once, answered {statuses:?} in {secs:.2} s",
        a.uploads, a.upload_mib
    );
    println!("  API peak RSS (VmHWM): {peak:.0} MiB (idle before: {idle:.0} MiB)");
}

async fn no_op(a: Args) {
    let cluster = Cluster::new("pqbench");
    // The schema of the build under test: with PHOTOQ_TEST_BIN, that build's own
    // migrations (this driver's statements name their columns and work on either).
    let url = cluster.database_url();
    if std::env::var_os("PHOTOQ_TEST_BIN").is_some() {
        cluster.run(&["migrate"]);
    } else {
        photoq::db::create_database_if_missing(&url)
            .await
            .expect("create database");
        photoq::db::migrate(&url).await.expect("migrate");
    }
    let config = config_of(&cluster);
    let pool = photoq::db::pool(&config.database).expect("db");
    let queue = photoq::queue::Queue::new(&config.redis).expect("redis");
    queue.ensure_group().await.expect("group");
    let (owner, _) = photoq::auth::create_key(&pool, "bench", photoq::auth::Scopes::CLIENT)
        .await
        .expect("key");
    if a.no_events {
        let mut conn = photoq::db::conn(&pool).await.expect("conn");
        for trigger in ["photos_inserted_events", "photos_updated_events"] {
            diesel::sql_query(format!("ALTER TABLE photos DISABLE TRIGGER {trigger}"))
                .execute(&mut conn)
                .await
                .expect("disable trigger");
        }
    }
    let memory_before = used_memory(&cluster.redis_url).await;
    let (mut db, usage_before, poll) = costs_from_now(&a, &cluster).await;

    let clock = Instant::now();
    let mut remaining = a.count;
    while remaining > 0 {
        let n = remaining.min(PUBLISH_CHUNK);
        remaining -= n;
        common::publish_no_op_batch(&pool, &queue, owner.id, n).await;
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

    let work = a.work_args(true);
    let work: Vec<&str> = work.iter().map(String::as_str).collect();
    let mut procs: Vec<Proc> = (0..a.workers).map(|_| cluster.spawn(&work, &[])).collect();
    let clock = Instant::now();
    let mut conn = AsyncPgConnection::establish(&cluster.database_url())
        .await
        .expect("db");
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // Through the partial index of unfinished photos (its condition as the schema has it):
    // the poll costs the run little.
    let has_column: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.columns \
         WHERE table_name = 'photos' AND column_name = 'unfinished'",
    )
    .get_result(&mut conn)
    .await
    .expect("columns");
    let unfinished = match has_column.n {
        0 => "state IN ('queued', 'processing')",
        _ => "unfinished",
    };
    loop {
        let left: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM (SELECT 1 FROM photos WHERE {unfinished} LIMIT 1) AS s"
        ))
        .get_result(&mut conn)
        .await
        .expect("count");
        if left.n == 0 {
            break;
        }
        assert!(clock.elapsed() < TIMEOUT, "timed out");
        assert_alive(&mut procs);
        tokio::time::sleep(poll).await;
    }
    let wall = clock.elapsed();
    // The sequencer numbers the changes after their commits: with events on, the run is
    // over once the last of them is in the log.
    #[derive(diesel::QueryableByName)]
    struct Sequenced {
        #[diesel(sql_type = BigInt)]
        staged: i64,
        #[diesel(sql_type = BigInt)]
        events: i64,
        #[diesel(sql_type = Nullable<Double>)]
        secs: Option<f64>,
    }
    let mut sequenced = None;
    if !a.no_events {
        let mut checks = 0;
        loop {
            // Up to the last completion when nothing was left at the first look.
            let s: Sequenced = diesel::sql_query(
                "SELECT (SELECT count(*) FROM event_changes) AS staged, \
                 (SELECT coalesce(sum(last_id), 0)::int8 FROM event_counters) AS events, \
                 extract(epoch FROM CASE WHEN $1 THEN max(completed_at) \
                     ELSE clock_timestamp() END - min(started_at))::float8 AS secs \
                 FROM photos",
            )
            .bind::<diesel::sql_types::Bool, _>(checks == 0)
            .get_result(&mut conn)
            .await
            .expect("staged");
            if s.staged == 0 {
                sequenced = Some(s);
                break;
            }
            checks += 1;
            assert!(clock.elapsed() < TIMEOUT, "changes left unsequenced");
            tokio::time::sleep(poll).await;
        }
    }
    // Completion is recorded before the acknowledgement: wait for the stream to empty.
    while queue.stream_len().await.expect("xlen") > 0 {
        assert!(clock.elapsed() < TIMEOUT, "entries left in the stream");
        tokio::time::sleep(poll).await;
    }
    let costs = match usage_before {
        Some(before) => {
            let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
            Some((
                before,
                usage::Usage::take(&pids, &mut db, &cluster.redis_url).await,
            ))
        }
        None => None,
    };
    let memory_after = used_memory(&cluster.redis_url).await;
    let stream_after = queue.stream_len().await.expect("xlen");

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
    let rss: Vec<String> = procs
        .iter()
        .filter_map(|p| peak_rss_mib(p.pid()))
        .map(|r| format!("{r:.0}"))
        .collect();
    drop(procs);
    let scrapes = if a.scrapes > 0 {
        Some(time_scrapes(&cluster, a.scrapes).await)
    } else {
        None
    };
    drop(conn);
    drop(db);
    drop(pool);
    cluster.cleanup().await;

    let secs = w.secs.unwrap_or(f64::NAN);
    println!(
        "photoq no-op: {} jobs, {} worker process(es), {}, events {}",
        a.count,
        a.workers,
        a.sizing(),
        if a.no_events { "off" } else { "on" }
    );
    println!(
        "  completed {} (each with its attempt recorded: {})",
        w.completed, w.attempts
    );
    println!("  first start -> last completion: {secs:.2} s");
    println!("  jobs/s                {:.0}", a.count as f64 / secs);
    if let Some(s) = sequenced {
        let to_log = s.secs.unwrap_or(f64::NAN);
        println!(
            "  first start -> every event in the log: {to_log:.2} s ({} events)",
            s.events
        );
        println!("  jobs/s, events included {:.0}", a.count as f64 / to_log);
    }
    println!(
        "  jobs/s (wall, incl. worker start-up) {:.0}",
        a.count as f64 / wall.as_secs_f64()
    );
    println!("  peak worker RSS (MiB): {}", rss.join(", "));
    if let Some((p50, p99, bytes)) = scrapes {
        println!(
            "  /metrics with {} photos: {} scrapes, p50 {p50:.2} ms, p99 {p99:.2} ms, {bytes} bytes",
            a.count, a.scrapes
        );
    }
    println!(
        "  redis used_memory     {:.2} MiB before, {:.2} MiB after ({:+.1}%), job stream length after: {stream_after}",
        memory_before as f64 / 1048576.0,
        memory_after as f64 / 1048576.0,
        (memory_after as f64 / memory_before as f64 - 1.0) * 100.0
    );
    if let Some((before, after)) = costs {
        after.report(&before, &vec!["photoq work --no-op"; a.workers], a.count, 0);
    }
}

/// Starts `photoq serve` and times `n` sequential scrapes of its `/metrics`, once the
/// queue-wide gauges are in it: (p50 ms, p99 ms, bytes of the last answer).
async fn time_scrapes(cluster: &Cluster, n: usize) -> (f64, f64, usize) {
    let (api, base) = cluster.serve().await;
    let http = common::http_client();
    let url = format!("{base}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http
            .get(&url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        if text.contains("photoq_queue_entries{") {
            break;
        }
        assert!(Instant::now() < deadline, "queue gauges never exported");
        tokio::time::sleep(POLL).await;
    }
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let clock = Instant::now();
        let body = http
            .get(&url)
            .send()
            .await
            .expect("scrape")
            .bytes()
            .await
            .expect("body");
        times.push(clock.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    drop(api);
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), bytes)
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
        } else if a.latency > 0 {
            latency(a).await
        } else if a.uploads > 0 {
            uploads(a).await
        } else {
            images(a).await
        }
    });
}
