//! Quotas on the real service: photos per day refused past the limit with 429 and a
//! Retry-After until midnight UTC, nothing stored of a refused upload; bytes stored counted
//! exactly (originals and variants, less what is deleted) and refused with 403 once used
//! up; an owner's own quotas over the configured ones; other owners untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{error_code, photo_ids, stored_objects, three_photos, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

/// Bytes of a photo's original and variants, as its JSON gives them.
fn bytes_of(photo: &Value) -> i64 {
    photo["original"]["bytes"].as_i64().unwrap()
        + photo["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["bytes"].as_i64().unwrap())
            .sum::<i64>()
}

async fn set_own(
    app: &TestApp,
    owner: Uuid,
    photos: Option<Option<i64>>,
    bytes: Option<Option<i64>>,
) {
    let pool = photoq::db::pool(&app.config.database).unwrap();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    assert!(
        photoq::db::usage::set_limits(&mut conn, owner, photos, bytes)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_enforced_counted_and_reported() {
    let app = TestApp::builder()
        .config("[quotas]\nphotos_per_day = 4\n[fetch]\nallow = [\"127.0.0.1\"]")
        .start()
        .await;
    let owner: Uuid = app.get_json("/v1/me").await["owner_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let usage = app.get_json("/v1/usage").await;
    assert_eq!(usage["photos_today"], 0);
    assert_eq!(usage["photos_per_day"], 4);
    assert_eq!(usage["bytes_stored"], 0);
    assert_eq!(usage["bytes_stored_limit"], Value::Null);
    let resets_at: chrono::DateTime<chrono::Utc> =
        usage["resets_at"].as_str().unwrap().parse().unwrap();
    assert!(resets_at > chrono::Utc::now());
    assert!(resets_at <= chrono::Utc::now() + chrono::Duration::days(1));

    let first = app.upload_ok(three_photos()).await;
    // Originals only: the workers are storing variants meanwhile.
    let originals = || stored_objects(&app.config.storage.root.join("originals")).len();
    assert_eq!(originals(), 3);
    // Two more would make five.
    let res = app.upload(three_photos()[..2].to_vec()).await;
    assert_eq!(res.status(), 429);
    let wait: i64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    assert_eq!(error_code(res).await, "daily_quota_exceeded");
    assert_eq!(originals(), 3, "nothing of the refused upload is kept");
    // One more fits; then nothing does, an import's image neither.
    app.upload_ok(vec![three_photos().remove(0)]).await;
    let res = app.upload(vec![three_photos().remove(0)]).await;
    assert_eq!(res.status(), 429);
    let res = app
        .client
        .post(app.url("/v1/imports"))
        .bearer_auth(&app.key)
        .json(&json!({"products": [{"external_id": "p1", "images": ["http://127.0.0.1:9/a.jpg"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(error_code(res).await, "daily_quota_exceeded");
    assert_eq!(app.get_json("/v1/usage").await["photos_today"], 4);

    // Another owner has a day of its own.
    let (_, other) = app.new_key("other").await;
    assert_eq!(app.upload_with(&other, three_photos()).await.status(), 202);

    // Bytes: every original and variant counted, exactly.
    app.wait_batch(first["batch_id"].as_str().unwrap()).await;
    let listed = app.get_json("/v1/photos?limit=200").await;
    let photos = listed["photos"].as_array().unwrap();
    assert_eq!(photos.len(), 4);
    for p in photos {
        let id = p["id"].as_str().unwrap();
        let deadline = std::time::Instant::now() + common::SETTLE_TIMEOUT;
        while app.get_json(&format!("/v1/photos/{id}")).await["state"] != "completed" {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let mut total = 0;
    for p in photo_ids(&listed) {
        total += bytes_of(&app.get_json(&format!("/v1/photos/{p}")).await);
    }
    assert_eq!(app.get_json("/v1/usage").await["bytes_stored"], total);

    // The owner's own quotas: no daily limit, and exactly what is stored now.
    set_own(&app, owner, Some(Some(0)), Some(Some(total))).await;
    let usage = app.get_json("/v1/usage").await;
    assert_eq!(usage["photos_per_day"], Value::Null);
    assert_eq!(usage["bytes_stored_limit"], total);
    let res = app.upload(vec![three_photos().remove(0)]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "storage_quota_exceeded");

    // Deleting a photo gives its bytes back; the same file then fits again.
    let gone = photo_ids(&first).remove(0);
    let freed = bytes_of(&app.get_json(&format!("/v1/photos/{gone}")).await);
    let res = app
        .client
        .delete(app.url(&format!("/v1/photos/{gone}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        app.get_json("/v1/usage").await["bytes_stored"],
        total - freed
    );
    app.upload_ok(vec![three_photos().remove(0)]).await;

    // Back to the configured quotas.
    set_own(&app, owner, Some(None), Some(None)).await;
    let usage = app.get_json("/v1/usage").await;
    assert_eq!(
        (
            usage["photos_per_day"].as_i64(),
            usage["photos_today"].as_i64()
        ),
        (Some(4), Some(5))
    );
    assert_eq!(usage["bytes_stored_limit"], Value::Null);
    app.finish().await;
}
