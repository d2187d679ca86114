//! Webhooks on the real service: a receiver (allow-listed) gets every subscribed event,
//! each signed as Standard Webhooks says, again after it answers 500; every attempt is
//! listed; a webhook on a private address that is not allow-listed is never called.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::{corpus_dir, error_code, read, TestApp, SETTLE_TIMEOUT};
use photoq::events::Event;
use serde_json::{json, Value};

fn jpeg(name: &str) -> (String, Vec<u8>) {
    (name.to_owned(), read(corpus_dir().join("jpg").join(name)))
}

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/webhooks"))
        .bearer_auth(&app.key)
        .json(&body)
        .send()
        .await
        .expect("create webhook")
}

/// Polls a webhook's deliveries until none is pending or in flight and there are `n`.
async fn settled_deliveries(app: &TestApp, hook: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let page = app
            .get_json(&format!("/v1/webhooks/{hook}/deliveries?limit=200"))
            .await;
        let list = page["deliveries"].as_array().expect("deliveries").clone();
        let open = list
            .iter()
            .any(|d| d["state"] == "pending" || d["state"] == "delivering");
        if list.len() >= n && !open {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not settle: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_listed_and_never_sent_to_a_private_address() {
    let receiver = Fixture::start().await;
    let app = TestApp::builder()
        .config(
            "[fetch]\nallow = [\"127.0.0.1\"]\n\
             [webhooks]\nbase_delay_ms = 50\nmax_delay_ms = 200\npoll_ms = 50",
        )
        .start()
        .await;

    // Bad webhooks are refused with every problem named.
    let res = create(&app, json!({"url": "http://10.1.2.3/hook"})).await;
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["problems"][0]["field"], "url");
    let res = create(
        &app,
        json!({"url": receiver.url("/hook/0/x"), "event_types": ["photo.done"]}),
    )
    .await;
    assert_eq!(res.status(), 422);
    let res = create(&app, json!({"url": "ftp://example.com/"})).await;
    assert_eq!(error_code(res).await, "invalid_items");

    // A receiver that fails its first two requests.
    let res = create(
        &app,
        json!({
            "url": receiver.url("/hook/2/main"),
            "event_types": ["photo.completed", "batch.completed"],
        }),
    )
    .await;
    assert_eq!(res.status(), 201);
    let hook: Value = res.json().await.expect("json");
    let secret = hook["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    let hook_id = hook["id"].as_str().expect("id").to_owned();
    let listed = app.get_json("/v1/webhooks").await;
    assert_eq!(listed["webhooks"][0]["id"], json!(hook_id));
    assert!(
        listed["webhooks"][0].get("secret").is_none(),
        "the secret is shown once"
    );

    // A webhook on a private address (127.0.0.2, not allow-listed) that got past the
    // creation check (say, the allow-list changed since): written directly.
    let pool = photoq::db::pool(&app.config.database).expect("pool");
    let mut conn = photoq::db::conn(&pool).await.expect("conn");
    let owner = photoq::auth::authenticate(&pool, &app.key)
        .await
        .expect("auth")
        .expect("owner")
        .owner;
    let private = photoq::db::webhooks::Webhook {
        id: uuid::Uuid::now_v7(),
        owner_id: owner,
        url: format!("http://127.0.0.2:{}/hook/0/private", receiver.port),
        event_types: vec!["batch.completed".into()],
        secret: photoq::webhooks::new_secret(),
        created_at: chrono::Utc::now(),
        deleted_at: None,
    };
    photoq::db::webhooks::insert(&mut conn, &private)
        .await
        .expect("insert");
    drop(conn);

    let batch = app
        .upload_ok(vec![jpeg("Canon_40D.jpg"), jpeg("Nikon_D70.jpg")])
        .await;
    let batch_id = batch["batch_id"].as_str().expect("batch").to_owned();
    app.wait_batch(&batch_id).await;

    // Two photos completed and the batch: three deliveries, all delivered in the end.
    let deliveries = settled_deliveries(&app, &hook_id, 3).await;
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    assert!(deliveries.iter().all(|d| d["state"] == "delivered"));
    let attempts: Vec<&Value> = deliveries
        .iter()
        .flat_map(|d| d["history"].as_array().expect("history"))
        .collect();
    assert_eq!(
        attempts.len(),
        5,
        "two failures, three successes: {attempts:?}"
    );
    assert_eq!(attempts.iter().filter(|a| a["status"] == 500).count(), 2);
    assert_eq!(attempts.iter().filter(|a| a["status"] == 204).count(), 3);

    // What the receiver got: every request signed with the secret; the events subscribed.
    let got = receiver.received();
    let main: Vec<_> = got.iter().filter(|r| r.path == "/hook/2/main").collect();
    assert_eq!(main.len(), 5);
    let verifier = standardwebhooks::Webhook::new(&secret).expect("secret");
    let mut delivered: BTreeMap<String, Event> = BTreeMap::new();
    for r in &main {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in r.headers.iter() {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()).expect("name"),
                reqwest::header::HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        verifier
            .verify(&r.body, &headers)
            .expect("signature verifies with the webhook's secret");
        let wrong = standardwebhooks::Webhook::new(&photoq::webhooks::new_secret()).expect("s");
        assert!(
            wrong.verify(&r.body, &headers).is_err(),
            "and with no other"
        );
        let event: Event = serde_json::from_slice(&r.body).expect("event body");
        let id = headers["webhook-id"].to_str().expect("id").to_owned();
        if let Some(earlier) = delivered.insert(id, event.clone()) {
            assert_eq!(
                earlier, event,
                "a retry sends the same event under the same id"
            );
        }
    }
    let mut kinds: Vec<&str> = delivered.values().map(|e| e.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["batch.completed", "photo.completed", "photo.completed"]
    );

    // The private address was never called; its delivery is dead, refused.
    let dead = settled_deliveries(&app, &private.id.to_string(), 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["state"], "dead");
    let error = dead[0]["last_error"].as_str().expect("error");
    assert!(error.contains("refused"), "{error}");
    assert!(
        got.iter().all(|r| !r.path.ends_with("/private")),
        "a private address is never called"
    );

    // Deleted: gone from the list, and a second delete is a 404.
    let del = |id: String| {
        app.client
            .delete(app.url(&format!("/v1/webhooks/{id}")))
            .bearer_auth(&app.key)
            .send()
    };
    assert_eq!(del(hook_id.clone()).await.expect("delete").status(), 204);
    assert_eq!(del(hook_id.clone()).await.expect("delete").status(), 404);
    assert_eq!(
        del(private.id.to_string()).await.expect("delete").status(),
        204
    );
    assert_eq!(app.get_json("/v1/webhooks").await["webhooks"], json!([]));
    app.finish().await;
    receiver.stop().await;
}
