//! photoq on S3-compatible storage, over HTTP against a real S3 server (moto_server): the
//! core path with multipart uploads and presigned redirects, the server unreachable
//! mid-run, and `photoq storage migrate` from local disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{three_photos, TestApp, SETTLE_TIMEOUT};
use serde_json::Value;

/// A PNG of noise, larger than one S3 part (5 MiB), so its upload is a multipart one.
fn large_png() -> Vec<u8> {
    let (w, h) = (1500u32, 1400u32);
    let mut state = 0x2545_f491_u32;
    let pixels: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&pixels, w, h, image::ExtendedColorType::Rgb8)
    .unwrap();
    assert!(out.len() > 5 * 1024 * 1024, "{} bytes", out.len());
    out
}

use image::ImageEncoder;

fn no_redirects() -> reqwest::Client {
    photoq::fetch::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn photos_are_stored_in_the_bucket_and_served_by_presigned_redirects() {
    let s3 = S3Server::start().await;
    let app = TestApp::builder()
        .config(&s3.config("tenant-a", "serve = \"redirect\"\nredirect_ttl_secs = 600"))
        .start()
        .await;
    let mut files = three_photos();
    files.push(("noise.png".into(), large_png()));
    let batch = app.upload_ok(files.clone()).await;
    let batch_id = batch["batch_id"].as_str().unwrap();
    let done = app.wait_batch(batch_id).await;
    assert_eq!(done["completed"], files.len() as u64, "{done}");

    // Every original and variant is in the bucket, under the prefix, and nothing else is.
    let photos = app.batch_photos(batch_id).await;
    let mut keys = s3.keys("tenant-a/").await;
    keys.sort();
    let mut expected: Vec<String> = photos
        .iter()
        .flat_map(|p| {
            let id = p["id"].as_str().unwrap().to_owned();
            std::iter::once(format!("tenant-a/originals/{id}")).chain(
                p["variants"].as_array().unwrap().iter().map(move |v| {
                    format!("tenant-a/variants/{id}/{}.jpg", v["name"].as_str().unwrap())
                }),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    assert!(
        s3.keys("originals/").await.is_empty(),
        "objects outside the prefix"
    );

    let plain = no_redirects();
    for (photo, (_, sent)) in photos.iter().zip(&files) {
        let id = photo["id"].as_str().unwrap();
        // The original, by redirect: a presigned URL anyone may GET, with the sniffed type.
        let res = plain
            .get(app.url(&format!("/v1/photos/{id}/original")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["cache-control"], "private, max-age=300");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&s3.url(&format!("/photoq-test/tenant-a/originals/{id}?"))),
            "{location}"
        );
        assert!(
            location.contains("X-Amz-Signature=") && location.contains("X-Amz-Expires=600"),
            "{location}"
        );
        let direct = plain.get(&location).send().await.unwrap();
        assert_eq!(direct.status(), 200);
        let expected_type = photo["original"]["content_type"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(direct.headers()["content-type"], expected_type.as_str());
        assert_eq!(
            &direct.bytes().await.unwrap()[..],
            &sent[..],
            "original of {id}"
        );

        // A variant through the API on request, and by redirect otherwise: the same bytes.
        for v in photo["variants"].as_array().unwrap() {
            let url = v["url"].as_str().unwrap();
            let proxied = app.bytes(&format!("{url}?redirect=false")).await;
            assert_eq!(proxied.len() as u64, v["bytes"].as_u64().unwrap());
            let res = plain
                .get(app.url(url))
                .bearer_auth(&app.key)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302);
            let location = res.headers()["location"].to_str().unwrap().to_owned();
            let direct = plain.get(&location).send().await.unwrap();
            assert_eq!(direct.headers()["content-type"], "image/jpeg");
            assert_eq!(direct.bytes().await.unwrap().to_vec(), proxied);
            // A client holding the ETag gets 304, with no redirect at all.
            let etag = res.headers().get("etag").cloned();
            assert!(etag.is_none(), "a redirect carries no ETag");
        }
    }

    // The first photo's bytes again: its variants copied inside the bucket (type kept).
    let again = app.upload_ok(vec![files[0].clone()]).await;
    app.wait_batch(again["batch_id"].as_str().unwrap()).await;
    let copy = &app.batch_photos(again["batch_id"].as_str().unwrap()).await[0];
    assert_eq!(copy["reused_from"], photos[0]["id"], "{copy}");
    let id = copy["id"].as_str().unwrap();
    let stored = s3.keys(&format!("tenant-a/variants/{id}/")).await;
    for v in copy["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let key = format!("tenant-a/variants/{id}/{name}.jpg");
        assert!(stored.contains(&key), "{key} in {stored:?}");
        let res = plain
            .get(app.url(v["url"].as_str().unwrap()))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        let direct = plain
            .get(res.headers()["location"].to_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(direct.headers()["content-type"], "image/jpeg", "{name}");
        let first = photos[0]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap();
        assert_eq!(
            direct.bytes().await.unwrap().to_vec(),
            app.bytes(&format!(
                "{}?redirect=false",
                first["url"].as_str().unwrap()
            ))
            .await
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn storage_unreachable_mid_run_jobs_are_retried_and_nothing_is_lost() {
    let s3 = S3Server::start().await;
    let s3_config = s3.config("", "timeout_secs = 1");
    let retry = "[retry]\nmax_attempts = 100\nbase_delay_ms = 100\nmax_delay_ms = 1000\n";
    // Uploads first, with no workers; then the server stops answering and workers start.
    let app = TestApp::builder()
        .workers(None)
        .config(&s3_config)
        .config(retry)
        .start()
        .await;
    let mut batches = Vec::new();
    for _ in 0..2 {
        let batch = app.upload_ok(three_photos()).await;
        batches.push(batch["batch_id"].as_str().unwrap().to_owned());
    }
    s3.pause();
    let app = app.restart(&format!("{s3_config}\n{retry}")).await;

    // Attempts fail on storage while it is unreachable (and the uploads are refused).
    let refused = app.upload(three_photos()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(common::error_code(refused).await, "unavailable");
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    'felt: loop {
        for id in &batches {
            for p in app.batch_photos(id).await {
                let photo = app
                    .get_json(&format!("/v1/photos/{}", p["id"].as_str().unwrap()))
                    .await;
                let failed_on_storage = photo["history"].as_array().unwrap().iter().any(|a| {
                    a["outcome"] == "retry" && a["error"].as_str().unwrap_or("").contains("storage")
                });
                if failed_on_storage {
                    break 'felt;
                }
            }
        }
        assert!(Instant::now() < deadline, "no attempt failed on storage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s3.resume();

    // Every photo completes once storage is back; none is lost or dead.
    for id in &batches {
        let batch = app.wait_batch(id).await;
        assert_eq!(batch["completed"], 3, "{batch}");
        for p in app.batch_photos(id).await {
            let photo: Value = app
                .get_json(&format!("/v1/photos/{}", p["id"].as_str().unwrap()))
                .await;
            for v in photo["variants"].as_array().unwrap() {
                let bytes = app.bytes(v["url"].as_str().unwrap()).await;
                assert_eq!(bytes.len() as u64, v["bytes"].as_u64().unwrap());
            }
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn storage_migrate_copies_local_to_s3_resumably_and_verified() {
    let s3 = S3Server::start().await;
    let app = TestApp::start().await;
    let batch = app.upload_ok(three_photos()).await;
    let batch_id = batch["batch_id"].as_str().unwrap().to_owned();
    assert_eq!(app.wait_batch(&batch_id).await["completed"], 3);
    let photos = app.batch_photos(&batch_id).await;
    let mut before = Vec::new();
    for p in &photos {
        let id = p["id"].as_str().unwrap();
        let mut objects = vec![app.bytes(&format!("/v1/photos/{id}/original")).await];
        for v in p["variants"].as_array().unwrap() {
            objects.push(app.bytes(v["url"].as_str().unwrap()).await);
        }
        before.push(objects);
    }
    let root = app.config.storage.root.clone();
    // The stored objects, as keys relative to the storage root.
    let local_objects: Vec<String> = common::stored_objects(&root)
        .iter()
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert_eq!(local_objects.len(), 9, "{local_objects:?}");

    // An earlier, interrupted run: one object copied, another cut short.
    let (first, second) = (&local_objects[0], &local_objects[1]);
    s3.put(
        &format!("moved/{first}"),
        std::fs::read(root.join(first)).unwrap(),
    )
    .await;
    s3.put(&format!("moved/{second}"), b"cut short".to_vec())
        .await;

    let migrate = || {
        let out = Command::new(common::cluster::BIN)
            .args([
                "storage", "migrate", "--from", "local", "--to", "s3", "--jobs", "3",
            ])
            .env("PHOTOQ_STORAGE_ROOT", &root)
            .env("PHOTOQ_STORAGE_BUCKET", common::s3::BUCKET)
            .env("PHOTOQ_STORAGE_PREFIX", "moved")
            .env("PHOTOQ_STORAGE_ENDPOINT", s3.endpoint())
            .env("PHOTOQ_STORAGE_REGION", s3.region())
            .env("PHOTOQ_STORAGE_PATH_STYLE", "true")
            .env("PHOTOQ_STORAGE_ALLOW_HTTP", "true")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first_run = migrate();
    assert!(
        first_run.contains("9 objects")
            && first_run.contains("8 copied")
            && first_run.contains("1 already there")
            && first_run.contains("0 failed"),
        "{first_run}"
    );
    let mut keys = s3.keys("moved/").await;
    keys.sort();
    let mut expected: Vec<String> = local_objects.iter().map(|k| format!("moved/{k}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    let again = migrate();
    assert!(
        again.contains("0 copied") && again.contains("9 already there"),
        "{again}"
    );

    // photoq on the bucket serves exactly what it served from local disk.
    // (The restarted app keeps its storage root, now unused.)
    let app = app.restart(&s3.config("moved", "")).await;
    for (p, objects) in photos.iter().zip(&before) {
        let id = p["id"].as_str().unwrap();
        assert_eq!(
            &app.bytes(&format!("/v1/photos/{id}/original")).await,
            &objects[0]
        );
        for (v, bytes) in p["variants"].as_array().unwrap().iter().zip(&objects[1..]) {
            assert_eq!(&app.bytes(v["url"].as_str().unwrap()).await, bytes);
        }
    }
    app.finish().await;
}
