//! Live progress: the event log read over SSE, long-poll and stream tokens, across API
//! processes, through a Redis restart, and after retention pruned what a client asked for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::cluster::{self, Cluster};
use common::sse::Sse;
use common::{corpus_dir, read, PrivateRedis, TestApp};
use photoq::events::Event;
use serde_json::Value;

fn jpeg(name: &str) -> (String, Vec<u8>) {
    (name.to_owned(), read(corpus_dir().join("jpg").join(name)))
}

/// A JPEG cut short: accepted (its bytes start as a JPEG's), then fails to decode.
fn truncated() -> (String, Vec<u8>) {
    let mut bytes = read(corpus_dir().join("jpg").join("Canon_40D.jpg"));
    bytes.truncate(2048);
    ("cut.jpg".to_owned(), bytes)
}

/// Checks that `events` is a batch's whole story, told in order: ids increase, every photo
/// goes queued → processing → a final state with nothing after it, the batch starts once,
/// after its first photo starts, and ends last. Returns each photo's final state.
fn assert_story(events: &[Event], batch: &str) -> HashMap<String, String> {
    assert!(
        events.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase: {:?}",
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    let mut photos: HashMap<String, Vec<&str>> = HashMap::new();
    let mut started = None;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.batch_id.map(|b| b.to_string()).as_deref(), Some(batch));
        if let Some(photo) = e.photo_id {
            photos
                .entry(photo.to_string())
                .or_default()
                .push(e.kind.as_str());
        } else if e.kind == "batch.started" {
            assert!(started.is_none(), "one batch.started");
            started = Some(i);
        }
    }
    let first_processing = events.iter().position(|e| e.kind == "photo.processing");
    assert!(
        started > first_processing,
        "the batch starts with its first photo"
    );
    let last = events.last().expect("events");
    assert!(
        photoq::events::ends_batch(&last.kind),
        "ends with the batch: {}",
        last.kind
    );
    let mut finals = HashMap::new();
    for (photo, kinds) in photos {
        assert_eq!(kinds[0], "photo.queued", "{photo}: {kinds:?}");
        assert_eq!(kinds[1], "photo.processing", "{photo}: {kinds:?}");
        let end = *kinds.last().expect("kinds");
        assert!(
            ["photo.completed", "photo.failed", "photo.dead"].contains(&end),
            "{photo} ends finished: {kinds:?}"
        );
        let finishes = kinds.iter().filter(|k| **k == end).count();
        assert_eq!(finishes, 1, "{photo} finishes once: {kinds:?}");
        finals.insert(photo, end.trim_start_matches("photo.").to_owned());
    }
    finals
}

/// Reads an SSE stream until the server ends it.
async fn drain(sse: &mut Sse) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = sse.next_event().await {
        out.push(e);
    }
    out
}

/// Adds events from an SSE stream to `seen` until the last one ends a batch.
async fn read_until_a_batch_ends(sse: &mut Sse, seen: &mut Vec<Event>) {
    while !seen
        .last()
        .is_some_and(|e| photoq::events::ends_batch(&e.kind))
    {
        seen.push(sse.next_event().await.expect("event"));
    }
}

async fn long_poll(app: &TestApp, key: &str, path: &str) -> Value {
    let res = app.get_as(key, path).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.expect("json")
}

