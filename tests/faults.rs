//! Fault injection on real processes: the photoq binary as API and worker processes, the
//! real PostgreSQL and Redis. Each test ends by checking that every accepted photo is
//! `completed` (or `dead` where the test makes it so), stored once, none missing, and that
//! nothing is left pending on the stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{Client, Cluster, Proc};
use common::sse::Sse;
use common::{corpus_dir, photo_ids, read, PrivatePostgres, PrivateRedis, SETTLE_TIMEOUT};
use diesel_async::RunQueryDsl;
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
    // Nothing pending, and nothing left in the stream: acknowledged entries are deleted.
    let queue = queue_of(cluster);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while queue.pending().await.unwrap() > 0 || queue.stream_len().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "entries left in the stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection to the cluster's Redis, for poking at its keys as a fault would.
async fn redis_of(cluster: &Cluster) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cluster.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Adds `n` extra entries for each photo to the job stream, as a duplicate publish would.
async fn duplicate(cluster: &Cluster, ids: &[String], n: usize) {
    let mut conn = redis_of(cluster).await;
    let jobs = queue_of(cluster).keys().jobs.clone();
    for id in ids {
        for _ in 0..n {
            let _: String = redis::cmd("XADD")
                .arg(&jobs)
                .arg("*")
                .arg("photo_id")
                .arg(id)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// The cluster's database, through photoq's own pool.
async fn pool_of(cluster: &Cluster) -> photoq::db::DbPool {
    let mut config = photoq::config::Config::defaults().unwrap().database;
    config.url = cluster.database_url();
    photoq::db::connect(&config).await.unwrap()
}

/// Rank of a state in a photo's life; a photo's rank never falls (without a redrive).
fn rank(state: &str) -> u8 {
    match state {
        "queued" => 0,
        "processing" => 1,
        _ => 2,
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
    cluster.set("PHOTOQ_EVENTS_KEEPALIVE_SECS", 1);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let _workers: Vec<Proc> = (0..2).map(|_| cluster.work(1)).collect();

    let batches = upload_all(&client, &photos(100)).await;
    let first = batches[0]["batch_id"].as_str().unwrap().to_owned();
    // A client follows the first batch across the outage.
    let mut sse = Sse::open(
        &client.http,
        &format!("{base}/v1/batches/{first}/events"),
        Some(&key),
        &[],
    )
    .await;
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
        .get(format!("{base}/readyz?redis=optional"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        503,
        "PostgreSQL is required whatever Redis's need"
    );
    // The outage lasts a few of the stream's keep-alive periods, each of which has its
    // follower ask PostgreSQL how the batch stands.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start();

    assert_all_completed(&cluster, &client, &batches).await;
    // The stream waited for PostgreSQL and told the whole batch, once, then ended.
    let mut story = Vec::new();
    while let Some(e) = sse.next_event().await {
        story.push(e);
    }
    assert!(story.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    let completed: BTreeSet<_> = story
        .iter()
        .filter(|e| e.kind == "photo.completed")
        .map(|e| e.photo_id)
        .collect();
    assert_eq!(
        completed.len(),
        50,
        "every photo of the batch completes on the stream"
    );
    assert_eq!(
        story.last().map(|e| e.kind.as_str()),
        Some("batch.completed")
    );
    cluster.cleanup().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_and_a_race_record_each_photo_once() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new("pqdup");
    fast(&mut cluster);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let batch = client.upload(&photos(12)).await;
    let batch_id = batch["batch_id"].as_str().unwrap().to_owned();
    let ids = photo_ids(&batch);

    // A worker of the test's own takes the first photo's entry, records its start, and then
    // goes silent, as a worker does that stalls (a long pause, a network partition).
    let queue = queue_of(&cluster);
    let mut redis_config = photoq::config::Config::defaults().unwrap().redis;
    redis_config.url = cluster.redis_url.clone();
    redis_config.prefix = cluster.name.clone();
    let ghost = photoq::queue::Consumer::new(&redis_config, queue.clone(), "ghost".into()).unwrap();
    queue.ensure_group().await.unwrap();
    let read = ghost.read(1).await.unwrap();
    let entry = read[0].entry_id.clone();
    let raced = read[0].job.clone().unwrap().photo_id;
    assert_eq!(
        raced.to_string(),
        ids[0],
        "the oldest entry is the first photo's"
    );
    let pool = pool_of(&cluster).await;
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    let delivered = photoq::db::jobs::Delivered {
        photo_id: raced,
        entry: entry.clone(),
        deliveries: 1,
    };
    let starts = photoq::db::jobs::start_many(&mut conn, &[delivered], "ghost", 5)
        .await
        .unwrap();
    let (_, ghost_attempt) = starts.started[0];

    // Duplicates of every photo while they wait (and while the first one is running).
    duplicate(&cluster, &ids, 2).await;
    let workers: Vec<Proc> = (0..2).map(|_| cluster.work(2)).collect();

    // Every photo's states, as a client polling sees them, never go backwards.
    let mut seen: std::collections::HashMap<String, u8> = Default::default();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = client.get(&format!("/v1/batches/{batch_id}")).await;
        for p in now["photos"].as_array().unwrap() {
            let r = rank(p["state"].as_str().unwrap());
            let before = seen.insert(p["id"].as_str().unwrap().to_owned(), r);
            assert!(before.is_none_or(|b| b <= r), "state went back: {p}");
        }
        if now["completed"] == 12 {
            break;
        }
        assert!(Instant::now() < deadline, "did not complete: {now}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The stalled worker wakes up: whatever it records now changes nothing.
    let done = photoq::db::jobs::Completion {
        width: 1,
        height: 1,
        exif: Value::Null,
        thumbhash: None,
        fingerprint: None,
        reused_from: None,
        variants: Vec::new(),
        original: None,
    };
    let recorded = photoq::db::jobs::complete_many(&mut conn, &[(raced, &done, ghost_attempt)])
        .await
        .unwrap();
    assert!(recorded.is_empty(), "a stale completion was recorded");
    let failed = photoq::db::jobs::finish(
        &mut conn,
        raced,
        ghost_attempt,
        photoq::db::jobs::Ending::Failed {
            code: "late",
            reason: "late",
        },
    )
    .await
    .unwrap();
    assert!(!failed, "a stale failure was recorded");
    assert!(
        !ghost.heartbeat(&entry).await.unwrap(),
        "the claim was taken over"
    );

    // Duplicates of completed photos are acknowledged without work.
    duplicate(&cluster, &ids, 2).await;
    assert_all_completed(&cluster, &client, std::slice::from_ref(&batch)).await;
    for id in &ids {
        let photo = client.get(&format!("/v1/photos/{id}")).await;
        let outcomes: Vec<&str> = photo["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        if *id == ids[0] {
            // Two real runs: the stalled one, then the one that took it over.
            assert_eq!(photo["attempts"], 2, "{photo}");
            assert_eq!(outcomes, ["interrupted", "completed"], "{photo}");
            assert!(photo["original"]["width"].as_i64().unwrap() > 1, "{photo}");
        } else {
            assert_eq!(photo["attempts"], 1, "{photo}");
            assert_eq!(outcomes, ["completed"], "{photo}");
        }
    }
    drop(conn);
    drop(workers);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deleted_then_trimmed_mid_run_every_photo_completes() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new("pqgone");
    fast(&mut cluster);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let _worker = cluster.work(1);
    let batches = upload_all(&client, &photos(60)).await;
    let first = batches[0]["batch_id"].as_str().unwrap().to_owned();
    let jobs = queue_of(&cluster).keys().jobs.clone();
    let mut conn = redis_of(&cluster).await;

    // The stream key is deleted (its group and pending list with it); nothing else changes.
    wait_progress(&client, &first, 5).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&jobs)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Then, later, trimmed to nothing.
    wait_progress(&client, &first, 25).await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&jobs)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_all_completed(&cluster, &client, &batches).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_that_kills_workers_before_their_start_ends_dead() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::new("pqpoison");
    fast(&mut cluster);
    cluster.set("PHOTOQ_RETRY_MAX_ATTEMPTS", 3);
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let batch = client.upload(&photos(1)).await;
    let id = photo_ids(&batch).remove(0);

    // Three workers read the entry and died before they could record a start: Redis
    // counted three deliveries, PostgreSQL none.
    let queue = queue_of(&cluster);
    queue.ensure_group().await.unwrap();
    let jobs = queue.keys().jobs.clone();
    let mut conn = redis_of(&cluster).await;
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(photoq::queue::GROUP)
        .arg("doomed")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&jobs)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry = read.keys[0].ids[0].id.clone();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&jobs)
        .arg(photoq::queue::GROUP)
        .arg("doomed")
        .arg(0)
        .arg(&entry)
        .arg("RETRYCOUNT")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A live worker takes it over (the fourth delivery) and ends it without running it.
    let _worker = cluster.work(1);
    let batch = client.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["dead"], 1, "{batch}");
    let photo = client.get(&format!("/v1/photos/{id}")).await;
    assert_eq!(photo["state"], "dead", "{photo}");
    assert_eq!(photo["attempts"], 0, "{photo}");
    let error = photo["error"].as_str().unwrap();
    assert!(error.contains("delivered 4 times"), "{error}");
    assert_eq!(queue.dead_letters().await.unwrap(), 1);
    assert_eq!(queue.pending().await.unwrap(), 0);
    assert_eq!(queue.stream_len().await.unwrap(), 0);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_20k_jobs_the_stream_holds_no_more_than_in_flight_plus_100() {
    let _serial = SERIAL.lock().await;
    const JOBS: usize = 20_000;
    let mut cluster = Cluster::new("pqbound");
    fast(&mut cluster);
    let pool = pool_of(&cluster).await;
    let (owner, _) = photoq::auth::create_key(&pool, "bound", photoq::auth::Scopes::CLIENT)
        .await
        .unwrap();
    let queue = queue_of(&cluster);
    queue.ensure_group().await.unwrap();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    for chunk in 0..JOBS / 2000 {
        let batch = photoq::db::models::Batch {
            id: uuid::Uuid::now_v7(),
            owner_id: owner.id,
            created_at: chrono::Utc::now(),
        };
        let photos: Vec<_> = (0..2000)
            .map(|i| photoq::db::models::NewPhoto {
                id: uuid::Uuid::now_v7(),
                batch_id: batch.id,
                owner_id: owner.id,
                filename: Some(format!("{chunk}-{i}.jpg")),
                content_type: Some("image/jpeg".into()),
                bytes: Some(1),
                sha256: Some(String::new()),
                original_key: String::new(),
                source_url: None,
                trace_parent: None,
            })
            .collect();
        photoq::db::photos::insert_batch(
            &mut conn,
            &batch,
            &photos,
            None,
            photoq::config::QuotasConfig::NONE,
        )
        .await
        .unwrap();
        let ids: Vec<(uuid::Uuid, Option<String>)> = photos.iter().map(|p| (p.id, None)).collect();
        photoq::dispatch::publish_new(&pool, &queue, photoq::queue::Lane::Interactive, &ids)
            .await
            .unwrap();
    }
    assert_eq!(queue.stream_len().await.unwrap(), JOBS as u64);

    let _worker = cluster.spawn(&["work", "--no-op", "--concurrency", "500"], &[]);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let done: Vec<Count> = diesel::sql_query(
            "SELECT count(*) AS n FROM photos WHERE state = 'completed' AND attempts = 1",
        )
        .load(&mut *conn)
        .await
        .unwrap();
        if done[0].n == JOBS as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {JOBS} done", done[0].n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_flight = queue.pending().await.unwrap();
    let len = queue.stream_len().await.unwrap();
    assert!(
        len <= in_flight + 100,
        "stream holds {len}, in flight {in_flight}"
    );
    cluster.cleanup().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
