//! The OpenAPI document tells the truth: real responses of every documented route, success
//! and error alike, have a documented status and content type, and their JSON bodies are
//! valid against the documented schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{corpus_dir, read, TestApp};
use serde_json::{json, Value};
use uuid::Uuid;

/// The document and the operations seen so far.
struct Contract {
    spec: Value,
    components: Value,
    seen: BTreeSet<(String, String)>,
}

/// An OpenAPI 3.0 schema as JSON Schema: `nullable` becomes a `null` type.
fn json_schema(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(k, _)| *k != "nullable")
                .map(|(k, v)| (k.clone(), json_schema(v)))
                .collect();
            if map.get("nullable") != Some(&Value::Bool(true)) {
                return Value::Object(out);
            }
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                values.push(Value::Null);
            }
            match out.get("type").cloned() {
                Some(Value::String(t)) => {
                    out.insert("type".into(), json!([t, "null"]));
                    Value::Object(out)
                }
                _ => json!({"anyOf": [Value::Object(out), {"type": "null"}]}),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

impl Contract {
    async fn fetch(app: &TestApp) -> Self {
        let spec: Value = app.get_public("/openapi.json").await.json().await.unwrap();
        let components = json_schema(&spec["components"]);
        Contract {
            spec,
            components,
            seen: BTreeSet::new(),
        }
    }

    /// Checks one real response of `method` on the route `template`; returns its status and
    /// its JSON body (`null` for other bodies).
    async fn check(
        &mut self,
        method: &str,
        template: &str,
        res: reqwest::Response,
    ) -> (u16, Value) {
        let status = res.status().as_u16();
        let content_type = res.headers().get("content-type").map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_owned()
        });
        let body = res.bytes().await.unwrap();
        let what = format!("{} {template} → {status}", method.to_uppercase());
        let op = &self.spec["paths"][template][method];
        assert!(op.is_object(), "{what}: route not documented");
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{what}: status not documented (documented: {:?})",
            op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>()
        );
        self.seen.insert((method.to_owned(), template.to_owned()));
        let Some(content) = documented.get("content").and_then(Value::as_object) else {
            assert!(body.is_empty(), "{what}: body where none is documented");
            return (status, Value::Null);
        };
        let content_type = content_type.unwrap_or_else(|| panic!("{what}: no content type"));
        let media = content.get(&content_type).unwrap_or_else(|| {
            panic!(
                "{what}: content type {content_type} not documented ({:?})",
                content.keys().collect::<Vec<_>>()
            )
        });
        if content_type == "application/json" {
            let instance: Value = serde_json::from_slice(&body).unwrap();
            let mut schema = json_schema(&media["schema"]);
            schema["components"] = self.components.clone();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&instance)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{what}: {errors:#?}\n{instance}");
            (status, instance)
        } else {
            assert!(!body.is_empty(), "{what}: empty {content_type} body");
            (status, Value::Null)
        }
    }

    /// Every documented operation was exercised.
    fn assert_all_seen(&self) {
        let mut documented = BTreeSet::new();
        for (path, item) in self.spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let missed: Vec<_> = documented.difference(&self.seen).collect();
        assert!(missed.is_empty(), "routes never exercised: {missed:?}");
    }
}

impl Contract {
    /// GETs each path with the app's key and checks the answer against the route
    /// `template`: documented, and with the expected status.
    async fn check_gets(&mut self, app: &TestApp, cases: &[(String, &str, u16)]) {
        for (path, template, status) in cases {
            let res = app
                .client
                .get(app.url(path))
                .bearer_auth(&app.key)
                .send()
                .await
                .unwrap();
            assert_eq!(self.check("get", template, res).await.0, *status, "{path}");
        }
    }
}

