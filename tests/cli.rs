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
fn render_makes_the_configured_variants_of_local_files() {
    let out = std::env::temp_dir().join(format!("pqrender_{}", uuid::Uuid::new_v4().simple()));
    let config = out.with_extension("toml");
    std::fs::write(
        &config,
        "[variants.square]\nwidth = 100\nheight = 100\nfit = \"cover\"\nformat = \"webp\"\n",
    )
    .unwrap();
    let good = corpus_dir().join("jpg/gps/DSCN0010.jpg");
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

    let ok = run(&[&good]);
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

    // A broken file is reported and fails the run; the good one is still rendered.
    std::fs::remove_dir_all(&out).unwrap();
    let mixed = run(&[&bad, &good]);
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("corrupted.jpg"));
    assert!(out.join("DSCN0010_square.webp").exists());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&config).unwrap();
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
