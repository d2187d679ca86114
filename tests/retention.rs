//! Retention and erasure on the real service: the sweeper removes originals, unsuccessful
//! photos, idempotency records and events once each is past its lifetime and nothing
//! earlier; the storage walk removes objects no photo records once they are past the grace
//! period, and nothing a photo still needs; `purge` leaves nothing of an owner in
//! PostgreSQL, Redis or storage, and everything of another owner.
//!
//! Time is moved by handing the sweeps a later "now", not by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use chrono::{Duration, Utc};
use common::{error_code, photo_ids, stored_objects, three_photos, undecodable, TestApp};
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use photoq::retention::{sweep_orphans, sweep_rows, Removed};
use photoq::storage::Storage;
use serde_json::{json, Value};
use uuid::Uuid;

async fn upload_keyed(app: &TestApp, key: &str, files: Vec<(String, Vec<u8>)>) -> Value {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
    }
    let res = app
        .client
        .post(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap()
}

/// Stored objects whose path names `id`.
fn objects_of(app: &TestApp, id: &str) -> Vec<String> {
    stored_objects(&app.config.storage.root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains(id))
        .collect()
}

fn nothing(removed: &Removed) -> bool {
    *removed == Removed::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_swept_when_their_lifetime_ends_and_not_before() {
    let app = TestApp::builder()
        .config("[retention]\noriginals_days = 2\nunsuccessful_days = 5\nidempotency_hours = 24")
        .start()
        .await;
    let mut files = three_photos();
    files.truncate(2);
    files.push(undecodable());
    let first = upload_keyed(&app, "nightly-1", files).await;
    let batch_id = first["batch_id"].as_str().unwrap().to_owned();
    app.wait_batch(&batch_id).await;
    let [done, kept, failed] = <[String; 3]>::try_from(photo_ids(&first)).unwrap();
    let failed_photo = app.get_json(&format!("/v1/photos/{failed}")).await;
    assert_eq!(failed_photo["state"], "failed");
    // Every kind of removal has its series from the first round on (run at start).
    let deadline = std::time::Instant::now() + common::SETTLE_TIMEOUT;
    loop {
        let metrics = app.get_public("/metrics").await.text().await.unwrap();
        let missing: Vec<&str> = [
            "originals",
            "photos",
            "idempotency_records",
            "events",
            "orphans",
        ]
        .into_iter()
        .filter(|what| {
            !metrics.contains(&format!(
                "photoq_retention_removed_total{{what=\"{what}\"}}"
            ))
        })
        .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no series for {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let pool = photoq::db::pool(&app.config.database).unwrap();
    let storage = Storage::from_config(&app.config.storage).unwrap();
    let sweep = async |days: i64| {
        sweep_rows(
            &pool,
            &storage,
            &app.config,
            Utc::now() + Duration::days(days),
        )
        .await
        .unwrap()
    };

    // Half a day on: nothing is old enough.
    let removed = sweep_rows(
        &pool,
        &storage,
        &app.config,
        Utc::now() + Duration::hours(12),
    )
    .await
    .unwrap();
    assert!(nothing(&removed), "{removed:?}");

    // A day and a half: only the idempotency record (24 h) is gone; the key makes a new batch.
    let removed = sweep(1).await;
    assert_eq!(
        removed,
        Removed {
            idempotency_records: 1,
            ..Removed::default()
        }
    );
    let again = upload_keyed(&app, "nightly-1", vec![three_photos().remove(2)]).await;
    assert_ne!(again["batch_id"], first["batch_id"]);
    app.wait_batch(again["batch_id"].as_str().unwrap()).await;

    // Three days: the completed photos' originals go, nothing else of them.
    let removed = sweep(3).await;
    assert_eq!(removed.originals, 3, "{removed:?}");
    assert_eq!(removed.photos, 0);
    for id in [&done, &kept] {
        let photo = app.get_json(&format!("/v1/photos/{id}")).await;
        assert_eq!(photo["state"], "completed");
        assert!(photo["original"]["removed_at"].is_string(), "{photo}");
        assert!(photo["original"]["bytes"].is_i64(), "the description stays");
        assert_eq!(photo["variants"].as_array().unwrap().len(), 2);
        let res = app.get(&format!("/v1/photos/{id}/original")).await;
        assert_eq!(res.status(), 410);
        assert_eq!(error_code(res).await, "original_removed");
        let res = app
            .get(&format!("/v1/photos/{id}/variants/thumbnail"))
            .await;
        assert_eq!(res.status(), 200);
        let objects = objects_of(&app, id);
        assert_eq!(objects.len(), 2, "variants only: {objects:?}");
        assert!(objects.iter().all(|o| o.contains("variants")));
    }
    // The failed photo is younger than its lifetime: untouched, original and all.
    assert_eq!(
        app.get(&format!("/v1/photos/{failed}/original"))
            .await
            .status(),
        200
    );
    assert_eq!(objects_of(&app, &failed).len(), 1);
    assert!(
        nothing(&sweep(3).await),
        "a second sweep finds nothing more"
    );

    // Six days: the failed photo is deleted, as by DELETE.
    let removed = sweep(6).await;
    assert_eq!(
        removed,
        Removed {
            photos: 1,
            ..Removed::default()
        }
    );
    assert_eq!(app.get(&format!("/v1/photos/{failed}")).await.status(), 404);
    assert!(objects_of(&app, &failed).is_empty());
    let batch = app.get_json(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(
        (batch["completed"].as_i64(), batch["failed"].as_i64()),
        (Some(2), Some(0))
    );

    // Past the events' seven days, the log is emptied; the photos stay.
    let removed = sweep(8).await;
    assert!(removed.events > 0, "{removed:?}");
    assert_eq!((removed.originals, removed.photos), (0, 0));
    assert_eq!(
        app.get_json(&format!("/v1/photos/{done}")).await["state"],
        "completed"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_walk_removes_only_unrecorded_objects_past_the_grace_period() {
    let app = TestApp::start().await;
    let batch = app.upload_ok(three_photos()).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let [live, deleted, _] = <[String; 3]>::try_from(photo_ids(&batch)).unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/v1/photos/{deleted}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    let storage = Storage::from_config(&app.config.storage).unwrap();
    let put = async |key: String| {
        storage
            .put(&key, Bytes::from_static(b"left behind"), "image/jpeg")
            .await
            .unwrap();
        key
    };
    let orphans: HashSet<String> = HashSet::from([
        // An upload whose photo was never committed.
        put(format!("originals/{}", Uuid::now_v7())).await,
        // A delete stopped between its commit and removing the objects.
        put(format!("originals/{deleted}")).await,
        put(format!("variants/{deleted}/thumbnail.jpg")).await,
        // A variant no longer made for a live photo, and one of no photo at all.
        put(format!("variants/{live}/square.jpg")).await,
        put(format!("variants/{}/thumbnail.jpg", Uuid::now_v7())).await,
    ]);
    // Not photoq's: never touched.
    put("notes/readme.txt".into()).await;
    let before = stored_objects(&app.config.storage.root).len();

    let pool = photoq::db::pool(&app.config.database).unwrap();
    let grace = std::time::Duration::from_secs(3600);
    let removed = sweep_orphans(&pool, &storage, grace, Utc::now())
        .await
        .unwrap();
    assert!(nothing(&removed), "all too young: {removed:?}");
    assert_eq!(stored_objects(&app.config.storage.root).len(), before);

    let later = Utc::now() + Duration::hours(2);
    let removed = sweep_orphans(&pool, &storage, grace, later).await.unwrap();
    assert_eq!(removed.orphans, orphans.len() as u64, "{removed:?}");
    assert_eq!(removed.orphan_bytes, 11 * orphans.len() as u64);
    let left: HashSet<String> = stored_objects(&app.config.storage.root)
        .iter()
        .map(|p| {
            p.strip_prefix(&app.config.storage.root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(left.is_disjoint(&orphans), "{left:?}");
    assert!(left.contains("notes/readme.txt"));
    // The live photos keep their original and both variants.
    assert_eq!(left.len(), 2 * 3 + 1, "{left:?}");
    assert_eq!(
        app.get(&format!("/v1/photos/{live}/original"))
            .await
            .status(),
        200
    );
    app.finish().await;
}

/// Rows naming `owner` (in an `owner_id` column) or one of `photos` (in a `photo_id` or
/// `id` column of the photo tables), by table.
async fn rows_left(app: &TestApp, owner: Uuid, photos: &[Uuid]) -> Vec<(String, i64)> {
    #[derive(diesel::QueryableByName)]
    struct Column {
        #[diesel(sql_type = Text)]
        table_name: String,
        #[diesel(sql_type = Text)]
        column_name: String,
    }
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let pool = photoq::db::pool(&app.config.database).unwrap();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type = 'uuid' \
         AND column_name IN ('owner_id', 'photo_id', 'id', 'key_id')",
    )
    .load(&mut conn)
    .await
    .unwrap();
    let mut left = Vec::new();
    for c in columns {
        let count: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM \"{}\" WHERE \"{}\" = $1 OR \"{}\" = ANY($2)",
            c.table_name, c.column_name, c.column_name
        ))
        .bind::<SqlUuid, _>(owner)
        .bind::<diesel::sql_types::Array<SqlUuid>, _>(photos)
        .get_result(&mut conn)
        .await
        .unwrap();
        if count.n > 0 {
            left.push((format!("{}.{}", c.table_name, c.column_name), count.n));
        }
    }
    // Staged changes and the log carry the owner inside their rows too.
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM event_chunks, unnest(events) AS e WHERE e.owner_id = $1",
    )
    .bind::<SqlUuid, _>(owner)
    .get_result(&mut conn)
    .await
    .unwrap();
    if count.n > 0 {
        left.push(("event_chunks.events".into(), count.n));
    }
    left
}

/// Every Redis key of the app and the values in it (stream fields, set members, the key
/// itself) that name `needles`.
async fn redis_mentions(app: &TestApp, needles: &[String]) -> Vec<String> {
    let client = redis::Client::open(app.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}}}*", app.name))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut found = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let text = match kind.as_str() {
            "stream" => {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                format!("{v:?}")
            }
            "zset" => {
                let v: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                v.join(" ")
            }
            _ => String::new(),
        };
        for n in needles {
            if key.contains(n.as_str()) || text.contains(n.as_str()) {
                found.push(format!("{key}: {n}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_nothing_of_an_owner_and_everything_of_another() {
    let app = TestApp::builder()
        .config("[fetch]\nallow = [\"127.0.0.1\"]")
        .start()
        .await;
    let me = app.get_json("/v1/me").await;
    let owner: Uuid = me["owner_id"].as_str().unwrap().parse().unwrap();
    let key_id: Uuid = me["id"].as_str().unwrap().parse().unwrap();
    // A second key of the same owner, a webhook, an idempotent upload, a failed photo.
    let res = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&app.key)
        .json(&json!({"name": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let second: Value = res.json().await.unwrap();
    let second = second["key"].as_str().unwrap().to_owned();
    let res = app
        .client
        .post(app.url("/v1/webhooks"))
        .bearer_auth(&app.key)
        .json(&json!({"url": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let mut files = three_photos();
    files.push(undecodable());
    let batch = upload_keyed(&app, "purge-me", files).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let photos: Vec<Uuid> = photo_ids(&batch)
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    // Its traces in Redis: a retry scheduled and a dead letter.
    let queue = app.queue();
    queue
        .schedule(
            "0-1",
            photos[0],
            (Utc::now() + Duration::hours(1)).timestamp_millis(),
        )
        .await
        .unwrap();
    queue.dead_letter(None, photos[3], "test").await.unwrap();

    // Another owner, who must keep everything.
    let (_, other) = app.new_key("other").await;
    let res = app
        .upload_with(&other, vec![three_photos().remove(0)])
        .await;
    assert_eq!(res.status(), 202);
    let theirs: Value = res.json().await.unwrap();
    let their_photo = theirs["photos"][0]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + common::SETTLE_TIMEOUT;
    loop {
        let res = app
            .get_as(&other, &format!("/v1/photos/{their_photo}"))
            .await;
        let photo: Value = res.json().await.unwrap();
        if photo["state"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{photo}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let their_objects = objects_of(&app, &their_photo);
    assert_eq!(their_objects.len(), 3);

    let needles: Vec<String> = photos
        .iter()
        .map(Uuid::to_string)
        .chain([owner.to_string()])
        .collect();
    assert!(!rows_left(&app, owner, &photos).await.is_empty());
    assert!(!redis_mentions(&app, &needles).await.is_empty());

    let pool = photoq::db::pool(&app.config.database).unwrap();
    let storage = Storage::from_config(&app.config.storage).unwrap();
    let purged = photoq::erasure::purge(&pool, &queue, &storage, key_id)
        .await
        .unwrap()
        .expect("the key exists");
    assert_eq!(purged.owner, owner);
    assert_eq!(purged.rows.keys, 2);
    assert_eq!(purged.rows.photos, 4);
    assert_eq!(purged.rows.batches, 1);
    assert_eq!(purged.rows.webhooks, 1);
    assert_eq!(purged.rows.idempotency_records, 1);
    assert!(purged.rows.events >= 8, "{purged:?}");
    // Three originals and six variants, and the failed photo's original.
    assert_eq!(purged.objects, 10);
    assert_eq!(purged.queue_entries, 2);

    assert_eq!(
        rows_left(&app, owner, &photos).await,
        Vec::<(String, i64)>::new()
    );
    assert_eq!(redis_mentions(&app, &needles).await, Vec::<String>::new());
    for id in &photos {
        assert_eq!(objects_of(&app, &id.to_string()), Vec::<String>::new());
    }
    for key in [&app.key, &second] {
        assert_eq!(app.get_as(key, "/v1/photos").await.status(), 401);
    }
    // The other owner's photo, objects and access are whole.
    assert_eq!(objects_of(&app, &their_photo), their_objects);
    let res = app
        .get_as(&other, &format!("/v1/photos/{their_photo}/original"))
        .await;
    assert_eq!(res.status(), 200);
    // Purging again finds no such key.
    assert!(photoq::erasure::purge(&pool, &queue, &storage, key_id)
        .await
        .unwrap()
        .is_none());
    app.finish().await;
}