fn events_of(page: &Value) -> Vec<Event> {
    serde_json::from_value(page["events"].clone()).expect("events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stream_tells_the_whole_story_once_across_a_reconnect_and_then_ends() {
    let app = TestApp::start().await;
    let batch = app
        .upload_ok(vec![
            jpeg("Canon_40D.jpg"),
            jpeg("Nikon_D70.jpg"),
            jpeg("Pentax_K10D.jpg"),
            truncated(),
        ])
        .await;
    let id = batch["batch_id"].as_str().expect("batch id").to_owned();
    let url = app.url(&format!("/v1/batches/{id}/events"));

    // Three events, then the connection drops.
    let mut first = Sse::open(&app.client, &url, Some(&app.key), &[]).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(first.next_event().await.expect("event"));
    }
    drop(first);
    // Reconnecting with Last-Event-ID gets exactly the rest; the stream ends after the
    // batch's last event.
    let last = seen.last().expect("seen").id.to_string();
    let mut again = Sse::open(
        &app.client,
        &url,
        Some(&app.key),
        &[("Last-Event-ID", last)],
    )
    .await;
    seen.extend(drain(&mut again).await);

    let finals = assert_story(&seen, &id);
    assert_eq!(finals.len(), 4);
    assert_eq!(finals.values().filter(|s| *s == "completed").count(), 3);
    assert_eq!(finals.values().filter(|s| *s == "failed").count(), 1);
    let end = seen.last().expect("end");
    assert_eq!(end.kind, "batch.completed_with_errors");
    assert_eq!(end.data["completed"], 3);
    assert_eq!(end.data["failed"], 1);
    let failed = seen
        .iter()
        .find(|e| e.kind == "photo.failed")
        .expect("failed");
    assert!(failed.data["error_code"].is_string(), "{:?}", failed.data);

    // The log says the same, as a long-poll page, and the photos agree.
    let page = long_poll(
        &app,
        &app.key,
        &format!("/v1/batches/{id}/events?after=0&wait=0"),
    )
    .await;
    assert_eq!(events_of(&page), seen);
    for photo in app.batch_photos(&id).await {
        let pid = photo["id"].as_str().expect("id");
        assert_eq!(
            Some(photo["state"].as_str().expect("state")),
            finals.get(pid).map(String::as_str)
        );
    }
    // A finished batch's stream, opened again after its end, ends at once.
    let end_id = end.id.to_string();
    let mut after_end = Sse::open(
        &app.client,
        &url,
        Some(&app.key),
        &[("Last-Event-ID", end_id)],
    )
    .await;
    assert!(drain(&mut after_end).await.is_empty());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_tokens_and_resets() {
    let app = TestApp::start().await;
    let (_, other_key) = app.new_key("other").await;

    // Nothing yet: an empty page at once.
    let page = long_poll(&app, &app.key, "/v1/events?wait=0").await;
    assert_eq!(page["events"], serde_json::json!([]));
    assert_eq!(page["reset"], false);
    let head = page["last_event_id"].as_i64().expect("id");

    // A long-poll waiting for the next events answers when they come.
    let waiting = {
        let client = app.client.clone();
        let url = app.url(&format!("/v1/events?after={head}&wait=30"));
        let key = app.key.clone();
        tokio::spawn(async move {
            let res = client.get(url).bearer_auth(key).send().await.expect("poll");
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.expect("json")
        })
    };
    let batch = app.upload_ok(vec![jpeg("Canon_40D.jpg")]).await;
    let id = batch["batch_id"].as_str().expect("batch").to_owned();
    let answered = waiting.await.expect("long poll");
    let got = events_of(&answered);
    assert!(
        !got.is_empty(),
        "the long-poll answered with events: {answered}"
    );
    assert_eq!(got[0].id, head + 1);
    assert_eq!(got[0].kind, "photo.queued");
    app.wait_batch(&id).await;

    // Another key sees none of it.
    let theirs = long_poll(&app, &other_key, "/v1/events?after=0&wait=0").await;
    assert_eq!(theirs["events"], serde_json::json!([]));
    let res = app
        .get_as(&other_key, &format!("/v1/batches/{id}/events?wait=0"))
        .await;
    assert_eq!(res.status(), 404);

    // A stream token opens the event stream without a header, and nothing else.
    let res = app
        .client
        .post(app.url("/v1/events/tokens"))
        .bearer_auth(&app.key)
        .send()
        .await
        .expect("token");
    assert_eq!(res.status(), 201);
    let token: Value = res.json().await.expect("json");
    let token = token["token"].as_str().expect("token").to_owned();
    let mut sse = Sse::open(
        &app.client,
        &app.url(&format!("/v1/batches/{id}/events?token={token}")),
        None,
        &[],
    )
    .await;
    assert_story(&drain(&mut sse).await, &id);
    let res = app
        .get_public(&format!("/v1/batches/{id}?token={token}"))
        .await;
    assert_eq!(res.status(), 401, "a stream token is not an API key");
    let res = app.get_public("/v1/events?wait=0&token=pqs_0000").await;
    assert_eq!(res.status(), 401);
    // Expired: refused.
    let pool = photoq::db::pool(&app.config.database).expect("pool");
    let mut conn = photoq::db::conn(&pool).await.expect("conn");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE stream_tokens SET expires_at = now() - interval '1 second'"),
        &mut conn,
    )
    .await
    .expect("expire");
    let res = app
        .get_public(&format!("/v1/events?wait=0&token={token}"))
        .await;
    assert_eq!(res.status(), 401, "an expired token opens nothing");

    // Retention removes the events; a client resuming from one of them is told to reload.
    let all = long_poll(&app, &app.key, "/v1/events?after=0&wait=0").await;
    let last = all["last_event_id"].as_i64().expect("last");
    assert!(last > head);
    let removed = photoq::db::events::prune(&mut conn, chrono::Utc::now(), 100_000)
        .await
        .expect("prune");
    assert_eq!(removed as i64, last, "every event pruned");
    let page = long_poll(&app, &app.key, "/v1/events?after=1&wait=0").await;
    assert_eq!(page["reset"], true);
    assert_eq!(page["last_event_id"], last);
    assert_eq!(page["events"], serde_json::json!([]));
    let mut sse = Sse::open(
        &app.client,
        &app.url("/v1/events"),
        Some(&app.key),
        &[("Last-Event-ID", "1".into())],
    )
    .await;
    let reset = loop {
        let m = sse.next().await.expect("message");
        if !m.data.is_empty() {
            break m;
        }
    };
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, last.to_string());
    // Resuming from the newest id is no reset.
    let page = long_poll(&app, &app.key, &format!("/v1/events?after={last}&wait=0")).await;
    assert_eq!(page["reset"], false);

    // Bad cursors are refused clearly.
    let res = app.get("/v1/events?after=-1&wait=0").await;
    assert_eq!(res.status(), 400);
    let res = app.get("/v1/events?wait=100000").await;
    assert_eq!(res.status(), 400);
    drop(conn);
    app.finish().await;
}

