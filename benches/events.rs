//! Live progress under load: one `photoq serve`, no-op workers, and SSE subscribers.
//!
//!   cargo bench --bench events -- [--subscribers N] [--photos P] [--workers W]
//!
//! 1. Latency: one subscriber follows `/v1/events` while a batch of P photos goes through
//!    no-op workers (queued, processing, completed: 3 events a photo, and the batch's);
//!    for every event, the time from its `created_at` (written with `clock_timestamp()` by
//!    the trigger in the changing transaction, before its commit; the sequencer numbers it
//!    after) to its arrival at the client, same clock; p50 and p99.
//! 2. N subscribers (default 2,000) connected to the same `serve` and idle: its RSS and CPU
//!    over 10 s.
//! 3. The same N subscribers while another batch of P photos runs: the `serve` process's
//!    CPU and peak RSS, the time until every subscriber has the batch's last event, and the
//!    latency percentiles over every event of every 50th subscriber (the others only look
//!    for the batch's end in their bytes: parsing 3,000 events × 2,000 streams here would
//!    take the cores the server is measured on).
//!
//! The subscribers are this process's tokio tasks (HTTP/1.1, one connection each), on the
//! same two cores as photoq: their parsing competes with the server. They all use one key,
//! so the per-key request limit is switched off. Processes, database and Redis prefix as in
//! `benches/e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use photoq::config::Config;

use common::cluster::{Cluster, Proc};

const TIMEOUT: Duration = Duration::from_secs(600);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

struct Args {
    subscribers: usize,
    photos: usize,
    workers: usize,
}

