//! The API as a client sees it: formats, photo and batch documents, paging, caching,
//! the OpenAPI document and the health endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use common::{corpus_dir, read, TestApp};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn encode(format: image::ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 128, 255])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

/// Uploads one small camera photo and waits for its batch to settle.
async fn upload_one_and_wait(app: &TestApp) -> Value {
    let body = app
        .upload_ok(vec![(
            "a.jpg".into(),
            read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )])
        .await;
    app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_and_webp_complete_and_documents_have_the_contract_fields() {
    let app = TestApp::start().await;
    let jpeg = read(corpus_dir().join("jpg/gps/DSCN0010.jpg"));
    let body = app
        .upload_ok(vec![
            ("a.png".into(), encode(image::ImageFormat::Png, 1600, 900)),
            ("b.webp".into(), encode(image::ImageFormat::WebP, 300, 500)),
            ("c.jpg".into(), jpeg.clone()),
        ])
        .await;
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();
    for p in body["photos"].as_array().unwrap() {
        assert_eq!(p["state"], "queued");
        assert_eq!(
            p["url"],
            format!("/v1/photos/{}", p["id"].as_str().unwrap())
        );
    }
    let batch = app.wait_batch(&batch_id).await;
    for field in [
        "id",
        "state",
        "total",
        "queued",
        "processing",
        "completed",
        "failed",
        "dead",
        "photos",
    ] {
        assert!(!batch[field].is_null(), "batch has {field}");
    }
    assert_eq!(batch["state"], "completed");
    assert_eq!(batch["total"], 3);

    let png = app
        .get_json(body["photos"][0]["url"].as_str().unwrap())
        .await;
    assert_eq!(png["original"]["content_type"], "image/png");
    assert_eq!(
        (
            png["original"]["width"].as_u64(),
            png["original"]["height"].as_u64()
        ),
        (Some(1600), Some(900))
    );
    let sizes: Vec<(String, u64, u64)> = png["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["width"].as_u64().unwrap(),
                v["height"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        vec![
            ("preview".into(), 1280, 720),
            ("thumbnail".into(), 256, 144)
        ]
    );

    let webp = app
        .get_json(body["photos"][1]["url"].as_str().unwrap())
        .await;
    assert_eq!(webp["original"]["content_type"], "image/webp");
    assert_eq!(webp["state"], "completed");

    let jpg = app
        .get_json(body["photos"][2]["url"].as_str().unwrap())
        .await;
    for field in [
        "id",
        "batch_id",
        "state",
        "error",
        "attempts",
        "original",
        "exif",
        "variants",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    ] {
        assert!(jpg.get(field).is_some(), "photo has {field}");
    }
    assert_eq!(
        jpg["original"]["sha256"],
        hex::encode(Sha256::digest(&jpeg))
    );
    assert_eq!(jpg["original"]["bytes"], jpeg.len());
    let exif = &jpg["exif"];
    assert_eq!(exif["make"], "NIKON");
    assert!(exif["gps"]["latitude"].as_f64().unwrap() > 43.0);
    assert!(exif["exposure_time"].is_number());
    assert!(!exif["tags"].as_array().unwrap().is_empty());
    // The placeholder: a ThumbHash, base64, of the photo's aspect ratio.
    let hash = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        jpg["thumbhash"].as_str().expect("thumbhash"),
    )
    .unwrap();
    let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).unwrap();
    let (w, h) = (
        jpg["original"]["width"].as_f64().unwrap(),
        jpg["original"]["height"].as_f64().unwrap(),
    );
    assert!(
        (f64::from(ratio) - w / h).abs() < 0.3,
        "{ratio} for {w}x{h}"
    );

    // The original comes back byte for byte.
    assert_eq!(
        app.bytes(jpg["original"]["url"].as_str().unwrap()).await,
        jpeg
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_carry_etag_and_answer_304() {
    let app = TestApp::start().await;
    let body = upload_one_and_wait(&app).await;
    let url = format!(
        "{}/variants/thumbnail",
        body["photos"][0]["url"].as_str().unwrap()
    );
    let res = app.get(&url).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    // Without the `v` of its bytes the variant is revalidated; the photo's own URL for it
    // names the bytes and is kept for good.
    assert_eq!(res.headers()["cache-control"], "private, no-cache");
    let photo = app
        .get_json(body["photos"][0]["url"].as_str().unwrap())
        .await;
    let named = photo["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "thumbnail")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept = app.get(&named).await;
    assert_eq!(
        kept.headers()["cache-control"],
        "private, max-age=31536000, immutable"
    );
    let stale = app.get(&format!("{url}?v=000000000000")).await;
    assert_eq!(stale.headers()["cache-control"], "private, no-cache");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF]);
    // No EXIF segment in a variant.
    assert!(!bytes.windows(6).any(|w| w == b"Exif\0\0"));

    let again = app
        .client
        .get(app.url(&url))
        .bearer_auth(&app.key)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let other = app
        .client
        .get(app.url(&url))
        .bearer_auth(&app.key)
        .header("If-None-Match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    let missing = app.get(&url.replace("thumbnail", "poster")).await;
    assert_eq!(missing.status(), 404);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_variants_are_made_stored_and_served_in_their_format() {
    let app = TestApp::builder()
        .config(
            "[variants.avatar]\nwidth = 96\nheight = 96\nfit = \"cover\"\nformat = \"webp\"\n\
             quality = 70\nsharpen = 0.5\n\
             [variants.strip]\nwidth = 300\nheight = 40\nfit = \"exact\"\nformat = \"png\"\n\
             grayscale = true\n\
             [variants.wide]\nwidth = 500\n\
             [variants.modern]\nwidth = 240\nformat = \"avif\"\n",
        )
        .start()
        .await;
    let body = app
        .upload_ok(vec![(
            "a.jpg".into(),
            encode(image::ImageFormat::Jpeg, 1200, 800),
        )])
        .await;
    app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    let photo = app
        .get_json(body["photos"][0]["url"].as_str().unwrap())
        .await;
    assert_eq!(photo["state"], "completed", "{photo}");
    let variants = photo["variants"].as_array().unwrap();
    let find = |name: &str| {
        variants
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {photo}"))
    };
    for (name, content_type, size, format) in [
        ("avatar", "image/webp", (96, 96), image::ImageFormat::WebP),
        ("strip", "image/png", (300, 40), image::ImageFormat::Png),
        ("wide", "image/jpeg", (500, 333), image::ImageFormat::Jpeg),
        (
            "thumbnail",
            "image/jpeg",
            (256, 171),
            image::ImageFormat::Jpeg,
        ),
        (
            "preview",
            "image/jpeg",
            (1200, 800),
            image::ImageFormat::Jpeg,
        ),
        ("modern", "image/avif", (240, 160), image::ImageFormat::Avif),
    ] {
        let v = find(name);
        assert_eq!(v["content_type"], content_type, "{name}");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(size.0), Some(size.1))
        );
        let res = app.get(v["url"].as_str().unwrap()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], content_type, "{name}");
        let bytes = res.bytes().await.unwrap();
        assert_eq!(image::guess_format(&bytes).unwrap(), format, "{name}");
        if format == image::ImageFormat::Avif {
            // Read back by photoq's own decoder (libheif and dav1d, not the encoder).
            let back = photoq::pipeline::process(&bytes, &photoq_spec()).unwrap();
            assert_eq!((u64::from(back.width), u64::from(back.height)), size);
            continue;
        }
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (u64::from(img.width()), u64::from(img.height())),
            size,
            "{name}"
        );
        if name == "strip" {
            let rgb = img.to_rgb8();
            assert!(rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "grey");
        }
    }

    // An iPhone-style HEIC goes the same way; its original keeps its type.
    let heic = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/images/chart-p3.heic"
    ))
    .unwrap();
    let body = app.upload_ok(vec![("chart.heic".into(), heic)]).await;
    app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    let photo = app
        .get_json(body["photos"][0]["url"].as_str().unwrap())
        .await;
    assert_eq!(photo["state"], "completed", "{photo}");
    assert_eq!(photo["original"]["content_type"], "image/heic", "{photo}");
    assert_eq!(
        (
            photo["original"]["width"].as_u64(),
            photo["original"]["height"].as_u64()
        ),
        (Some(400), Some(80))
    );
    let modern = photo["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "modern")
        .unwrap();
    assert_eq!(modern["content_type"], "image/avif");
    assert_eq!(
        (modern["width"].as_u64(), modern["height"].as_u64()),
        (Some(240), Some(48))
    );
    app.finish().await;
}

