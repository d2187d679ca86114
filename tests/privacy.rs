//! Where photos were taken, on the real service: with `privacy.strip_gps` the stored
//! original loses its GPS position and nothing else (same length, only zeroed bytes
//! differ) and the EXIF recorded has none; with `privacy.gps_scope` a key without the
//! scope sees a photo's EXIF without the position while one with it sees it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus_dir, read, TestApp};
use serde_json::Value;

fn gps_photo() -> (String, Vec<u8>) {
    (
        "DSCN0010.jpg".into(),
        read(corpus_dir().join("jpg/gps/DSCN0010.jpg")),
    )
}

fn has_gps(jpeg: &[u8]) -> bool {
    rexif::parse_buffer(jpeg)
        .unwrap()
        .entries
        .iter()
        .any(|e| e.tag == rexif::ExifTag::GPSLatitude)
}

async fn completed(app: &TestApp, key: &str, id: &str) -> Value {
    let deadline = std::time::Instant::now() + common::SETTLE_TIMEOUT;
    loop {
        let photo: Value = app
            .get_as(key, &format!("/v1/photos/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if photo["state"] == "completed" {
            return photo;
        }
        assert!(std::time::Instant::now() < deadline, "{photo}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_originals_lose_the_position_and_nothing_else() {
    let app = TestApp::builder()
        .config("[privacy]\nstrip_gps = true")
        .start()
        .await;
    let (name, uploaded) = gps_photo();
    assert!(has_gps(&uploaded));
    let batch = app.upload_ok(vec![(name, uploaded.clone())]).await;
    let id = batch["photos"][0]["id"].as_str().unwrap().to_owned();
    let photo = completed(&app, &app.key, &id).await;
    assert_eq!(photo["exif"]["gps"], Value::Null, "{}", photo["exif"]);
    assert!(photo["exif"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ifd"] != "gps"));
    assert_eq!(photo["exif"]["make"], "NIKON");

    let stored = app.bytes(&format!("/v1/photos/{id}/original")).await;
    assert!(!has_gps(&stored));
    assert_eq!(stored.len(), uploaded.len());
    let changed: Vec<usize> = (0..stored.len())
        .filter(|i| stored[*i] != uploaded[*i])
        .collect();
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|i| stored[*i] == 0),
        "only zeroed bytes differ"
    );
    // The picture itself is untouched: everything from the first scan on is identical.
    let scan = uploaded.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    assert!(changed.iter().all(|i| *i < scan));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_shows_only_to_keys_with_the_configured_scope() {
    let app = TestApp::builder()
        .config("[privacy]\ngps_scope = \"admin\"")
        .start()
        .await;
    let batch = app.upload_ok(vec![gps_photo()]).await;
    let id = batch["photos"][0]["id"].as_str().unwrap().to_owned();
    // The app's key has `admin`.
    let photo = completed(&app, &app.key, &id).await;
    let latitude = photo["exif"]["gps"]["latitude"].as_f64().unwrap();
    assert!((latitude - 43.467).abs() < 0.01, "{latitude}");

    // A reader of the same owner, made by the app's key.
    let res = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&app.key)
        .json(&serde_json::json!({"name": "reader", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let reader: Value = res.json().await.unwrap();
    let reader = reader["key"].as_str().unwrap().to_owned();
    for path in [format!("/v1/photos/{id}"), "/v1/photos".into()] {
        let body: Value = app.get_as(&reader, &path).await.json().await.unwrap();
        let photo = if body["photos"].is_array() {
            body["photos"][0].clone()
        } else {
            body
        };
        assert_eq!(photo["exif"]["gps"], Value::Null, "{path}");
        assert!(photo["exif"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["ifd"] != "gps"));
        assert_eq!(photo["exif"]["make"], "NIKON", "{path}");
    }
    // The original is not changed by this setting.
    assert!(has_gps(
        &app.bytes(&format!("/v1/photos/{id}/original")).await
    ));
    app.finish().await;
}
