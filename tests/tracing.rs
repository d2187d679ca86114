//! Traces, exported by a real `photoq all` process to an OTLP/HTTP receiver inside this
//! test: one trace per photo, from the span that accepted the upload, through the stream
//! entry, to the worker's attempt, its stages and its commit; and the log lines of the
//! attempt carry the photo's id and the same trace id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use common::cluster::{Client, Cluster};
use common::{corpus_dir, read};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

type Received = Arc<Mutex<Vec<Span>>>;

async fn traces(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = received.lock().expect("lock");
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for s in scope.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = kv
                            .value
                            .as_ref()
                            .and_then(|v| v.value.as_ref())
                            .map(|v| format!("{v:?}"))
                            .unwrap_or_default();
                        (kv.key.clone(), value)
                    })
                    .collect();
                spans.push(Span {
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    attributes,
                });
            }
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .finish()
}

/// The spans received so far once `ready` accepts them, or a panic after [`WAIT`].
async fn spans_when(received: &Received, what: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = received.lock().expect("lock").clone();
        if ready(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "{what}: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_one_trace_from_upload_to_commit() {
    let received: Received = Arc::default();
    let data = web::Data::new(received.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(traces))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("receiver binds");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);

    let cluster = Cluster::new("pqtrace");
    let key = cluster.key();
    let api_port = common::free_port();
    let log = std::env::temp_dir().join(format!("{}.log", uuid::Uuid::new_v4()));
    let proc = cluster.spawn_logging(
        &["all", "--concurrency", "2"],
        &[
            ("PHOTOQ_BIND", format!("127.0.0.1:{api_port}")),
            (
                "PHOTOQ_TELEMETRY_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            // Spans leave in batches every 200 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ],
        &log,
    );
    let base = format!("http://127.0.0.1:{api_port}");
    common::cluster::wait_until_up(&base).await;
    let client = Client::new(&base, &key);
    let batch = client
        .upload(&[(
            "a.jpg".to_owned(),
            read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )])
        .await;
    let photo_id = batch["photos"][0]["id"]
        .as_str()
        .expect("photo id")
        .to_owned();
    client
        .wait_batch(batch["batch_id"].as_str().expect("batch id"))
        .await;

    let stages = ["attempt", "decode", "resize", "encode", "store", "commit"];
    let spans = spans_when(&received, "every stage exported", |spans| {
        spans.iter().any(|s| s.name == "photo.accepted")
            && stages.iter().all(|st| spans.iter().any(|s| s.name == *st))
    })
    .await;
    let root = spans
        .iter()
        .find(|s| s.name == "photo.accepted")
        .expect("root");
    assert_eq!(
        root.parent_span_id, "",
        "the accepted photo starts its trace"
    );
    assert!(
        root.attributes["photo_id"].contains(&photo_id),
        "{:?}",
        root.attributes
    );
    let trace = &root.trace_id;
    let attempt = spans.iter().find(|s| s.name == "attempt").expect("attempt");
    assert_eq!(
        &attempt.trace_id, trace,
        "the worker continues the upload's trace"
    );
    assert_eq!(
        attempt.parent_span_id, root.span_id,
        "through the stream entry, the attempt is a child of the accepted photo"
    );
    for stage in ["decode", "resize", "encode", "store", "commit"] {
        let span = spans.iter().find(|s| s.name == stage).expect("stage");
        assert_eq!(&span.trace_id, trace, "{stage}");
        assert_eq!(
            span.parent_span_id, attempt.span_id,
            "{stage} is the attempt's"
        );
    }
    // Two variants: resized and encoded twice.
    assert_eq!(spans.iter().filter(|s| s.name == "resize").count(), 2);

    // The attempt's log lines carry the photo's id and the same trace id.
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let done = text.lines().find(|l| l.contains("job done"));
        if let Some(line) = done {
            assert!(
                line.contains(&format!("photo_id={photo_id}")),
                "{photo_id}: {line}"
            );
            assert!(
                line.contains(&format!("trace_id={trace}")),
                "{trace}: {line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no `job done` line: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = proc.terminate().await;
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_file(&log);
    handle.stop(false).await;
    cluster.cleanup().await;
}
