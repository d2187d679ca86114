//! photoq on a real Redis Cluster (three masters, three replicas, started by the test):
//! every script runs there (hash tags), the queue spreads over shards in different slots,
//! and a master SIGKILLed mid-run fails over with nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::redis_cluster::RedisCluster;
use common::{three_photos, TestApp};
use serde_json::Value;

/// How many entries each shard's interactive stream has delivered to the workers' group.
async fn delivered_per_shard(cluster: &RedisCluster, app: &TestApp) -> Vec<u64> {
    let client =
        redis::cluster::ClusterClient::new(cluster.urls().split(',').collect::<Vec<_>>()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut out = Vec::new();
    for keys in app.queue().shards() {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&keys.jobs)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = groups
            .iter()
            .find_map(|g| match g.get("entries-read") {
                Some(redis::Value::Int(n)) => Some(*n as u64),
                _ => None,
            })
            .unwrap_or(0);
        out.push(read);
    }
    out
}

async fn upload_batches(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let batch: Value = app.upload_ok(three_photos()).await;
        ids.push(batch["batch_id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn sharded_queue_on_a_cluster_survives_a_master_failover() {
    let mut cluster = RedisCluster::start().await;
    let app = TestApp::builder()
        .redis_url(&cluster.urls())
        .config(
            "[redis]\ncluster = true\nshards = 3\n\
             [reconciler]\ninterval_secs = 1\ngrace_secs = 2\n\
             [retry]\nmax_attempts = 20\nbase_delay_ms = 100\nmax_delay_ms = 1000\n",
        )
        .start()
        .await;
    let queue = app.queue();
    // Shard 0 holds the rest of photoq's keys too; every shard is a slot of its own.
    let tags: Vec<&str> = queue.shards().iter().map(|k| k.jobs.as_str()).collect();
    assert_eq!(
        tags,
        [
            format!("{{{}}}:jobs", app.name),
            format!("{{{}:1}}:jobs", app.name),
            format!("{{{}:2}}:jobs", app.name)
        ]
    );

    let mut batches = upload_batches(&app, 3).await;
    for id in &batches {
        assert_eq!(app.wait_batch(id).await["completed"], 3);
    }
    // Batches are dealt out over the shards, and workers read every one.
    let delivered = delivered_per_shard(&cluster, &app).await;
    assert!(
        delivered.iter().all(|&n| n >= 3),
        "entries delivered per shard: {delivered:?}"
    );

    // Work in flight when the master of shard 0 (and of the leases, limits, and
    // notices) dies; its replica takes over, and whatever the dead master had not yet
    // replicated is found and published again by the reconciler.
    batches.extend(upload_batches(&app, 4).await);
    let killed = cluster
        .kill_master_of(&format!("{{{}}}:jobs", app.name))
        .await;
    assert_ne!(
        cluster.master_of(&format!("{{{}}}:jobs", app.name)).await,
        killed
    );
    batches.extend(upload_batches(&app, 2).await);
    for id in &batches {
        let batch = app.wait_batch(id).await;
        assert_eq!(batch["completed"], 3, "{batch}");
    }
    app.finish().await;
}
