//! Reprocessing on the real service: after a variant change, a batch's photos get variants
//! of the new sizes under new URLs while their state, EXIF, original and batch stay as
//! they were, and nothing old is left in storage; a run nobody published (its process died
//! between its commit and the stream) is published by the reconciler.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{error_code, photo_ids, stored_objects, three_photos, TestApp};
use serde_json::Value;
use uuid::Uuid;

/// An upload that fails for good: JPEG magic followed by noise.
fn undecodable() -> (String, Vec<u8>) {
    let mut noise = vec![0xFF, 0xD8, 0xFF, 0xE0];
    noise.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    ("noise.jpg".into(), noise)
}

async fn post(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap()
}

async fn accepted(app: &TestApp, path: &str) -> Value {
    let res = post(app, path).await;
    assert_eq!(res.status(), 202, "POST {path}");
    res.json().await.unwrap()
}

/// Polls the run until no photo of it waits or runs.
async fn wait_run(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = app.get_json(&format!("/v1/reprocess/{id}")).await;
        if run["finished"] == true {
            return run;
        }
        assert!(Instant::now() < deadline, "run did not finish: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn variant<'a>(photo: &'a Value, name: &str) -> &'a Value {
    photo["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {photo}"))
}

/// A photo's view without what reprocessing may change: its variants, placeholder and
/// `updated_at`.
fn rest_of(photo: &Value) -> Value {
    let mut rest = photo.clone();
    for field in ["variants", "thumbhash", "updated_at"] {
        rest.as_object_mut().unwrap().remove(field);
    }
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_change_reprocessed_gives_the_new_sizes_and_changes_nothing_else() {
    let quick = "[reconciler]\ngrace_secs = 1\ninterval_secs = 1";
    let app = TestApp::builder().config(quick).start().await;
    let mut files = three_photos();
    files.push(undecodable());
    let batch = app.upload_ok(files).await;
    let batch_id = batch["batch_id"].as_str().unwrap().to_owned();
    let ids = photo_ids(&batch);
    app.wait_batch(&batch_id).await;
    let before = app.batch_photos(&batch_id).await;
    let batch_before = app.get_json(&format!("/v1/batches/{batch_id}")).await;

    // Nothing changed yet: a run takes nothing.
    let run = accepted(&app, &format!("/v1/batches/{batch_id}/reprocess")).await;
    assert_eq!(
        (run["total"].as_i64(), run["up_to_date"].as_i64()),
        (Some(0), Some(3)),
        "{run}"
    );
    assert_eq!(run["finished"], true);

    // Smaller thumbnails.
    let app = app
        .restart(&format!(
            "{quick}\n[variants.thumbnail]\nwidth = 96\nheight = 96"
        ))
        .await;
    let head = app.get_json("/v1/events?wait=0").await["last_event_id"]
        .as_i64()
        .unwrap();
    let run = accepted(&app, &format!("/v1/batches/{batch_id}/reprocess")).await;
    assert_eq!(
        (run["total"].as_i64(), run["up_to_date"].as_i64()),
        (Some(3), Some(0)),
        "{run}"
    );
    let run = wait_run(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(
        (run["done"].as_i64(), run["failed"].as_i64()),
        (Some(3), Some(0)),
        "{run}"
    );

    let after = app.batch_photos(&batch_id).await;
    for (old, new) in before.iter().zip(&after) {
        if new["state"] != "completed" {
            assert_eq!(old, new, "an unsuccessful photo is left alone");
            continue;
        }
        let (old_thumb, new_thumb) = (variant(old, "thumbnail"), variant(new, "thumbnail"));
        let (w, h) = (
            new_thumb["width"].as_i64().unwrap(),
            new_thumb["height"].as_i64().unwrap(),
        );
        assert_eq!(w.max(h), 96, "{new_thumb}");
        assert!(old_thumb["width"].as_i64().unwrap() > 96, "{old_thumb}");
        assert_ne!(old_thumb["url"], new_thumb["url"], "new bytes, new URL");
        // The preview came out the same: same bytes, same URL.
        assert_eq!(variant(old, "preview"), variant(new, "preview"));
        assert_eq!(rest_of(old), rest_of(new));
        let bytes = app.bytes(new_thumb["url"].as_str().unwrap()).await;
        assert_eq!(bytes.len() as i64, new_thumb["bytes"].as_i64().unwrap());
        // In storage: the original and the variants in use, nothing older.
        let id = new["id"].as_str().unwrap();
        let objects = stored_objects(&app.config.storage.root)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(id))
            .count();
        assert_eq!(
            objects,
            1 + new["variants"].as_array().unwrap().len(),
            "{id}"
        );
    }
    // The batch is as it was; its story is not told again.
    assert_eq!(
        app.get_json(&format!("/v1/batches/{batch_id}")).await,
        batch_before
    );
    let page = app
        .get_json(&format!("/v1/events?after={head}&wait=0"))
        .await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["photo.reprocessed"; 3], "{page}");

    // One photo: up to date now unless forced; a failed photo is a 409, another id a 404.
    let one = &ids[0];
    let run = accepted(&app, &format!("/v1/photos/{one}/reprocess")).await;
    assert_eq!(
        (run["total"].as_i64(), run["up_to_date"].as_i64()),
        (Some(0), Some(1))
    );
    let run = accepted(&app, &format!("/v1/photos/{one}/reprocess?force=true")).await;
    assert_eq!(run["target"], "photo");
    let forced = wait_run(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(forced["done"], 1, "{forced}");
    let failed = after.iter().find(|p| p["state"] == "failed").unwrap();
    let res = post(
        &app,
        &format!("/v1/photos/{}/reprocess", failed["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(res.status(), 409);
    let res = post(&app, &format!("/v1/photos/{}/reprocess", Uuid::now_v7())).await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");

    // A run recorded but never published (its process died in between): the reconciler
    // publishes its jobs.
    let pool = photoq::db::pool(&app.config.database).unwrap();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    let selection = photoq::db::reprocess::Selection {
        upload_fingerprint: "",
        import_fingerprint: "",
        force: true,
    };
    let (run, taken) = photoq::db::reprocess::request(
        &mut conn,
        None,
        photoq::db::reprocess::Target::All,
        &selection,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(taken.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = photoq::db::reprocess::progress(&mut conn, run.id, None)
            .await
            .unwrap()
            .unwrap();
        if now.finished() {
            assert_eq!(now.done, 3, "{now:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unpublished run did not finish: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conn);
    app.finish().await;
}
