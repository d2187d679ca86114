//! Delivery guarantees, in process against the real services: retries with backoff, dead
//! letters and redrive, idempotent uploads, and Redis outages (on a Redis server of the
//! test's own, so stopping it disturbs no other test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{corpus_dir, error_code, read, PrivateRedis, TestApp, SETTLE_TIMEOUT};
use serde_json::Value;

const POLL: Duration = Duration::from_millis(50);

/// A 12 MP camera photo: its image work takes far longer than a few milliseconds.
fn big() -> Vec<u8> {
    read(corpus_dir().join("jpg/tests/42_IndexError.jpg"))
}

/// A 100 x 78 photo: its image work takes a millisecond or so.
fn small() -> Vec<u8> {
    read(corpus_dir().join("jpg/Kodak_CX7530.jpg"))
}

/// Polls a photo until `done` holds for it.
async fn wait_photo(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let photo = app.get_json(&format!("/v1/photos/{id}")).await;
        if done(&photo) {
            return photo;
        }
        assert!(Instant::now() < deadline, "photo never got there: {photo}");
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `photoq dlq ARGS` against the app's database and Redis; returns its output.
fn dlq(app: &TestApp, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_photoq"))
        .arg("dlq")
        .args(args)
        .env("PHOTOQ_DATABASE_URL", &app.config.database.url)
        .env("PHOTOQ_REDIS_URL", &app.config.redis.url)
        .env("PHOTOQ_REDIS_PREFIX", &app.config.redis.prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The outcome of each attempt in a photo's history, oldest first.
fn outcomes(photo: &Value) -> Vec<&str> {
    photo["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_back_off_then_dead_letter_and_redrive_after_a_fix() {
    let retry = "[retry]\nmax_attempts = 3\nbase_delay_ms = 200\nmax_delay_ms = 400\n";
    let app = TestApp::builder()
        .config(&format!(
            "{retry}[worker]\njob_timeout_ms = 30\nretry_poll_ms = 20"
        ))
        .start()
        .await;
    let body = app
        .upload_ok(vec![
            ("poison.jpg".into(), big()),
            ("a.jpg".into(), small()),
            ("b.jpg".into(), small()),
        ])
        .await;
    let poison = body["photos"][0]["id"].as_str().unwrap().to_owned();
    let batch = app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["dead"], 1, "{batch}");
    assert_eq!(
        batch["completed"], 2,
        "the rest of the batch is unaffected: {batch}"
    );

    let photo = app.get_json(&format!("/v1/photos/{poison}")).await;
    assert_eq!(photo["state"], "dead");
    assert_eq!(photo["attempts"], 3);
    let error = photo["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 3 attempts") && error.contains("longer than"),
        "{error}"
    );
    let history = photo["history"].as_array().unwrap();
    assert_eq!(outcomes(&photo), ["retry", "retry", "dead"]);
    for (n, a) in history.iter().enumerate() {
        assert_eq!(a["attempt"], n as u64 + 1);
        assert!(a["duration_ms"].as_i64().unwrap() >= 0);
        assert!(a["error"].as_str().unwrap().contains("longer than"));
    }
    // Backoff: at least half of base × 2^(n-1) between an attempt's end and the next start.
    for (n, pair) in history.windows(2).enumerate() {
        let gap = time(&pair[1]["started_at"]) - time(&pair[0]["finished_at"]);
        let min = 200 * (1 << n) / 2;
        assert!(
            gap.num_milliseconds() >= min,
            "gap {gap} after attempt {}",
            n + 1
        );
    }

    let dead = app.get_json("/v1/dead-letters").await;
    let dead = dead["photos"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], poison.as_str());
    assert_eq!(app.queue().dead_letters().await.unwrap(), 1);
    // Operators see it from the command line too, and can redrive it from there: without a
    // fix it dies again, after a fresh budget of attempts.
    let listed = dlq(&app, &["list"]);
    assert!(
        listed.contains(&poison) && listed.contains("gave up"),
        "{listed}"
    );
    assert!(dlq(&app, &["redrive", "--photo", &poison]).contains("redriven 1"));
    let photo = wait_photo(&app, &poison, |p| {
        p["state"] == "dead" && p["history"].as_array().is_some_and(|h| h.len() == 6)
    })
    .await;
    assert_eq!(photo["attempts"], 3);

    // Retrying a completed photo is a conflict.
    let other = body["photos"][1]["id"].as_str().unwrap();
    let res = app
        .client
        .post(app.url(&format!("/v1/photos/{other}/retry")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(error_code(res).await, "conflict");

    // After the fix (a realistic timeout), a redrive completes it.
    let app = app.restart(retry).await;
    let res = app
        .client
        .post(app.url("/v1/dead-letters/redrive"))
        .bearer_auth(&app.key)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let redriven: Value = res.json().await.unwrap();
    assert_eq!(redriven["redriven"], 1);
    let photo = wait_photo(&app, &poison, |p| p["state"] == "completed").await;
    assert_eq!(
        photo["attempts"], 1,
        "a redrive starts a fresh attempt budget"
    );
    assert_eq!(
        outcomes(&photo),
        [
            "retry",
            "retry",
            "dead",
            "retry",
            "retry",
            "dead",
            "completed"
        ]
    );
    assert!(app.get_json("/v1/dead-letters").await["photos"]
        .as_array()
        .unwrap()
        .is_empty());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_is_retried_and_completes_once_storage_recovers() {
    let app = TestApp::builder()
        .config("[retry]\nbase_delay_ms = 300\nmax_delay_ms = 300\n[worker]\nretry_poll_ms = 20")
        .start()
        .await;
    // Variants cannot be written while a plain file stands where their directory goes.
    let blocker = app.config.storage.root.join("variants");
    std::fs::create_dir_all(&app.config.storage.root).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();

    let body = app.upload_ok(vec![("a.jpg".into(), small())]).await;
    let id = body["photos"][0]["id"].as_str().unwrap().to_owned();
    let waiting = wait_photo(&app, &id, |p| p["state"] == "queued" && p["attempts"] == 1).await;
    assert!(waiting["next_attempt_at"].is_string(), "{waiting}");
    assert!(!waiting["error"].as_str().unwrap().is_empty());

    std::fs::remove_file(&blocker).unwrap();
    let photo = wait_photo(&app, &id, |p| p["state"] == "completed").await;
    assert!(photo["attempts"].as_i64().unwrap() >= 2);
    assert!(photo["error"].is_null());
    let outcomes = outcomes(&photo);
    assert_eq!(outcomes.last(), Some(&"completed"));
    assert!(
        outcomes[..outcomes.len() - 1].iter().all(|o| *o == "retry"),
        "{outcomes:?}"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_answer() {
    let app = TestApp::start().await;
    let send = |key: &'static str| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(small()).file_name("a.jpg"),
        );
        app.client
            .post(app.url("/v1/photos"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", key)
            .multipart(form)
            .send()
    };
    let first: Value = send("order-1").await.unwrap().json().await.unwrap();
    let again = send("order-1").await.unwrap();
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "the retry gets the first answer");

    // Concurrent duplicates: one batch, one answer.
    let (a, b) = tokio::join!(send("order-2"), send("order-2"));
    let (a, b): (Value, Value) = (
        a.unwrap().json().await.unwrap(),
        b.unwrap().json().await.unwrap(),
    );
    assert_eq!(a["batch_id"], b["batch_id"]);

    let other: Value = send("order-3").await.unwrap().json().await.unwrap();
    assert_ne!(other["batch_id"], first["batch_id"]);
    let all = app.get_json("/v1/photos").await;
    assert_eq!(
        all["photos"].as_array().unwrap().len(),
        3,
        "three keys, three photos"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_survive_redis_outages_and_lost_data() {
    let mut redis = PrivateRedis::new();
    let app = TestApp::builder()
        .config(&format!(
            "[redis]\nurl = \"{}\"\nresponse_timeout_secs = 1\nblock_ms = 200\n\
             [reconciler]\ninterval_secs = 1\ngrace_secs = 1\n",
            redis.url()
        ))
        .redis_url(&redis.url())
        .start()
        .await;

    // Redis down from the start: uploads are accepted, readiness says so.
    let down = app
        .upload_ok(vec![("a.jpg".into(), small()), ("b.jpg".into(), small())])
        .await;
    let ready = app.get_public("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        (ready["database"].as_str(), ready["redis"].as_str()),
        (Some("up"), Some("down"))
    );
    // Ready all the same for a load balancer that knows uploads go on without Redis.
    let ready = app.get_public("/readyz?redis=optional").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["redis"].as_str()),
        (Some("ready"), Some("down"))
    );

    // Redis comes up: the reconciler publishes, the workers connect and finish.
    redis.start().await;
    let batch = app.wait_batch(down["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["completed"], 2, "{batch}");

    // Redis dies and comes back empty in the middle of a run, uploads continuing.
    let before = app
        .upload_ok((0..6).map(|i| (format!("{i}.jpg"), small())).collect())
        .await;
    redis.stop();
    let during = app.upload_ok(vec![("c.jpg".into(), small())]).await;
    redis.start().await;
    for b in [&before, &during] {
        let batch = app.wait_batch(b["batch_id"].as_str().unwrap()).await;
        assert_eq!(batch["state"], "completed", "{batch}");
    }
    // Every job was published once per need: nothing is left on the stream's pending list.
    app.finish().await;
    drop(redis);
}
