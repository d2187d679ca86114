//! Priority lanes on a real Redis: uploads (interactive) are read before imports (bulk),
//! bulk work still gets its configured share, and an upload made while a large import runs
//! finishes long before the import does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::TestApp;
use photoq::queue::{locate, Consumer, Lane, Queue};
use serde_json::{json, Value};
use uuid::Uuid;

async fn queue_and_consumer(share: f64) -> (Queue, Consumer, String) {
    sharded_queue_and_consumer(share, 1).await
}

async fn sharded_queue_and_consumer(share: f64, shards: u32) -> (Queue, Consumer, String) {
    let prefix = format!("pqlanes_{}", &Uuid::new_v4().simple().to_string()[..10]);
    let mut config = photoq::config::Config::defaults().unwrap().redis;
    config.url = common::redis_url();
    config.prefix = prefix.clone();
    config.block_ms = 50;
    config.shards = shards;
    let queue = Queue::new(&config).unwrap();
    queue.ensure_group().await.unwrap();
    let consumer = Consumer::new(&config, queue.clone(), "reader".into())
        .unwrap()
        .with_bulk_share(share);
    (queue, consumer, prefix)
}

async fn drop_keys(prefix: &str) {
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Shard 0's keys and every other shard's (`{prefix:k}:…`).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in keys {
        let _: () = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

#[tokio::test]
async fn shards_interactive_first_across_shards_and_dropped_shards_count_as_gone() {
    let (queue, consumer, prefix) = sharded_queue_and_consumer(0.25, 3).await;
    // Enqueues are dealt out over the shards in turn: bulk work in shard 0, uploads in
    // shard 1.
    let bulk = queue.enqueue(Lane::Bulk, &ids(4)).await.unwrap();
    let uploads = queue.enqueue(Lane::Interactive, &ids(2)).await.unwrap();
    assert!(bulk.iter().all(|t| !t.starts_with('s')), "{bulk:?}");
    assert!(uploads.iter().all(|t| t.starts_with("s1:")), "{uploads:?}");
    // The first read starts at shard 0, which holds only bulk work: the uploads of shard 1
    // come first all the same.
    let got = consumer.read(2).await.unwrap();
    let mut tokens: Vec<&str> = got.iter().map(|d| d.entry_id.as_str()).collect();
    tokens.sort();
    let mut expected: Vec<&str> = uploads.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(tokens, expected);
    // Then bulk work, from any shard.
    let more = consumer.read(10).await.unwrap();
    assert_eq!(more.len(), 4);
    assert!(more.iter().all(|d| locate(&d.entry_id).0 == Lane::Bulk));
    queue
        .ack_many(&more.iter().map(|d| &d.entry_id).collect::<Vec<_>>())
        .await
        .unwrap();
    queue.ack_many(&uploads).await.unwrap();

    // Waiting in shard 2, then the queue is cut to one shard: the entry is gone for the
    // reconciler (no worker reads shard 2 any more), which publishes its photo again.
    let stranded = queue.enqueue(Lane::Interactive, &ids(1)).await.unwrap();
    assert!(stranded[0].starts_with("s2:"), "{stranded:?}");
    let mut config = photoq::config::Config::defaults().unwrap().redis;
    config.url = common::redis_url();
    config.prefix = prefix.clone();
    let waiting = queue.entry_status(&[stranded[0].as_str()]).await.unwrap();
    assert_eq!(waiting, [photoq::queue::EntryStatus::Waiting]);
    let one_shard = Queue::new(&config).unwrap();
    let gone = one_shard
        .entry_status(&[stranded[0].as_str()])
        .await
        .unwrap();
    assert_eq!(gone, [photoq::queue::EntryStatus::Gone]);
    drop_keys(&prefix).await;
}

#[tokio::test]
async fn interactive_first_and_bulk_gets_its_share() {
    let (queue, consumer, prefix) = queue_and_consumer(0.25).await;
    queue.enqueue(Lane::Bulk, &ids(40)).await.unwrap();
    queue.enqueue(Lane::Interactive, &ids(40)).await.unwrap();

    // One entry per read, as a worker with one free slot reads: 40 reads while both lanes
    // wait give bulk its quarter, give or take the one read its credit is building up.
    let mut bulk = 0;
    let mut read = Vec::new();
    for _ in 0..40 {
        let got = consumer.read(1).await.unwrap();
        assert_eq!(got.len(), 1);
        if locate(&got[0].entry_id).0 == Lane::Bulk {
            bulk += 1;
        }
        read.extend(got);
    }
    assert!((9..=11).contains(&bulk), "bulk got {bulk} of 40 reads");
    // The first read goes to interactive work.
    assert_eq!(locate(&read[0].entry_id).0, Lane::Interactive);
    queue
        .ack_many(&read.iter().map(|d| &d.entry_id).collect::<Vec<_>>())
        .await
        .unwrap();

    // Interactive drained: bulk gets everything, in reads as large as asked.
    let mut rest = Vec::new();
    loop {
        let got = consumer.read(16).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 16);
        rest.extend(got);
    }
    assert_eq!(rest.len(), 40);
    queue
        .ack_many(&rest.iter().map(|d| &d.entry_id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(queue.stream_len().await.unwrap(), 0);
    assert_eq!(queue.pending().await.unwrap(), 0);
    drop_keys(&prefix).await;
}

#[tokio::test]
async fn a_blocked_read_wakes_for_either_lane_and_never_takes_more_than_asked() {
    let (queue, consumer, prefix) = queue_and_consumer(0.2).await;
    // Both streams get an entry while the reader is blocked: it takes one, and the other
    // stays for the next read.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.is_empty() {
            got = consumer.read(1).await.unwrap();
        }
        let more = consumer.read(1).await.unwrap();
        (got, more)
    });
    queue.enqueue(Lane::Bulk, &ids(1)).await.unwrap();
    queue.enqueue(Lane::Interactive, &ids(1)).await.unwrap();
    let (got, more) = reader.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(more.len(), 1);
    let lanes = [locate(&got[0].entry_id).0, locate(&more[0].entry_id).0];
    assert!(lanes.contains(&Lane::Bulk) && lanes.contains(&Lane::Interactive));
    queue
        .ack_many(&[&got[0].entry_id, &more[0].entry_id])
        .await
        .unwrap();
    assert_eq!(queue.stream_len().await.unwrap(), 0);
    drop_keys(&prefix).await;
}