fn photoq_spec() -> photoq::pipeline::Spec {
    photoq::pipeline::Spec::from_config(&photoq::config::Config::defaults().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_list_pages_by_cursor_and_filters() {
    let app = TestApp::start().await;
    let small = read(corpus_dir().join("jpg/Kodak_CX7530.jpg"));
    let first = app
        .upload_ok(
            (0..5)
                .map(|i| (format!("{i}.jpg"), small.clone()))
                .collect(),
        )
        .await;
    let second = app
        .upload_ok(vec![("x.jpg".into(), b"\xFF\xD8\xFF\xE0 broken".to_vec())])
        .await;
    app.wait_batch(first["batch_id"].as_str().unwrap()).await;
    app.wait_batch(second["batch_id"].as_str().unwrap()).await;

    let mut seen = Vec::new();
    let mut path = "/v1/photos?limit=2".to_owned();
    loop {
        let page = app.get_json(&path).await;
        let photos = page["photos"].as_array().unwrap();
        assert!(photos.len() <= 2);
        seen.extend(photos.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/photos?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are ordered and do not repeat");

    let batch = first["batch_id"].as_str().unwrap();
    let page = app.get_json(&format!("/v1/photos?batch={batch}")).await;
    assert_eq!(page["photos"].as_array().unwrap().len(), 5);
    let failed = app.get_json("/v1/photos?state=failed").await;
    let failed = failed["photos"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], second["photos"][0]["id"]);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_endpoint_and_the_upload_field() {
    let app = TestApp::start().await;
    let spec: Value = app.get_public("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &spec["paths"];
    for (path, method) in [
        ("/v1/photos", "post"),
        ("/v1/photos", "get"),
        ("/v1/photos/{id}", "get"),
        ("/v1/photos/{id}/variants/{name}", "get"),
        ("/v1/photos/{id}/original", "get"),
        ("/v1/batches/{id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let upload = &paths["/v1/photos"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert!(
        form["properties"]["file"].is_object(),
        "upload documents `file`: {upload}"
    );
    for code in ["202", "400", "401", "413", "415"] {
        assert!(
            upload["responses"][code].is_object(),
            "upload documents {code}"
        );
    }
    let error = &upload["responses"]["415"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(error, "#/components/schemas/ErrorBody");
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    assert!(spec["components"]["securitySchemes"].is_object());

    let docs = app.get_public("/docs/index.html").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = TestApp::start().await;
    let health: Value = app.get_public("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app.get_public("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        (ready["database"].as_str(), ready["redis"].as_str()),
        (Some("up"), Some("up"))
    );

    upload_one_and_wait(&app).await;
    // The job is counted just after its commit, which the batch shows: wait for the count.
    let metrics = metrics_when(&app.url("/metrics"), 10, "job never counted", |text| {
        text.contains("photoq_jobs_total{outcome=\"completed\"} 1")
    })
    .await;
    assert!(
        metrics.contains("photoq_photos_uploaded_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("photoq_jobs_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("photoq_commit_group_jobs_count 1"),
        "one group commit recorded the one job: {metrics}"
    );
    for stage in ["decode", "resize", "encode", "store", "commit"] {
        assert_eq!(
            sample(
                &metrics,
                "photoq_job_stage_duration_seconds_count",
                &[("stage", stage)]
            ),
            Some(1.0),
            "{stage}: {metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            "photoq_job_stage_duration_seconds_count",
            &[("stage", "download")]
        ),
        None,
        "an upload downloads nothing"
    );
    assert!(sample(&metrics, "photoq_upload_bytes_total", &[]).is_some_and(|b| b > 1000.0));
    let upload = [
        ("route", "/v1/photos"),
        ("method", "POST"),
        ("status", "202"),
    ];
    assert_eq!(
        sample(&metrics, "photoq_http_requests_total", &upload),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "photoq_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(sample(&metrics, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(
        sample(&metrics, "photoq_photo_completion_seconds_count", &[]),
        Some(1.0),
        "upload to completed, once: {metrics}"
    );
    for dependency in ["database", "redis"] {
        assert_eq!(
            sample(&metrics, "photoq_ready", &[("dependency", dependency)]),
            Some(1.0),
            "{dependency}"
        );
    }
    let pool_size = app.config.database.pool_size as f64;
    assert_eq!(
        sample(&metrics, "photoq_db_pool_max_connections", &[]),
        Some(pool_size)
    );
    let in_use = sample(
        &metrics,
        "photoq_db_pool_connections",
        &[("state", "in_use")],
    );
    let idle = sample(&metrics, "photoq_db_pool_connections", &[("state", "idle")]);
    assert!(
        matches!((in_use, idle), (Some(u), Some(i)) if u + i >= 1.0 && u + i <= pool_size),
        "{in_use:?} {idle:?}"
    );

    // A path no route takes is counted under one label, whatever the path.
    for path in ["/nope/1", "/nope/2"] {
        assert_eq!(app.get_public(path).await.status(), 404);
    }
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(
        sample(&metrics, "photoq_http_requests_total", &unmatched),
        Some(2.0)
    );
    assert!(!metrics.contains("/nope/"), "no raw paths in labels");
    let batch_route = [("route", "/v1/batches/{id}"), ("method", "GET")];
    assert!(
        sample(
            &metrics,
            "photoq_http_request_duration_seconds_count",
            &batch_route
        )
        .is_some_and(|n| n >= 1.0),
        "routes are labelled by their template: {metrics}"
    );
    app.finish().await;
}

/// The text of `url` (a `/metrics`) once `ready` holds for it, fetched again until then
/// (a listener not up yet counts as not ready), for at most `secs` seconds.
async fn metrics_when(url: &str, secs: u64, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let http = common::http_client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        if let Ok(res) = http.get(url).send().await {
            last = res.text().await.expect("text");
            if ready(&last) {
                return last;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {last}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The value of the sample of `name` whose labels include `labels`, from Prometheus text.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let has = |(k, v): &(&str, &str)| rest.split(',').any(|p| p == format!("{k}=\"{v}\""));
        (metric == name && labels.iter().all(has)).then(|| value.parse().ok())?
    })
}

/// The queue-wide gauges: photos uploaded with no worker running wait in the interactive
/// lane, none delivered, the oldest waiting longer and longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_show_what_waits() {
    let app = TestApp::builder().workers(None).start().await;
    let jpeg = || {
        (
            "a.jpg".to_owned(),
            read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )
    };
    app.upload_ok(vec![jpeg(), jpeg(), jpeg()]).await;
    let lane = [("lane", "interactive")];
    // Sampled every few seconds by this process (the only one holding the lease).
    let metrics = metrics_when(&app.url("/metrics"), 20, "never sampled", |text| {
        sample(text, "photoq_queue_entries", &lane) == Some(3.0)
    })
    .await;
    assert_eq!(
        sample(&metrics, "photoq_queue_waiting_entries", &lane),
        Some(3.0)
    );
    assert_eq!(
        sample(&metrics, "photoq_queue_pending_entries", &lane),
        Some(0.0)
    );
    let bulk = [("lane", "bulk")];
    assert_eq!(sample(&metrics, "photoq_queue_entries", &bulk), Some(0.0));
    assert_eq!(
        sample(&metrics, "photoq_queue_dead_letters", &[]),
        Some(0.0)
    );
    assert!(
        sample(&metrics, "photoq_queue_oldest_waiting_seconds", &[]).is_some_and(|s| s > 0.0),
        "{metrics}"
    );
    app.finish().await;
}

/// A worker-only process serves its own metrics on `worker.metrics_bind`: the job it ran
/// is counted there, not by the API process that took the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_its_own_metrics() {
    use common::cluster::{self, Cluster};
    let cluster = Cluster::new("pqwmetrics");
    let key = cluster.key();
    let (_serve, base) = cluster.serve().await;
    let port = common::free_port();
    let _worker = cluster.spawn(
        &["work", "--concurrency", "2"],
        &[("PHOTOQ_WORKER_METRICS_BIND", format!("127.0.0.1:{port}"))],
    );
    let client = cluster::Client::new(&base, &key);
    let batch = client
        .upload(&[(
            "a.jpg".to_owned(),
            read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )])
        .await;
    client
        .wait_batch(batch["batch_id"].as_str().expect("batch"))
        .await;
    let http = common::http_client();
    let worker_metrics = format!("http://127.0.0.1:{port}/metrics");
    let completed = [("outcome", "completed")];
    let text = metrics_when(
        &worker_metrics,
        20,
        "the worker never counted its job",
        |text| sample(text, "photoq_jobs_total", &completed) == Some(1.0),
    )
    .await;
    assert_eq!(
        sample(
            &text,
            "photoq_job_stage_duration_seconds_count",
            &[("stage", "decode")]
        ),
        Some(1.0)
    );
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let api = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(sample(&api, "photoq_jobs_total", &completed), None);
    assert_eq!(sample(&api, "photoq_photos_uploaded_total", &[]), Some(1.0));
    cluster.cleanup().await;
}

/// Redis going away shows in the metrics: readiness says which dependency is down, and the
/// failed commands are counted by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_errors_and_readiness_show_in_the_metrics() {
    let mut redis = common::PrivateRedis::new();
    redis.start().await;
    let app = TestApp::builder()
        .redis_url(&redis.url())
        .workers(None)
        .start()
        .await;
    let metrics = app.get_public("/metrics").await.text().await.unwrap();
    assert_eq!(
        sample(&metrics, "photoq_ready", &[("dependency", "redis")]),
        Some(1.0)
    );
    let errors = |text: &str| -> f64 {
        ["connection", "timeout", "server"]
            .iter()
            .filter_map(|k| sample(text, "photoq_redis_errors_total", &[("kind", k)]))
            .sum()
    };
    let before = errors(&metrics);
    redis.stop();
    let metrics = metrics_when(
        &app.url("/metrics"),
        30,
        "redis never reported down",
        |text| sample(text, "photoq_ready", &[("dependency", "redis")]) == Some(0.0),
    )
    .await;
    assert_eq!(
        sample(&metrics, "photoq_ready", &[("dependency", "database")]),
        Some(1.0)
    );
    let after = errors(&metrics);
    assert!(
        after > before,
        "redis errors counted: {before} -> {after}: {metrics}"
    );
    // Back (empty), for the harness's closing checks.
    redis.start().await;
    app.queue().ensure_group().await.unwrap();
    app.finish().await;
}

/// The operator overview: an operator key sees the lanes, the workers and the error codes
/// of every owner's recent attempts, and none of their photos; a client key gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_overview_shows_aggregates_only() {
    let app = TestApp::start().await;
    let jpeg = read(corpus_dir().join("jpg/Canon_40D.jpg"));
    let broken = jpeg[..jpeg.len() / 3].to_vec();
    let body = app
        .upload_ok(vec![("a.jpg".into(), jpeg), ("b.jpg".into(), broken)])
        .await;
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();
    let batch = app.wait_batch(&batch_id).await;
    assert_eq!(
        (batch["completed"].as_i64(), batch["failed"].as_i64()),
        (Some(1), Some(1))
    );

    let refused = app.get("/v1/operator/overview").await;
    assert_eq!(refused.status(), 403);
    assert_eq!(common::error_code(refused).await, "forbidden");

    let (_, operator) = app.new_key_as("ops", photoq::auth::Scopes::OPERATOR).await;
    let me: Value = app.get_as(&operator, "/v1/me").await.json().await.unwrap();
    assert_eq!(
        (me["name"].as_str(), me["operator"].as_bool()),
        (Some("ops"), Some(true))
    );
    let mine: Value = app.get_json("/v1/me").await;
    assert_eq!(mine["operator"], false);

    let overview = app.get_as(&operator, "/v1/operator/overview").await;
    assert_eq!(overview.status(), 200);
    let text = overview.text().await.unwrap();
    let overview: Value = serde_json::from_str(&text).unwrap();
    let lanes: Vec<&str> = overview["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lane"].as_str().unwrap())
        .collect();
    assert_eq!(lanes, ["interactive", "bulk"]);
    let workers = overview["workers"].as_array().unwrap();
    assert!(
        workers.iter().any(|w| w["active"] == true),
        "the test's workers are seen: {overview}"
    );
    let errors = overview["recent_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["code"] == "undecodable_image" && e["attempts"].as_u64() >= Some(1)),
        "{overview}"
    );
    assert_eq!(overview["unfinished"]["queued"], 0);
    for id in std::iter::once(batch_id.as_str()).chain(
        body["photos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap()),
    ) {
        assert!(!text.contains(id), "no owner's ids in the overview: {text}");
    }

    // The client's own views: its batches, newest first, and nothing unfinished.
    let second = upload_one_and_wait(&app).await;
    let list = app.get_json("/v1/batches?limit=1").await;
    let batches = list["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["id"], second["batch_id"]);
    assert_eq!(batches[0]["state"], "completed");
    let cursor = list["next_cursor"].as_str().unwrap();
    let older = app.get_json(&format!("/v1/batches?cursor={cursor}")).await;
    let older = older["batches"].as_array().unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0]["id"].as_str(), Some(batch_id.as_str()));
    assert_eq!(older[0]["state"], "completed_with_errors");
    assert_eq!(older[0]["failed"], 1);
    let operators_batches = app.get_as(&operator, "/v1/batches").await;
    let operators_batches: Value = operators_batches.json().await.unwrap();
    assert_eq!(
        operators_batches["batches"].as_array().unwrap().len(),
        0,
        "an operator key sees no other key's batches"
    );
    let stats = app.get_json("/v1/stats").await;
    assert_eq!(
        (stats["queued"].as_i64(), stats["processing"].as_i64()),
        (Some(0), Some(0))
    );
    app.finish().await;
}

/// The same bytes uploaded again by the same owner reuse the first photo's results: a photo
/// of its own (id, batch, one attempt, `completed`), `reused_from` the first, with variants
/// that are copies (the same bytes under its own keys). Another owner's upload, a changed
/// variant configuration, or `reuse_duplicates = false` process the photo anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_reuse_the_first_photos_results() {
    let app = TestApp::start().await;
    let jpeg = encode(image::ImageFormat::Jpeg, 900, 600);
    let first = upload_and_wait(&app, &app.key, jpeg.clone()).await;
    assert_eq!(first["reused_from"], Value::Null, "{first}");
    let again = upload_and_wait(&app, &app.key, jpeg.clone()).await;
    assert_ne!(again["id"], first["id"]);
    assert_eq!(again["state"], "completed", "{again}");
    assert_eq!(again["attempts"], 1);
    assert_eq!(again["reused_from"], first["id"], "{again}");
    for field in ["thumbhash", "exif"] {
        assert_eq!(again[field], first[field], "{field}");
    }
    assert_eq!(again["original"]["width"], first["original"]["width"]);
    let (ours, theirs) = (
        again["variants"].as_array().unwrap(),
        first["variants"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), theirs.len());
    for (v, w) in ours.iter().zip(theirs) {
        assert_eq!(
            (&v["name"], &v["width"], &v["height"]),
            (&w["name"], &w["width"], &w["height"])
        );
        assert_ne!(v["url"], w["url"]);
        let (a, b) = (
            app.bytes(v["url"].as_str().unwrap()).await,
            app.bytes(w["url"].as_str().unwrap()).await,
        );
        assert!(!a.is_empty() && a == b, "{} is a copy", v["name"]);
    }
    // The copies are objects of their own in storage.
    let root = std::path::PathBuf::from(&app.config.storage.root);
    let again_id = again["id"].as_str().unwrap();
    let copies = common::stored_objects(&root.join("variants").join(again_id));
    assert_eq!(copies.len(), ours.len(), "{copies:?}");

    // Another owner's same bytes: processed for that owner.
    let (_, other) = app.new_key("other").await;
    let theirs = upload_and_wait(&app, &other, jpeg.clone()).await;
    assert_eq!(theirs["reused_from"], Value::Null, "{theirs}");

    // A different variant configuration: processed again, then reused under it.
    let app = app
        .restart("[variants.thumbnail]\nwidth = 128\nheight = 128\n")
        .await;
    let resized = upload_and_wait(&app, &app.key, jpeg.clone()).await;
    assert_eq!(resized["reused_from"], Value::Null, "{resized}");
    let thumb = |p: &Value| {
        p["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "thumbnail")
            .unwrap()["width"]
            .clone()
    };
    assert_eq!(thumb(&resized), 128);
    let twice = upload_and_wait(&app, &app.key, jpeg.clone()).await;
    assert_eq!(twice["reused_from"], resized["id"]);

    // Switched off: every upload is processed.
    let app = app
        .restart("[variants.thumbnail]\nwidth = 128\nheight = 128\n[pipeline]\nreuse_duplicates = false\n")
        .await;
    let off = upload_and_wait(&app, &app.key, jpeg).await;
    assert_eq!(off["state"], "completed");
    assert_eq!(off["reused_from"], Value::Null, "{off}");
    app.finish().await;
}

/// Uploads one file as `key` and returns its photo once its batch is done.
async fn upload_and_wait(app: &TestApp, key: &str, data: Vec<u8>) -> Value {
    let res = app.upload_with(key, vec![("same.jpg".into(), data)]).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let url = body["photos"][0]["url"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let photo: Value = app.get_as(key, &url).await.json().await.unwrap();
        if photo["state"] == "completed" || photo["state"] == "failed" {
            return photo;
        }
        assert!(std::time::Instant::now() < deadline, "{photo}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