/// Two `serve` processes and a worker, on a Redis of the test's own: a client following
/// node A gets the events of photos uploaded through node B, in order and once each; while
/// Redis is down it still gets them (read from the log), and after Redis comes back empty
/// the sequence goes on without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_every_node_in_order_and_survive_a_redis_restart() {
    let mut redis = PrivateRedis::new();
    redis.start().await;
    let mut cluster = Cluster::new("pqevents");
    cluster.redis_url = redis.url();
    cluster
        .set("PHOTOQ_RECONCILER_INTERVAL_SECS", 1)
        .set("PHOTOQ_RECONCILER_GRACE_SECS", 1)
        .set("PHOTOQ_REDIS_BLOCK_MS", 250);
    let key = cluster.key();
    let (_a, a) = cluster.serve().await;
    let (_b, b) = cluster.serve().await;
    let _worker = cluster.work(2);
    let through_b = cluster::Client::new(&b, &key);
    let http = common::http_client();

    let mut sse = Sse::open(&http, &format!("{a}/v1/events"), Some(&key), &[]).await;
    let first = through_b
        .upload(&[jpeg("Canon_40D.jpg"), jpeg("Nikon_D70.jpg")])
        .await;
    let first_id = first["batch_id"].as_str().expect("batch").to_owned();
    let mut seen = Vec::new();
    read_until_a_batch_ends(&mut sse, &mut seen).await;
    assert_story(&seen, &first_id);

    // Redis goes away: uploads are still accepted, and node A still tells of them.
    redis.stop();
    let second = through_b
        .upload(&[jpeg("Pentax_K10D.jpg"), jpeg("Canon_40D.jpg")])
        .await;
    let second_id = second["batch_id"].as_str().expect("batch").to_owned();
    let mut during = Vec::new();
    while during.len() < 2 {
        during.push(sse.next_event().await.expect("event while redis is down"));
    }
    assert!(
        during.iter().all(|e| e.kind == "photo.queued"),
        "{during:?}"
    );
    // Back, empty: the reconciler publishes the jobs again and the story goes on.
    redis.start().await;
    let mut rest = during;
    read_until_a_batch_ends(&mut sse, &mut rest).await;
    assert_story(&rest, &second_id);
    seen.extend(rest);

    // Dense: every id from the first on, once each, which is exactly the log.
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (ids[0]..ids[0] + ids.len() as i64).collect();
    assert_eq!(ids, expected, "every id once, in order");
    let log = through_b
        .get(&format!("/v1/events?after={}&wait=0", ids[0] - 1))
        .await;
    assert_eq!(events_of(&log), seen, "what A streamed is the log B reads");
    drop(sse);
    cluster.cleanup().await;
}

