//! Fault injection on real processes: the photoq binary as API and worker processes, the
//! real PostgreSQL and Redis. Each test ends by checking that every accepted photo is
//! `completed` (or `dead` where the test makes it so), stored once, none missing, and that
//! nothing is left pending on the stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Client, Cluster, Proc};
use common::{corpus_dir, read, PrivatePostgres, PrivateRedis, SETTLE_TIMEOUT};
use serde_json::Value;

/// The tests here load both cores; run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Photos of a few sizes, repeated to `n` uploads, named uniquely.
fn photos(n: usize) -> Vec<(String, Vec<u8>)> {
    let sources: Vec<Vec<u8>> = [
        "jpg/gps/DSCN0010.jpg",
        "jpg/hdr/canon_hdr_NO.jpg",
        "jpg/Canon_40D.jpg",
        "jpg/exif-org/nikon-e950.jpg",
    ]
    .iter()
    .map(|p| read(corpus_dir().join(p)))
    .collect();
    (0..n)
        .map(|i| (format!("{i}.jpg"), sources[i % sources.len()].clone()))
        .collect()
}

/// Short timeouts, so take-overs and reconciliation happen within a test's time.
fn fast(cluster: &mut Cluster) {
    cluster
        .set("PHOTOQ_WORKER_VISIBILITY_TIMEOUT_SECS", 3)
        .set("PHOTOQ_WORKER_HEARTBEAT_SECS", 1)
        .set("PHOTOQ_WORKER_RECLAIM_INTERVAL_SECS", 1)
        .set("PHOTOQ_WORKER_RETRY_POLL_MS", 50)
        .set("PHOTOQ_REDIS_BLOCK_MS", 200)
        .set("PHOTOQ_REDIS_RESPONSE_TIMEOUT_SECS", 1)
        .set("PHOTOQ_RECONCILER_INTERVAL_SECS", 1)
        .set("PHOTOQ_RECONCILER_GRACE_SECS", 2)
        .set("PHOTOQ_RETRY_BASE_DELAY_MS", 100)
        .set("PHOTOQ_RETRY_MAX_DELAY_MS", 500);
}