/// Photos of the import not yet final.
async fn unfinished(app: &TestApp, import: &str) -> i64 {
    let view = app.get_json(&format!("/v1/imports/{import}")).await;
    view["images"]["queued"].as_i64().unwrap() + view["images"]["processing"].as_i64().unwrap()
}

#[tokio::test]
async fn an_upload_does_not_wait_behind_an_import() {
    let fx = Fixture::start().await;
    let app = TestApp::builder()
        .config("[fetch]\nallow = [\"127.0.0.1\"]")
        .start()
        .await;
    // 40 images, each held 200 ms by the server: with two jobs at once, seconds of work.
    let products: Vec<Value> = (0..40)
        .map(|i| {
            json!({"external_id": format!("bulk-{i}"),
                   "images": [fx.url(&format!("/hold/Canon_40D.jpg?n={i}"))]})
        })
        .collect();
    let res = app
        .client
        .post(app.url("/v1/imports"))
        .bearer_auth(&app.key)
        .json(&json!({ "products": products }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let import: Value = res.json().await.unwrap();
    let import = import["import_id"].as_str().unwrap().to_owned();
    // The import is under way before the upload arrives.
    let deadline = Instant::now() + common::SETTLE_TIMEOUT;
    while unfinished(&app, &import).await == 40 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let photo = common::read(common::corpus_dir().join("jpg/Nikon_D70.jpg"));
    let batch = app.upload_ok(vec![("up.jpg".into(), photo)]).await;
    let done = app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    assert_eq!(done["completed"], 1);
    let left = unfinished(&app, &import).await;
    assert!(
        left >= 20,
        "the upload finished only when {left} of 40 import images were left"
    );
    let done = app.wait_import(&import).await;
    assert_eq!(done["images"]["completed"], 40, "{done}");
    app.finish().await;
    fx.stop().await;
}
