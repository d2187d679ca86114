//! Taking data out, on the real service: a photo deleted while a worker processes it leaves
//! no object behind; a deleted photo, batch or import is gone from every read and its
//! objects from storage, with `photo.deleted` events; a batch cancelled mid-way ends its
//! waiting photos `cancelled` while the running one finishes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{corpus_dir, read, stored_objects, three_photos, TestApp, SETTLE_TIMEOUT};
use serde_json::Value;

/// Variants that keep a worker busy for a while: AVIF at one of libaom's slowest speeds (seconds a photo).
const SLOW: &str = "[pipeline]\navif_speed = 1\n\
                    [variants.preview]\nformat = \"avif\"\nwidth = 640\nheight = 640";

fn big_photo() -> (String, Vec<u8>) {
    let path = corpus_dir().join("jpg/hdr/iphone_hdr_NO.jpg");
    ("iphone.jpg".into(), read(path))
}

/// Polls until `ready` holds for the photo's JSON.
async fn wait_photo(app: &TestApp, id: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let photo = app.get_json(&format!("/v1/photos/{id}")).await;
        if ready(&photo) {
            return photo;
        }
        assert!(Instant::now() < deadline, "photo never got there: {photo}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the metric line starting with `series`, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.get_public("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Objects stored for `id` (its original, its variants).
fn objects_of(app: &TestApp, id: &str) -> Vec<std::path::PathBuf> {
    stored_objects(&app.config.storage.root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_deleted_while_processed_leaves_no_object() {
    let mut app = TestApp::builder()
        .config(SLOW)
        .workers(Some(1))
        .start()
        .await;
    let batch = app.upload_ok(vec![big_photo()]).await;
    let id = batch["photos"][0]["id"].as_str().unwrap().to_owned();
    wait_photo(&app, &id, |p| p["state"] == "processing").await;
    assert!(!objects_of(&app, &id).is_empty(), "the original is stored");

    assert_eq!(app.delete(&format!("/v1/photos/{id}")).await.status(), 204);
    assert_eq!(app.get(&format!("/v1/photos/{id}")).await.status(), 404);
    // The worker finishes, finds its result stale and removes what it stored.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while metric(&app, "photoq_jobs_total{outcome=\"stale\"}").await < 1.0 {
        assert!(Instant::now() < deadline, "the attempt never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
    assert_eq!(objects_of(&app, &id), Vec::<std::path::PathBuf>::new());
    // Deleting again is harmless.
    let app = app.restart("").await;
    assert_eq!(app.delete(&format!("/v1/photos/{id}")).await.status(), 204);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_photos_and_batches_are_gone_from_reads_storage_and_say_so() {
    let app = TestApp::start().await;
    let first = app.upload_ok(three_photos()).await;
    let second = app.upload_ok(three_photos()).await;
    for b in [&first, &second] {
        app.wait_batch(b["batch_id"].as_str().unwrap()).await;
    }
    let one = first["photos"][0]["id"].as_str().unwrap().to_owned();
    let kept = first["photos"][1]["id"].as_str().unwrap().to_owned();
    assert!(!objects_of(&app, &one).is_empty());

    assert_eq!(app.delete(&format!("/v1/photos/{one}")).await.status(), 204);
    assert!(
        objects_of(&app, &one).is_empty(),
        "{:?}",
        objects_of(&app, &one)
    );
    assert_eq!(
        app.get(&format!("/v1/photos/{one}/original"))
            .await
            .status(),
        404
    );
    let listed = app.get_json("/v1/photos?limit=200").await;
    let ids: Vec<&str> = listed["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&one.as_str()) && ids.contains(&kept.as_str()));
    let batch = app
        .get_json(&format!(
            "/v1/batches/{}",
            first["batch_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(batch["total"], 2, "{batch}");
    // Another owner cannot delete what is not theirs.
    let (_, stranger) = app.new_key("stranger").await;
    let res = app
        .client
        .delete(app.url(&format!("/v1/photos/{kept}")))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // The second batch as a whole.
    let batch_id = second["batch_id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/v1/batches/{batch_id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.get(&format!("/v1/batches/{batch_id}")).await.status(),
        404
    );
    for p in second["photos"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap();
        assert!(objects_of(&app, id).is_empty());
        assert_eq!(app.get(&format!("/v1/photos/{id}")).await.status(), 404);
    }
    assert!(
        !objects_of(&app, &kept).is_empty(),
        "other photos keep their objects"
    );

    // Every deletion is an event, in the owner's log.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let page = app.get_json("/v1/events?after=0&wait=1").await;
        let deleted = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "photo.deleted")
            .count();
        if deleted == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deletions not all in the log: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_ends_its_waiting_photos_and_lets_the_running_one_finish() {
    let app = TestApp::builder()
        .config(SLOW)
        .workers(Some(1))
        .start()
        .await;
    let batch = app
        .upload_ok(vec![big_photo(), big_photo(), big_photo()])
        .await;
    let batch_id = batch["batch_id"].as_str().unwrap();
    let first = batch["photos"][0]["id"].as_str().unwrap();
    let running = wait_photo(&app, first, |p| p["state"] == "processing").await;
    assert_eq!(running["state"], "processing");

    let res = app
        .client
        .post(app.url(&format!("/v1/batches/{batch_id}/cancel")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let after: Value = res.json().await.unwrap();
    assert_eq!(
        (after["cancelled"].as_i64(), after["processing"].as_i64()),
        (Some(2), Some(1)),
        "{after}"
    );

    let settled = app.wait_batch(batch_id).await;
    assert_eq!(settled["completed"], 1, "{settled}");
    assert_eq!(settled["cancelled"], 2, "{settled}");
    assert_eq!(settled["state"], "cancelled");
    for p in &batch["photos"].as_array().unwrap()[1..] {
        let photo = app
            .get_json(&format!("/v1/photos/{}", p["id"].as_str().unwrap()))
            .await;
        assert_eq!(photo["state"], "cancelled");
        assert_eq!(photo["attempts"], 0, "never started: {photo}");
    }
    app.finish().await;
}
