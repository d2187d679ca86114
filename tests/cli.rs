//! The binary itself: help, migrations, key management, and `photoq all` as a real process
//! that serves, processes and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::cluster::{wait_until_up, Client, Cluster, BIN};
use common::{corpus_dir, pg_server, read};

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["work", "--help"],
        vec!["all", "--help"],
        vec!["migrate", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "create", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "revoke", "--help"],
        vec!["dlq", "--help"],
        vec!["dlq", "list", "--help"],
        vec!["dlq", "redrive", "--help"],
        vec!["render", "--help"],
        vec!["import", "--help"],
        vec!["storage", "--help"],
        vec!["storage", "migrate", "--help"],
        vec!["health", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let bad = Command::new(BIN)
        .args(["work", "--concurrency", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn health_fails_when_nothing_answers_and_migrate_refuses_one_backend_twice() {
    let port = common::free_port();
    let out = Command::new(BIN)
        .args([
            "health",
            "--url",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not healthy"));
    let out = Command::new(BIN)
        .args(["storage", "migrate", "--from", "local", "--to", "local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("same backend"));
}

#[test]
fn render_makes_the_configured_variants_of_local_files() {
    let out = std::env::temp_dir().join(format!("pqrender_{}", uuid::Uuid::new_v4().simple()));
    let config = out.with_extension("toml");
    // A solid magenta watermark, 40 × 20.
    let mark = out.with_extension("png");
    image::RgbaImage::from_pixel(40, 20, image::Rgba([255, 0, 255, 255]))
        .save(&mark)
        .unwrap();
    let write_config = |watermark: &std::path::Path| {
        std::fs::write(
            &config,
            format!(
                "[pipeline]\nwatermark = {watermark:?}\n\
                 [variants.square]\nwidth = 100\nheight = 100\nfit = \"cover\"\n\
                 focus = \"attention\"\nformat = \"webp\"\n\
                 [variants.marked]\nwidth = 200\nformat = \"avif\"\n\
                 watermark = {{ position = \"top-left\", size = 0.2, opacity = 1.0, margin = 0.0 }}\n"
            ),
        )
        .unwrap();
    };
    write_config(&mark);
    let good = corpus_dir().join("jpg/gps/DSCN0010.jpg");
    let heic = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/chart-p3.heic");
    let bad = corpus_dir().join("jpg/corrupted.jpg");
    let run = |files: &[&std::path::Path]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["render", "--concurrency", "2", "--out"])
            .arg(&out)
            .args(files)
            .output()
            .unwrap()
    };

    let ok = run(&[&good, &heic]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("images/s"));
    for (name, size) in [
        ("DSCN0010_thumbnail.jpg", (256, 192)),
        ("DSCN0010_preview.jpg", (640, 480)),
        ("DSCN0010_square.webp", (100, 100)),
    ] {
        let img = image::load_from_memory(&read(out.join(name))).unwrap();
        assert_eq!((img.width(), img.height()), size, "{name}");
    }
    // The AVIF variant: 200 px wide, the watermark in its top-left corner.
    let marked = read(out.join("DSCN0010_marked.avif"));
    assert_eq!(&marked[4..12], b"ftypavif");
    assert!(out.join("chart-p3_marked.avif").exists());
    assert!(out.join("chart-p3_preview.jpg").exists());
    let back = photoq::pipeline::process(
        &marked,
        &photoq::pipeline::Spec::from_config(&photoq::config::Config::defaults().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!((back.width, back.height), (200, 150));
    let preview = image::load_from_memory(&back.variants[0].data)
        .unwrap()
        .to_rgb8();
    let corner = preview.get_pixel(10, 5).0;
    assert!(
        corner[0] > 200 && corner[1] < 60 && corner[2] > 200,
        "watermark corner: {corner:?}"
    );

    // A watermark that cannot be read stops the run before any file, saying which.
    write_config(&out.with_extension("missing.png"));
    let refused = run(&[&good]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pipeline.watermark"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    write_config(&mark);

    // A broken file is reported and fails the run; the good one is still rendered.
    std::fs::remove_dir_all(&out).unwrap();
    let mixed = run(&[&bad, &good]);
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("corrupted.jpg"));
    assert!(out.join("DSCN0010_square.webp").exists());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&config).unwrap();
    std::fs::remove_file(&mark).unwrap();
}

#[tokio::test]
async fn keys_create_list_revoke() {
    let cluster = Cluster::new("pqcli");
    assert!(cluster.run(&["migrate"]).contains("migrations applied"));
    let out = cluster.run(&["keys", "create", "--name", "ci-bot"]);
    let key = out.lines().last().unwrap().trim().to_owned();
    assert!(
        key.starts_with("pq_") && key.len() > 40,
        "last line is the key: {out:?}"
    );

    let list = cluster.run(&["keys", "list"]);
    let line = list
        .lines()
        .find(|l| l.ends_with("ci-bot"))
        .expect("key listed");
    assert!(line.contains(&key[..11]), "prefix shown");
    assert!(!list.contains(&key), "the full key is never shown again");
    let id = line.split_whitespace().next().unwrap().to_owned();

    let config = photoq::config::DatabaseConfig {
        url: format!("{}/{}", pg_server(), cluster.name),
        pool_size: 2,
        connect_timeout_secs: 5,
        statement_timeout_secs: 5,
    };
    let pool = photoq::db::pool(&config).unwrap();
    assert!(photoq::auth::authenticate(&pool, &key)
        .await
        .unwrap()
        .is_some());
    assert!(cluster.run(&["keys", "revoke", &id]).contains("revoked"));
    assert!(photoq::auth::authenticate(&pool, &key)
        .await
        .unwrap()
        .is_none());
    let again = cluster.cmd(&["keys", "revoke", &id]).output().unwrap();
    assert!(!again.status.success(), "revoking twice is an error");
    drop(pool);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_serves_processes_and_stops_on_sigterm() {
    let cluster = Cluster::new("pqcli");
    let key = cluster.key();
    let port = common::free_port();
    let proc = cluster.spawn(
        &["all", "--concurrency", "2"],
        &[("PHOTOQ_BIND", format!("127.0.0.1:{port}"))],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&base).await;
    let client = Client::new(&base, &key);
    let body = client
        .upload(&[("a.jpg".into(), read(corpus_dir().join("jpg/Canon_40D.jpg")))])
        .await;
    let batch = client.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["state"], "completed");

    let (status, _) = proc.terminate().await;
    assert!(status.success(), "exit status {status}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_workers_record_every_state_but_make_nothing() {
    let cluster = Cluster::new("pqcli");
    let key = cluster.key();
    let (_api, base) = cluster.serve().await;
    let client = Client::new(&base, &key);
    let _worker = cluster.spawn(&["work", "--no-op", "--concurrency", "4"], &[]);
    let photo = read(corpus_dir().join("jpg/Canon_40D.jpg"));
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("{i}.jpg"), photo.clone()))
        .collect();
    let body = client.upload(&files).await;
    let batch = client.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["completed"], 12, "{batch}");
    for p in body["photos"].as_array().unwrap() {
        let photo = client.get(p["url"].as_str().unwrap()).await;
        assert_eq!(photo["state"], "completed");
        assert!(photo["variants"].as_array().unwrap().is_empty(), "{photo}");
        let history = photo["history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{photo}");
        assert_eq!(history[0]["outcome"], "completed");
        assert!(history[0]["duration_ms"].is_u64());
    }
    assert!(cluster.stored("variants").is_empty(), "no variant stored");
    cluster.cleanup().await;
}

#[tokio::test]
async fn import_follows_an_import_and_lists_its_failures() {
    let fx = common::fixture::Fixture::start().await;
    let app = common::TestApp::builder()
        .config("[fetch]\nallow = [\"127.0.0.1\"]")
        .start()
        .await;
    let dir = std::env::temp_dir().join(format!("pqimport_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{}\n", app.key)).unwrap();
    let image = fx.url("/img/Canon_40D.jpg");
    let run = |file: &std::path::Path, with_key_file: bool| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("import").arg(file).args(["--server", &app.base]);
        if with_key_file {
            cmd.arg("--key-file").arg(&key_file);
        } else {
            cmd.env("PHOTOQ_API_KEY", &app.key);
        }
        cmd.output()
    };

    // One product fine, one with a missing image: exit status 2, the failure listed.
    let json_file = dir.join("products.json");
    let body = serde_json::json!({"products": [
        {"external_id": "cli-ok", "images": [image]},
        {"external_id": "cli-gone", "images": [image, fx.url("/status/404")]},
    ]});
    std::fs::write(&json_file, body.to_string()).unwrap();
    let out = run(&json_file, false).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("cli-gone"))
        .unwrap_or_else(|| panic!("no failure row: {stdout}"));
    assert!(
        row.contains("download_not_found") && row.contains("/status/404"),
        "{row}"
    );
    assert!(!stdout.contains("cli-ok "), "{stdout}");

    // CSV, every product fine: exit status 0.
    let csv_file = dir.join("products.csv");
    std::fs::write(&csv_file, format!("external_id,images\ncli-csv,{image}\n")).unwrap();
    let out = run(&csv_file, true).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 products processed"));

    // Refused items: exit status 1, each problem printed.
    std::fs::write(&csv_file, "external_id,images\n,ftp://x/a.jpg\n").unwrap();
    let out = run(&csv_file, true).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("external_id") && stderr.contains("images[0]"),
        "{stderr}"
    );

    // No key at all.
    let out = tokio::process::Command::new(BIN)
        .arg("import")
        .arg(&csv_file)
        .env_remove("PHOTOQ_API_KEY")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PHOTOQ_API_KEY"));
    std::fs::remove_dir_all(&dir).unwrap();
    app.finish().await;
    fx.stop().await;
}

#[tokio::test]
async fn submit_uploads_a_directory_follows_it_and_resumes_without_duplicates() {
    let app = common::TestApp::start().await;
    let dir = std::env::temp_dir().join(format!("pqsubmit_{}", uuid::Uuid::new_v4().simple()));
    let photos = dir.join("photos");
    let out_dir = dir.join("out");
    std::fs::create_dir_all(photos.join("nested")).unwrap();
    let jpg = common::corpus_dir().join("jpg");
    for name in ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg"] {
        std::fs::copy(jpg.join(name), photos.join(name)).unwrap();
    }
    std::fs::copy(jpg.join("Sony_HDR-HC3.jpg"), photos.join("nested/sony.jpg")).unwrap();
    let mut cut = std::fs::read(jpg.join("Canon_40D.jpg")).unwrap();
    cut.truncate(2048);
    std::fs::write(photos.join("cut.jpg"), cut).unwrap();
    std::fs::write(photos.join("notes.txt"), "not a photo").unwrap();
    std::fs::write(photos.join(".hidden.jpg"), "skipped unseen").unwrap();

    // The server comes from PHOTOQ_SERVER, the key from PHOTOQ_API_KEY: neither trips the
    // configuration photoq loads on the way.
    let submit = || {
        tokio::process::Command::new(BIN)
            .arg("submit")
            .arg(&photos)
            .args(["--batch-size", "2", "--json", "--download"])
            .arg(&out_dir)
            .env("PHOTOQ_SERVER", &app.base)
            .env("PHOTOQ_API_KEY", &app.key)
            .output()
    };
    let out = submit().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["completed"], 4, "{report:#}");
    assert_eq!(report["failed"], 1, "{report:#}");
    assert_eq!(report["skipped"], 1, "{report:#}");
    assert_eq!(
        report["batches"].as_array().unwrap().len(),
        3,
        "five photos, two a batch"
    );
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 6, "{report:#}");
    let by_name = |name: &str| {
        files
            .iter()
            .find(|f| f["file"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} in {report:#}"))
            .clone()
    };
    assert_eq!(by_name("notes.txt")["error_code"], "not_an_image");
    let failed = by_name("cut.jpg");
    assert_eq!(failed["state"], "failed");
    assert!(failed["error_code"].is_string(), "{failed}");
    for f in files.iter().filter(|f| f["state"] == "completed") {
        let photo = app
            .get_json(&format!("/v1/photos/{}", f["photo_id"].as_str().unwrap()))
            .await;
        assert_eq!(photo["state"], "completed");
        let downloaded = f["downloaded"].as_array().unwrap();
        assert_eq!(
            downloaded.len(),
            photo["variants"].as_array().unwrap().len()
        );
        for path in downloaded {
            let bytes = std::fs::read(path.as_str().unwrap()).unwrap();
            assert!(bytes.starts_with(&[0xFF, 0xD8]), "a JPEG variant");
        }
    }

    // Run again: the same batches answer (Idempotency-Key), nothing is uploaded twice.
    let again = submit().await.unwrap();
    assert_eq!(again.status.code(), Some(2));
    let second: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(second["batches"], report["batches"]);
    let all = app.get_json("/v1/photos?limit=200").await;
    assert_eq!(all["photos"].as_array().unwrap().len(), 5, "no photo twice");
    std::fs::remove_dir_all(&dir).unwrap();
    app.finish().await;
}