fn args() -> Args {
    let mut a = Args {
        subscribers: 2000,
        photos: 1000,
        workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--subscribers" => a.subscribers = value().parse().expect("number"),
            "--photos" => a.photos = value().parse().expect("number"),
            "--workers" => a.workers = value().parse().expect("number"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// (utime + stime in clock ticks, VmRSS KiB, VmHWM KiB) of a process.
fn usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

/// Clock ticks per second (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What the subscribers saw.
#[derive(Default)]
struct Seen {
    /// Milliseconds from an event's `created_at` to its arrival, over all subscribers.
    latencies: Mutex<Vec<f64>>,
    /// Subscribers whose stream is open.
    connected: AtomicUsize,
    /// Subscribers that saw the batch end.
    finished: AtomicUsize,
}

/// Every this many subscribers, one parses every event and records its latency; the others
/// only watch their bytes for the batch's end, so that this process's parsing does not
/// take the cores the server is measured on.
const PROBE_EVERY: usize = 50;

/// The end of a batch, as it appears in an SSE stream (both end types start so).
const BATCH_END: &[u8] = b"event: batch.completed";

/// Opens an SSE stream of `url` and counts it connected.
async fn connect(http: &reqwest::Client, url: &str, key: &str, seen: &Seen) -> reqwest::Response {
    let res = http
        .get(url)
        .bearer_auth(key)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .expect("subscribe");
    assert_eq!(res.status(), 200);
    seen.connected.fetch_add(1, Ordering::SeqCst);
    res
}

/// A light subscriber: counts itself finished when its stream shows a batch's end.
async fn watch(http: reqwest::Client, url: String, key: String, seen: Arc<Seen>) {
    let res = connect(&http, &url, &key, &seen).await;
    let mut stream = res.bytes_stream();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        tail.extend_from_slice(&chunk);
        if tail.windows(BATCH_END.len()).any(|w| w == BATCH_END) {
            seen.finished.fetch_add(1, Ordering::SeqCst);
            tail.clear();
        }
        // Keep only what could be the start of a marker cut by the chunk boundary.
        let keep = tail.len().saturating_sub(BATCH_END.len());
        tail.drain(..keep);
    }
}

/// One subscriber: follows `/v1/events`, recording latencies, and counts itself finished at
/// each batch end.
async fn subscribe(http: reqwest::Client, url: String, key: String, seen: Arc<Seen>) {
    let res = connect(&http, &url, &key, &seen).await;
    let mut stream = res.bytes_stream().eventsource();
    let mut mine = Vec::new();
    while let Some(Ok(m)) = stream.next().await {
        if m.data.is_empty() {
            continue;
        }
        let Ok(e) = serde_json::from_str::<photoq::events::Event>(&m.data) else {
            continue;
        };
        let ms = (Utc::now() - e.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        mine.push(ms);
        if photoq::events::ends_batch(&e.kind) {
            seen.latencies.lock().unwrap().append(&mut mine);
            seen.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn wait_finished(seen: &Seen, want: usize, procs: &mut [Proc]) {
    let clock = Instant::now();
    while seen.finished.load(Ordering::SeqCst) < want {
        assert!(
            clock.elapsed() < TIMEOUT,
            "subscribers did not see the batch end"
        );
        for p in procs.iter_mut() {
            assert!(
                p.child.try_wait().unwrap().is_none(),
                "a photoq process died"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report_latency(what: &str, seen: &Seen) {
    let mut l = std::mem::take(&mut *seen.latencies.lock().unwrap());
    l.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {what}: {} deliveries, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
}

async fn bench(a: Args) {
    let mut cluster = Cluster::new("pqevbench");
    // One key opens every stream: no per-key request limit.
    cluster.set("PHOTOQ_LIMITS_REQUESTS_PER_SEC", 0);
    let key = cluster.key();
    let mut config = Config::defaults().expect("defaults");
    config.database.url = cluster.database_url();
    config.redis.url = cluster.redis_url.clone();
    config.redis.prefix = cluster.name.clone();
    let pool = photoq::db::connect(&config.database).await.expect("db");
    let queue = photoq::queue::Queue::new(&config.redis).expect("redis");
    queue.ensure_group().await.expect("group");
    let owner = photoq::auth::authenticate(&pool, &key)
        .await
        .expect("auth")
        .expect("owner")
        .owner;
    let (serve, base) = cluster.serve().await;
    let serve_pid = serve.pid();
    let mut procs = vec![serve];
    for _ in 0..a.workers {
        procs.push(cluster.spawn(&["work", "--no-op", "--concurrency", "200"], &[]));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("{base}/v1/events");
    println!(
        "photoq events: one serve, {} no-op worker process(es), batches of {} photos",
        a.workers, a.photos
    );

    // 1. One subscriber.
    let seen = Arc::new(Seen::default());
    let one = tokio::spawn(subscribe(
        http.clone(),
        url.clone(),
        key.clone(),
        seen.clone(),
    ));
    while seen.connected.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    common::publish_no_op_batch(&pool, &queue, owner, a.photos).await;
    wait_finished(&seen, 1, &mut procs).await;
    report_latency("1 subscriber", &seen);
    one.abort();

    // 2. N idle subscribers.
    let seen = Arc::new(Seen::default());
    let tasks: Vec<_> = (0..a.subscribers)
        .map(|i| {
            let (http, url, key, seen) = (http.clone(), url.clone(), key.clone(), seen.clone());
            if i % PROBE_EVERY == 0 {
                tokio::spawn(subscribe(http, url, key, seen))
            } else {
                tokio::spawn(watch(http, url, key, seen))
            }
        })
        .collect();
    let clock = Instant::now();
    while seen.connected.load(Ordering::SeqCst) < a.subscribers {
        assert!(clock.elapsed() < TIMEOUT, "subscribers could not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  {} subscribers connected in {:.2} s",
        a.subscribers,
        clock.elapsed().as_secs_f64()
    );
    let (t0, _, _) = usage(serve_pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    let (t1, rss, _) = usage(serve_pid);
    println!(
        "  idle: serve RSS {:.1} MiB, CPU {:.1}% of one core over {} s",
        rss as f64 / 1024.0,
        (t1 - t0) as f64 / TICKS / IDLE_WINDOW.as_secs_f64() * 100.0,
        IDLE_WINDOW.as_secs()
    );

    // 3. A batch with N subscribers.
    let clock = Instant::now();
    common::publish_no_op_batch(&pool, &queue, owner, a.photos).await;
    wait_finished(&seen, a.subscribers, &mut procs).await;
    let wall = clock.elapsed().as_secs_f64();
    let (t2, rss, hwm) = usage(serve_pid);
    println!(
        "  batch: every subscriber had it all after {wall:.2} s; serve CPU {:.1}% of one core, \
         RSS {:.1} MiB (peak {:.1} MiB)",
        (t2 - t1) as f64 / TICKS / wall * 100.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    report_latency(
        &format!(
            "{} subscribers ({} probes)",
            a.subscribers,
            a.subscribers.div_ceil(PROBE_EVERY)
        ),
        &seen,
    );
    for t in tasks {
        t.abort();
    }
    drop(procs);
    drop(pool);
    cluster.cleanup().await;
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(a));
}