fn form(files: &[(&str, &str, Vec<u8>)]) -> reqwest::multipart::Form {
    files.iter().fold(
        reqwest::multipart::Form::new(),
        |f, (field, name, bytes)| {
            f.part(
                field.to_string(),
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            )
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented() {
    let fixture = common::fixture::Fixture::start().await;
    let app = TestApp::builder()
        .config(
            "[upload]\nmax_files = 2\n[import]\nmax_products = 2\n[fetch]\nallow = [\"127.0.0.1\"]",
        )
        .start()
        .await;
    let mut contract = Contract::fetch(&app).await;
    let photo = read(corpus_dir().join("jpg/Canon_40D.jpg"));
    let broken = photo[..photo.len() / 3].to_vec();
    let post = |path: &str| app.client.post(app.url(path)).bearer_auth(&app.key);
    let get = |path: &str| app.client.get(app.url(path)).bearer_auth(&app.key);
    let nobody = Uuid::now_v7();

    for path in ["/healthz", "/readyz"] {
        contract
            .check("get", path, app.get_public(path).await)
            .await;
    }

    // Uploads: accepted, refused in each documented way.
    let upload = "/v1/photos";
    let res = post(upload)
        .multipart(form(&[
            ("file", "a.jpg", photo.clone()),
            ("file", "b.jpg", broken),
        ]))
        .send()
        .await
        .unwrap();
    let (status, accepted) = contract.check("post", upload, res).await;
    assert_eq!(status, 202);
    let refusals = [
        (
            form(&[("file", "x.jpg", b"not an image at all".to_vec())]),
            415,
        ),
        (form(&[("other", "x.jpg", photo.clone())]), 400),
        (
            form(&[
                ("file", "1.jpg", photo.clone()),
                ("file", "2.jpg", photo.clone()),
                ("file", "3.jpg", photo.clone()),
            ]),
            413,
        ),
    ];
    for (body, status) in refusals {
        let res = post(upload).multipart(body).send().await.unwrap();
        assert_eq!(contract.check("post", upload, res).await.0, status);
    }
    let res = app.client.post(app.url(upload)).send().await.unwrap();
    assert_eq!(contract.check("post", upload, res).await.0, 401);

    let batch = accepted["batch_id"].as_str().unwrap().to_owned();
    let good = accepted["photos"][0]["id"].as_str().unwrap().to_owned();
    let bad = accepted["photos"][1]["id"].as_str().unwrap().to_owned();
    app.wait_batch(&batch).await;

    // Reading.
    let cases = [
        ("/v1/photos".to_owned(), "/v1/photos", 200),
        ("/v1/photos?limit=0".into(), "/v1/photos", 400),
        (format!("/v1/photos?batch={nobody}"), "/v1/photos", 404),
        (
            format!("/v1/photos?batch={batch}&state=completed&limit=1"),
            "/v1/photos",
            200,
        ),
        (format!("/v1/photos/{good}"), "/v1/photos/{id}", 200),
        (format!("/v1/photos/{bad}"), "/v1/photos/{id}", 200),
        (format!("/v1/photos/{nobody}"), "/v1/photos/{id}", 404),
        ("/v1/photos/nope".into(), "/v1/photos/{id}", 400),
        (
            format!("/v1/photos/{good}/variants/thumbnail"),
            "/v1/photos/{id}/variants/{name}",
            200,
        ),
        (
            format!("/v1/photos/{good}/variants/poster"),
            "/v1/photos/{id}/variants/{name}",
            404,
        ),
        (
            format!("/v1/photos/{good}/original"),
            "/v1/photos/{id}/original",
            200,
        ),
        (format!("/v1/batches/{batch}"), "/v1/batches/{id}", 200),
        (format!("/v1/batches/{nobody}"), "/v1/batches/{id}", 404),
        ("/v1/batches?limit=1".into(), "/v1/batches", 200),
        ("/v1/batches?cursor=nope".into(), "/v1/batches", 400),
        ("/v1/me".into(), "/v1/me", 200),
        ("/v1/usage".into(), "/v1/usage", 200),
        ("/v1/stats".into(), "/v1/stats", 200),
        // An operator route with a client key.
        ("/v1/operator/overview".into(), "/v1/operator/overview", 403),
        ("/v1/dead-letters".into(), "/v1/dead-letters", 200),
        ("/v1/dead-letters?limit=999".into(), "/v1/dead-letters", 400),
    ];
    contract.check_gets(&app, &cases).await;
    let variant = format!("/v1/photos/{good}/variants/thumbnail");
    let etag = get(&variant).send().await.unwrap().headers()["etag"].clone();
    let res = get(&variant)
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    let template = "/v1/photos/{id}/variants/{name}";
    assert_eq!(contract.check("get", template, res).await.0, 304);

    // Retries and redrives.
    let retry = "/v1/photos/{id}/retry";
    let res = post(&format!("/v1/photos/{good}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", retry, res).await.0, 409);
    let res = post(&format!("/v1/photos/{bad}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", retry, res).await.0, 202);
    let res = post(&format!("/v1/photos/{nobody}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", retry, res).await.0, 404);
    // Reprocessing: a completed photo and the batch taken, the retried photo refused.
    let reprocess = "/v1/photos/{id}/reprocess";
    let cases = [
        (format!("/v1/photos/{good}/reprocess?force=true"), 202),
        (format!("/v1/photos/{bad}/reprocess"), 409),
        (format!("/v1/photos/{nobody}/reprocess"), 404),
        (format!("/v1/photos/{good}/reprocess?force=maybe"), 400),
    ];
    let mut run = Value::Null;
    for (path, status) in cases {
        let res = post(&path).send().await.unwrap();
        let (got, body) = contract.check("post", reprocess, res).await;
        assert_eq!(got, status, "{path}: {body}");
        if status == 202 {
            run = body;
        }
    }
    for (path, status) in [
        (format!("/v1/batches/{batch}/reprocess"), 202),
        (format!("/v1/batches/{nobody}/reprocess"), 404),
    ] {
        let res = post(&path).send().await.unwrap();
        let template = "/v1/batches/{id}/reprocess";
        assert_eq!(
            contract.check("post", template, res).await.0,
            status,
            "{path}"
        );
    }
    let run = run["id"].as_str().unwrap();
    let cases = [
        (format!("/v1/reprocess/{run}"), "/v1/reprocess/{id}", 200),
        (format!("/v1/reprocess/{nobody}"), "/v1/reprocess/{id}", 404),
    ];
    contract.check_gets(&app, &cases).await;

    let redrive = "/v1/dead-letters/redrive";
    let res = post(redrive).json(&json!({})).send().await.unwrap();
    assert_eq!(contract.check("post", redrive, res).await.0, 202);
    let res = post(redrive)
        .json(&json!({"bach": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", redrive, res).await.0, 400);
    let res = post(redrive)
        .json(&json!({ "batch": nobody }))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", redrive, res).await.0, 404);

    // Imports: JSON and CSV accepted, refused in each documented way, then read back.
    let imports = "/v1/imports";
    let image = fixture.url("/img/Canon_40D.jpg");
    let gone = fixture.url("/status/404");
    let body = json!({"products": [
        {"external_id": "p-1", "name": "Mug", "images": [image]},
        {"external_id": "p-2", "images": [gone]},
    ]});
    let res = post(imports).json(&body).send().await.unwrap();
    let (status, import) = contract.check("post", imports, res).await;
    assert_eq!(status, 202, "{import}");
    let csv = format!("external_id,name,images\np-3,,{image}\n");
    let res = post(imports)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", imports, res).await.0, 202);
    let too_many = json!({"products": [
        {"external_id": "a", "images": [image]},
        {"external_id": "b", "images": [image]},
        {"external_id": "c", "images": [image]},
    ]});
    let invalid = json!({"products": [{"external_id": "", "images": ["http://10.0.0.1/x.jpg"]}]});
    for (body, status) in [
        (too_many, 413),
        (invalid, 422),
        (json!({"products": 1}), 400),
    ] {
        let res = post(imports).json(&body).send().await.unwrap();
        assert_eq!(contract.check("post", imports, res).await.0, status);
    }
    let res = post(imports)
        .header("Idempotency-Key", "first-an-upload")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", imports, res).await.0, 202);
    let res = post(upload)
        .header("Idempotency-Key", "first-an-upload")
        .multipart(form(&[("file", "a.jpg", photo.clone())]))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", upload, res).await.0, 409);
    let import_id = import["import_id"].as_str().unwrap().to_owned();
    let product = import["products"][0]["id"].as_str().unwrap().to_owned();
    app.wait_import(&import_id).await;
    let cases = [
        (format!("/v1/imports/{import_id}"), "/v1/imports/{id}", 200),
        (format!("/v1/imports/{nobody}"), "/v1/imports/{id}", 404),
        (format!("/v1/products/{product}"), "/v1/products/{id}", 200),
        (format!("/v1/products/{nobody}"), "/v1/products/{id}", 404),
        (
            format!("/v1/products?import={import_id}"),
            "/v1/products",
            200,
        ),
        (
            "/v1/products?state=process_error&limit=1".into(),
            "/v1/products",
            200,
        ),
        ("/v1/products?state=done".into(), "/v1/products", 400),
        (format!("/v1/products?import={nobody}"), "/v1/products", 404),
    ];
    contract.check_gets(&app, &cases).await;

    // Events: long-poll pages (their events' types checked against the documented list), a
    // finished import's SSE stream (which ends), tokens, and the WebSocket route refusing a
    // plain GET.
    let documented = contract.spec.to_string();
    for (kind, _) in photoq::events::EVENT_TYPES {
        assert!(
            documented.contains(&format!("\"{kind}\"")),
            "{kind} documented"
        );
    }
    let cases = [
        ("/v1/events?after=0&wait=0".to_owned(), "/v1/events", 200),
        ("/v1/events?after=-1".into(), "/v1/events", 400),
        ("/v1/events?wait=100000".into(), "/v1/events", 400),
        (
            format!("/v1/batches/{import_id}/events?wait=0"),
            "/v1/batches/{id}/events",
            200,
        ),
        (
            format!("/v1/batches/{nobody}/events?wait=0"),
            "/v1/batches/{id}/events",
            404,
        ),
        ("/v1/ws".into(), "/v1/ws", 400),
    ];
    contract.check_gets(&app, &cases).await;
    let res = app
        .client
        .get(app.url(&format!("/v1/batches/{import_id}/events")))
        .bearer_auth(&app.key)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let template = "/v1/batches/{id}/events";
    assert_eq!(contract.check("get", template, res).await.0, 200);
    let res = app.get_public("/v1/events?wait=0").await;
    assert_eq!(contract.check("get", "/v1/events", res).await.0, 401);
    let res = app.get_public("/v1/ws?token=pqs_nothing").await;
    assert_eq!(contract.check("get", "/v1/ws", res).await.0, 401);
    let tokens = "/v1/events/tokens";
    let res = post(tokens).send().await.unwrap();
    assert_eq!(contract.check("post", tokens, res).await.0, 201);
    let res = app.client.post(app.url(tokens)).send().await.unwrap();
    assert_eq!(contract.check("post", tokens, res).await.0, 401);

    // Webhooks.
    let hooks = "/v1/webhooks";
    let res = post(hooks)
        .json(
            &json!({"url": "https://hooks.example.com/photoq", "event_types": ["batch.completed"]}),
        )
        .send()
        .await
        .unwrap();
    let (status, hook) = contract.check("post", hooks, res).await;
    assert_eq!(status, 201);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let res = post(hooks)
        .json(&json!({"url": "http://169.254.169.254/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", hooks, res).await.0, 422);
    let res = post(hooks)
        .json(&json!({"address": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", hooks, res).await.0, 400);
    let cases = [
        (hooks.to_owned(), hooks, 200),
        ("/v1/limits".into(), "/v1/limits", 200),
        (
            format!("/v1/webhooks/{hook_id}/deliveries"),
            "/v1/webhooks/{id}/deliveries",
            200,
        ),
        (
            format!("/v1/webhooks/{nobody}/deliveries"),
            "/v1/webhooks/{id}/deliveries",
            404,
        ),
    ];
    contract.check_gets(&app, &cases).await;
    let pool = photoq::db::pool(&app.config.database).unwrap();
    let (_, operator) = photoq::auth::create_key(&pool, "ops", photoq::auth::Scopes::OPERATOR)
        .await
        .unwrap();
    let res = app
        .client
        .get(app.url("/v1/operator/overview"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    let (status, overview) = contract.check("get", "/v1/operator/overview", res).await;
    assert_eq!(status, 200);
    assert_eq!(overview["lanes"].as_array().unwrap().len(), 2, "{overview}");
    for status in [204, 404] {
        let res = app
            .client
            .delete(app.url(&format!("/v1/webhooks/{hook_id}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            contract.check("delete", "/v1/webhooks/{id}", res).await.0,
            status
        );
    }

    // Keys: a reader made by the app's key, refused what it may not do.
    let keys = "/v1/keys";
    let res = post(keys)
        .json(&json!({"name": "gallery", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    let (status, made) = contract.check("post", keys, res).await;
    assert_eq!(status, 201);
    let reader = made["key"].as_str().unwrap().to_owned();
    let reader_id = made["details"]["id"].as_str().unwrap().to_owned();
    for (body, status) in [
        (json!({"name": "x", "scopes": ["root"]}), 422),
        (json!({"label": "x"}), 400),
    ] {
        let res = post(keys).json(&body).send().await.unwrap();
        assert_eq!(contract.check("post", keys, res).await.0, status);
    }
    let res = app
        .client
        .post(app.url(keys))
        .bearer_auth(&reader)
        .json(&json!({"name": "more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.check("post", keys, res).await.0, 403);
    contract
        .check_gets(&app, &[(keys.to_owned(), keys, 200)])
        .await;
    for status in [204, 404] {
        let res = app
            .client
            .delete(app.url(&format!("/v1/keys/{reader_id}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            contract.check("delete", "/v1/keys/{id}", res).await.0,
            status
        );
    }

    // Taking data out: cancel and delete the import, the batch, a photo; then nothing.
    let send = |method: reqwest::Method, path: String| {
        app.client
            .request(method, app.url(&path))
            .bearer_auth(&app.key)
            .send()
    };
    for (id, status) in [(import_id.clone(), 200), (nobody.to_string(), 404)] {
        let res = send(reqwest::Method::POST, format!("/v1/imports/{id}/cancel"))
            .await
            .unwrap();
        let (got, body) = contract.check("post", "/v1/imports/{id}/cancel", res).await;
        assert_eq!(got, status, "{body}");
    }
    for (id, status) in [(batch.clone(), 200), (nobody.to_string(), 404)] {
        let res = send(reqwest::Method::POST, format!("/v1/batches/{id}/cancel"))
            .await
            .unwrap();
        assert_eq!(
            contract
                .check("post", "/v1/batches/{id}/cancel", res)
                .await
                .0,
            status
        );
    }
    let deletions = [
        ("/v1/photos/{id}", good.clone()),
        ("/v1/batches/{id}", batch.clone()),
        ("/v1/imports/{id}", import_id.clone()),
    ];
    for (template, id) in deletions {
        for (id, status) in [(id, 204), (nobody.to_string(), 404)] {
            let res = send(reqwest::Method::DELETE, template.replace("{id}", &id))
                .await
                .unwrap();
            assert_eq!(
                contract.check("delete", template, res).await.0,
                status,
                "{template}"
            );
        }
    }

    contract.assert_all_seen();
    app.finish().await;
    fixture.stop().await;
}