/// Event ids follow commit order, not the order statements ran in: a change committed
/// while an earlier one is still open is numbered first, the open one's follows once it
/// commits, and no id is skipped or repeated. The second writer does not wait for the
/// first (a 5 s statement timeout would fail it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_follow_commit_order_and_writers_do_not_wait_for_each_other() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

    let app = TestApp::builder().workers(None).start().await;
    let batch = app
        .upload_ok(vec![jpeg("Canon_40D.jpg"), jpeg("Nikon_D70.jpg")])
        .await;
    let photos: Vec<String> = batch["photos"]
        .as_array()
        .expect("photos")
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect();
    let (a, b) = (&photos[0], &photos[1]);
    let mut head = 0;
    while head < 2 {
        let page = long_poll(&app, &app.key, &format!("/v1/events?after={head}&wait=10")).await;
        head = page["last_event_id"].as_i64().expect("last_event_id");
    }
    assert_eq!(head, 2, "two photo.queued events");

    let url = &app.config.database.url;
    let mut first = AsyncPgConnection::establish(url).await.expect("connection");
    let mut second = AsyncPgConnection::establish(url).await.expect("connection");
    second
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .expect("timeout");
    // A new attempt in the same state is an event (as for a job taken over).
    let bump = |id: &str| format!("UPDATE photos SET attempts = attempts + 1 WHERE id = '{id}'");
    first
        .batch_execute(&format!("BEGIN; {}", bump(a)))
        .await
        .expect("first writer");
    second
        .batch_execute(&format!("BEGIN; {}; COMMIT", bump(b)))
        .await
        .expect("the second writer commits while the first is open");
    app.queue().changes_written();
    let page = long_poll(&app, &app.key, "/v1/events?after=2&wait=10").await;
    let events = events_of(&page);
    assert_eq!(events.len(), 1, "only the committed change: {events:?}");
    assert_eq!(events[0].id, 3);
    assert_eq!(
        events[0].photo_id.map(|p| p.to_string()).as_deref(),
        Some(b.as_str())
    );
    assert_eq!(events[0].data["attempts"], 1);

    first.batch_execute("COMMIT").await.expect("commit");
    app.queue().changes_written();
    let page = long_poll(&app, &app.key, "/v1/events?after=3&wait=10").await;
    let events = events_of(&page);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].id, 4,
        "numbered after the change that committed first"
    );
    assert_eq!(
        events[0].photo_id.map(|p| p.to_string()).as_deref(),
        Some(a.as_str())
    );
    app.finish().await;
}

/// The process leading the event sequencer is SIGKILLed between two batches: another
/// process takes over, and a client following on a third sees both batches' whole
/// stories, every id once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_sequences_events_when_the_leader_dies() {
    let cluster = Cluster::new("pqleader");
    let key = cluster.key();
    let leader = cluster.work(2);
    let first = cluster.wait_for_event_leader(None).await;
    assert_eq!(first, leader.pid());
    let (_serve, base) = cluster.serve().await;
    let _worker = cluster.work(2);
    let client = cluster::Client::new(&base, &key);
    let http = common::http_client();
    let mut sse = Sse::open(&http, &format!("{base}/v1/events"), Some(&key), &[]).await;

    let mut seen = Vec::new();
    let mut leader = Some(leader);
    for round in 0..2 {
        if round == 1 {
            leader.take().expect("leader").kill();
            let next = cluster.wait_for_event_leader(Some(first)).await;
            assert_ne!(next, first);
        }
        let batch = client
            .upload(&[jpeg("Canon_40D.jpg"), jpeg("Nikon_D70.jpg")])
            .await;
        let id = batch["batch_id"].as_str().expect("batch").to_owned();
        let mut story = Vec::new();
        read_until_a_batch_ends(&mut sse, &mut story).await;
        assert_story(&story, &id);
        seen.extend(story);
    }
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    let expected: Vec<i64> = (ids[0]..ids[0] + ids.len() as i64).collect();
    assert_eq!(ids, expected, "every id once, in order");
    drop(sse);
    cluster.cleanup().await;
}