/// Every accepted photo completed, each original and variant stored exactly once, every
/// variant row present, nothing pending in Redis.
async fn assert_all_completed(cluster: &Cluster, client: &Client, batches: &[Value]) {
    let mut expected = BTreeSet::new();
    for b in batches {
        let batch = client.wait_batch(b["batch_id"].as_str().unwrap()).await;
        assert_eq!(batch["state"], "completed", "{batch}");
        for p in b["photos"].as_array().unwrap() {
            expected.insert(p["id"].as_str().unwrap().to_owned());
        }
    }
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = client.get(&format!("/v1/photos?limit=200{cursor}")).await;
        for p in page["photos"].as_array().unwrap() {
            assert_eq!(p["state"], "completed", "{p}");
            assert_eq!(p["variants"].as_array().unwrap().len(), 2, "{p}");
            assert!(
                seen.insert(p["id"].as_str().unwrap().to_owned()),
                "listed twice"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, expected, "none missing, none extra");
    assert_eq!(
        cluster.stored("originals").len(),
        expected.len(),
        "originals stored once"
    );
    assert_eq!(
        cluster.stored("variants").len(),
        2 * expected.len(),
        "variants stored once"
    );
    let queue = queue_of(cluster);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while queue.pending().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "entries left pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn queue_of(cluster: &Cluster) -> photoq::queue::Queue {
    let mut config = photoq::config::Config::defaults().unwrap().redis;
    config.url = cluster.redis_url.clone();
    config.prefix = cluster.name.clone();
    photoq::queue::Queue::new(&config).unwrap()
}

/// Uploads in batches of the default limit of files per request.
async fn upload_all(client: &Client, files: &[(String, Vec<u8>)]) -> Vec<Value> {
    let mut batches = Vec::new();
    for chunk in files.chunks(50) {
        batches.push(client.upload(chunk).await);
    }
    batches
}

/// Photos completed over all the batches.
async fn completed(client: &Client, batches: &[Value]) -> u64 {
    let mut n = 0;
    for b in batches {
        let batch = client
            .get(&format!("/v1/batches/{}", b["batch_id"].as_str().unwrap()))
            .await;
        n += batch["completed"].as_u64().unwrap();
    }
    n
}

/// Waits until at least `n` photos of the batch are completed.
async fn wait_progress(client: &Client, batch_id: &str, n: u64) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let batch = client.get(&format!("/v1/batches/{batch_id}")).await;
        if batch["completed"].as_u64().unwrap() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_workers_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new("pqfault");
    fast(&mut cluster);
    cluster.set("PHOTOQ_RETRY_MAX_ATTEMPTS", 20);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let mut workers: Vec<Proc> = (0..3).map(|_| cluster.work(1)).collect();

    let batches = upload_all(&client, &photos(200)).await;
    // Kill one worker (SIGKILL) and start a new one each time another 20 photos are done.
    let mut kills = 0;
    let mut next_kill = 20;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let done = completed(&client, &batches).await;
        if done >= 200 {
            break;
        }
        if done >= next_kill {
            workers.remove(kills % workers.len()).kill();
            workers.push(cluster.work(1));
            kills += 1;
            next_kill += 20;
        }
        assert!(Instant::now() < deadline, "stuck at {done} completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(kills >= 2, "the run ended before workers could be killed");
    assert_all_completed(&cluster, &client, &batches).await;
    drop(workers);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_mid_run_uploads_continue() {
    let _serial = SERIAL.lock().await;
    let mut redis = PrivateRedis::new();
    redis.start().await;
    let mut cluster = Cluster::new("pqfault");
    cluster.redis_url = redis.url();
    fast(&mut cluster);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let _workers: Vec<Proc> = (0..2).map(|_| cluster.work(1)).collect();

    let all = photos(200);
    let mut batches = upload_all(&client, &all[..100]).await;
    wait_progress(&client, batches[0]["batch_id"].as_str().unwrap(), 10).await;
    // Redis dies, losing every stream, entry and pending list; uploads go on meanwhile.
    redis.stop();
    batches.extend(upload_all(&client, &all[100..150]).await);
    redis.start().await;
    batches.extend(upload_all(&client, &all[150..]).await);
    assert_all_completed(&cluster, &client, &batches).await;
    cluster.cleanup().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_or_hands_back_and_exits_zero() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new("pqfault");
    fast(&mut cluster);
    // No grace: whatever is in flight at SIGTERM is handed back at once.
    cluster.set("PHOTOQ_WORKER_SHUTDOWN_GRACE_SECS", 0);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let worker = cluster.work(2);
    let batch = client.upload(&photos(50)).await;
    let batch_id = batch["batch_id"].as_str().unwrap();
    wait_progress(&client, batch_id, 5).await;

    let (status, took) = worker.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Nothing stuck: no entry pending, no photo left `processing` by the stopped worker.
    assert_eq!(queue_of(&cluster).pending().await.unwrap(), 0);
    let now = client.get(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(now["processing"], 0, "{now}");
    assert!(
        now["queued"].as_u64().unwrap() > 0,
        "the run was stopped part-way: {now}"
    );

    // Handed-back jobs are delivered again at once (no visibility timeout to wait out).
    let _worker = cluster.work(2);
    assert_all_completed(&cluster, &client, &[batch]).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run() {
    let _serial = SERIAL.lock().await;
    let mut pg = PrivatePostgres::new();
    pg.start();
    let mut cluster = Cluster::new("pqfault");
    cluster.pg_server = pg.server_url();
    fast(&mut cluster);
    cluster.set("PHOTOQ_DATABASE_CONNECT_TIMEOUT_SECS", 1);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let _workers: Vec<Proc> = (0..2).map(|_| cluster.work(1)).collect();

    let batches = upload_all(&client, &photos(100)).await;
    let first = batches[0]["batch_id"].as_str().unwrap().to_owned();
    wait_progress(&client, &first, 5).await;

    pg.stop(false);
    // While PostgreSQL is down the API answers 503 with the JSON error body.
    let res = client
        .http
        .get(format!("{base}/v1/batches/{first}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(common::error_code(res).await, "unavailable");
    let ready = client
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    pg.start();

    assert_all_completed(&cluster, &client, &batches).await;
    cluster.cleanup().await;
    drop(pg);
}
