//! Reprocessing on the real service: after a variant change, a batch's photos get variants
//! of the new sizes under new URLs while their state, EXIF, original and batch stay as
//! they were, and nothing old is left in storage; a run nobody published (its process died
//! between its commit and the stream) is published by the reconciler; a photo deleted
//! while it is reprocessed leaves no object behind; and the guarded moves of a run's rows
//! start a photo once per delivery, record nothing for a lease taken over, take back an
//! attempt that never ended and give up on an entry delivered past the budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{error_code, photo_ids, stored_objects, three_photos, undecodable, TestApp};
use serde_json::Value;
use uuid::Uuid;

async fn accepted(app: &TestApp, path: &str) -> Value {
    let res = app.post_empty(path).await;
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
    let failed_id = failed["id"].as_str().unwrap();
    let res = app
        .post_empty(&format!("/v1/photos/{failed_id}/reprocess"))
        .await;
    assert_eq!(res.status(), 409);
    let res = app
        .post_empty(&format!("/v1/photos/{}/reprocess", Uuid::now_v7()))
        .await;
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

/// Variants that keep a worker busy for a while: AVIF at one of libaom's slowest speeds.
const SLOW: &str = "[pipeline]\navif_speed = 1\n\
                    [variants.preview]\nformat = \"avif\"\nwidth = 640\nheight = 640";

/// Reprocessing attempts that ended, by every outcome.
async fn attempts_ended(app: &TestApp) -> f64 {
    let text = app.get_public("/metrics").await.text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("photoq_reprocess_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_deleted_while_reprocessed_leaves_no_object_behind() {
    let app = TestApp::start().await;
    let photo = (
        "iphone.jpg".to_owned(),
        common::read(common::corpus_dir().join("jpg/hdr/iphone_hdr_NO.jpg")),
    );
    let batch = app.upload_ok(vec![photo]).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let id = photo_ids(&batch).remove(0);

    let app = app.restart(SLOW).await;
    let run = accepted(&app, &format!("/v1/photos/{id}/reprocess")).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = app.get_json(&format!("/v1/reprocess/{run_id}")).await;
        if now["processing"] == 1 {
            break;
        }
        assert_eq!(
            now["finished"], false,
            "the run ended before it was seen running: {now}"
        );
        assert!(Instant::now() < deadline, "never started: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let res = app.delete(&format!("/v1/photos/{id}")).await;
    assert_eq!(res.status(), 204);

    // Once the attempt has ended (its cleanup comes before its count), nothing is stored
    // under the photo's id, and the run did not record it done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while attempts_ended(&app).await < 1.0 {
        assert!(Instant::now() < deadline, "the attempt never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<_> = stored_objects(&app.config.storage.root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&id))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let run = app.get_json(&format!("/v1/reprocess/{run_id}")).await;
    assert_eq!(run["finished"], true, "{run}");
    assert_eq!(run["done"], 0, "{run}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_moves_start_once_record_nothing_stale_and_end_what_never_ends() {
    use photoq::db::jobs::Ending;
    use photoq::db::reprocess::{self, Recorded, Remade, Selection, Target};

    let app = TestApp::start().await;
    let batch = app.upload_ok(three_photos()).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let ids: Vec<Uuid> = photo_ids(&batch)
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let pool = photoq::db::pool(&app.config.database).unwrap();
    let mut conn = photoq::db::conn(&pool).await.unwrap();
    // Recorded, not published: the reconciler leaves it alone for `grace_secs` (30).
    let selection = Selection {
        upload_fingerprint: "",
        import_fingerprint: "",
        force: true,
    };
    let (run, _) = reprocess::request(&mut conn, None, Target::Photo(ids[0]), &selection)
        .await
        .unwrap()
        .unwrap();
    let lease = Duration::from_secs(600);
    let max = app.config.retry.max_attempts as i32;
    let delivery = |photo_id: Uuid, entry: &str, deliveries: i32| {
        vec![reprocess::Delivery {
            photo_id,
            entry: entry.to_owned(),
            deliveries,
        }]
    };
    let start = |entry: &str| delivery(ids[0], entry, 1);

    let (first, _) = reprocess::start(&mut conn, &start("0-1"), lease, max)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // Another entry for the same photo while it runs: nothing.
    let (started, spent) = reprocess::start(&mut conn, &start("0-2"), lease, max)
        .await
        .unwrap();
    assert!(started.is_empty() && spent.is_empty());
    // The same entry again (taken over from a worker that stopped): a new attempt.
    let (second, _) = reprocess::start(&mut conn, &start("0-1"), lease, max)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].lease, first[0].lease);
    assert_eq!(second[0].attempts, 2);

    // The first attempt's results and end are stale.
    let remade = Remade {
        variants: Vec::new(),
        fingerprint: "stale".into(),
        thumbhash: None,
    };
    assert_eq!(
        reprocess::complete(&mut conn, ids[0], first[0].lease, &remade)
            .await
            .unwrap(),
        Recorded::Stale
    );
    let retry = Ending::Retry {
        code: "storage_error",
        error: "x",
        after: Duration::ZERO,
    };
    assert!(!reprocess::end(&mut conn, ids[0], first[0].lease, retry)
        .await
        .unwrap());
    // The photo still has its variants.
    let photo = app.get_json(&format!("/v1/photos/{}", ids[0])).await;
    assert!(!photo["variants"].as_array().unwrap().is_empty(), "{photo}");

    // Handed back: waiting again, the attempt not counted; then the photo is deleted and
    // its next delivery skips it.
    let back = Ending::HandBack { entry: Some("0-3") };
    assert!(reprocess::end(&mut conn, ids[0], second[0].lease, back)
        .await
        .unwrap());
    let now = reprocess::progress(&mut conn, run.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((now.queued, now.processing), (1, 0), "{now:?}");
    let res = app.delete(&format!("/v1/photos/{}", ids[0])).await;
    assert_eq!(res.status(), 204);
    let (started, spent) = reprocess::start(&mut conn, &start("0-3"), lease, max)
        .await
        .unwrap();
    assert!(started.is_empty() && spent.is_empty());
    let now = reprocess::progress(&mut conn, run.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((now.skipped, now.finished()), (1, true), "{now:?}");

    // An attempt that never ended (its worker killed, say) is taken back by the reconciler;
    // an entry delivered more often than the budget ends the row `failed`, and the photo
    // keeps its variants.
    let (run, _) = reprocess::request(&mut conn, None, Target::Photo(ids[1]), &selection)
        .await
        .unwrap()
        .unwrap();
    let (started, _) = reprocess::start(&mut conn, &delivery(ids[1], "0-4", 1), lease, max)
        .await
        .unwrap();
    assert_eq!(started.len(), 1);
    let within = reprocess::reclaim(&mut conn, &[ids[1]], lease, max)
        .await
        .unwrap();
    assert!(within.is_empty(), "taken back within its lease");
    assert_eq!(
        reprocess::reclaim(&mut conn, &[ids[1]], Duration::ZERO, max)
            .await
            .unwrap(),
        [ids[1]]
    );
    let poison = delivery(ids[1], "0-5", max + 1);
    let (started, spent) = reprocess::start(&mut conn, &poison, lease, max)
        .await
        .unwrap();
    assert!(started.is_empty());
    assert_eq!(spent, [ids[1]]);
    let now = reprocess::progress(&mut conn, run.id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((now.failed, now.finished()), (1, true), "{now:?}");
    let photo = app.get_json(&format!("/v1/photos/{}", ids[1])).await;
    assert_eq!(photo["state"], "completed");
    assert!(!photo["variants"].as_array().unwrap().is_empty(), "{photo}");
    drop(conn);
    app.finish().await;
}