mod ws {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(app: &TestApp, query: &str, key: Option<&str>) -> Socket {
        let url = format!("{}/v1/ws{query}", app.base.replacen("http", "ws", 1));
        let mut req = url.into_client_request().expect("request");
        if let Some(key) = key {
            req.headers_mut().insert(
                "Authorization",
                format!("Bearer {key}").parse().expect("header"),
            );
        }
        tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket")
            .0
    }

    async fn send(socket: &mut Socket, message: Value) {
        socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    /// The next JSON message (pings are answered by the library).
    async fn next(socket: &mut Socket) -> Value {
        loop {
            let m = tokio::time::timeout(common::sse::NEXT_TIMEOUT, socket.next())
                .await
                .expect("a message in time")
                .expect("socket open")
                .expect("message");
            if let Message::Text(text) = m {
                return serde_json::from_str(&text).expect("json");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_websocket_follows_batches_and_everything_and_resumes() {
        let app = TestApp::start().await;
        let mut socket = connect(&app, "", Some(&app.key)).await;

        // Malformed messages get an error, and the connection stays.
        send(&mut socket, json!({"type": "subscribe", "batch": "nope"})).await;
        assert_eq!(next(&mut socket).await["code"], "bad_message");
        send(
            &mut socket,
            json!({"type": "subscribe", "batch": uuid::Uuid::now_v7()}),
        )
        .await;
        assert_eq!(next(&mut socket).await["code"], "not_found");

        let batch = app
            .upload_ok(vec![jpeg("Canon_40D.jpg"), jpeg("Nikon_D70.jpg")])
            .await;
        let id = batch["batch_id"].as_str().expect("batch").to_owned();
        send(&mut socket, json!({"type": "subscribe", "batch": id})).await;
        let subscribed = next(&mut socket).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        let mut events = Vec::new();
        loop {
            let m = next(&mut socket).await;
            match m["type"].as_str() {
                Some("event") => {
                    assert_eq!(m["batch"], json!(id));
                    events
                        .push(serde_json::from_value::<Event>(m["event"].clone()).expect("event"));
                }
                Some("unsubscribed") => {
                    assert_eq!(m["reason"], "batch_finished");
                    break;
                }
                other => panic!("unexpected {other:?}: {m}"),
            }
        }
        assert_story(&events, &id);

        // All events, resumed from the batch's second event: the rest of it, in order.
        let after = events[1].id;
        send(&mut socket, json!({"type": "subscribe", "after": after})).await;
        assert_eq!(next(&mut socket).await["type"], "subscribed");
        let mut rest = Vec::new();
        while rest.len() < events.len() - 2 {
            let m = next(&mut socket).await;
            assert_eq!(m["type"], "event", "{m}");
            assert_eq!(m["batch"], Value::Null);
            rest.push(serde_json::from_value::<Event>(m["event"].clone()).expect("event"));
        }
        assert_eq!(rest, events[2..]);
        send(&mut socket, json!({"type": "unsubscribe"})).await;
        let m = next(&mut socket).await;
        assert_eq!(
            (m["type"].as_str(), m["reason"].as_str()),
            (Some("unsubscribed"), Some("requested"))
        );
        drop(socket);

        // A browser's way in: a stream token in the query.
        let res = app
            .client
            .post(app.url("/v1/events/tokens"))
            .bearer_auth(&app.key)
            .send()
            .await
            .expect("token");
        let token: Value = res.json().await.expect("json");
        let token = token["token"].as_str().expect("token");
        let mut socket = connect(&app, &format!("?token={token}"), None).await;
        send(
            &mut socket,
            json!({"type": "subscribe", "batch": id, "after": 0}),
        )
        .await;
        assert_eq!(next(&mut socket).await["type"], "subscribed");
        let first = next(&mut socket).await;
        assert_eq!(first["event"]["id"], json!(events[0].id));
        drop(socket);
        let refused = tokio_tungstenite::connect_async(format!(
            "{}/v1/ws?token=pqs_bogus",
            app.base.replacen("http", "ws", 1)
        ))
        .await;
        assert!(refused.is_err(), "a bad token opens no socket");
        app.finish().await;
    }
}
