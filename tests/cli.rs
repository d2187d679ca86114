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
