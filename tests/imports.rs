//! Product imports end to end: a real photoq downloads from a real server on loopback
//! (reached through `fetch.allow`), and products report the status their images add up to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::Fixture;
use common::TestApp;
use serde_json::{json, Value};

const A: &str = "Canon_40D.jpg";
const B: &str = "Nikon_D70.jpg";

/// Quick retries (downloads from the fixture: `FETCH_CONFIG`).
const CONFIG: &str = r#"
[import]
compressed_keep = ["exif", "icc"]
[retry]
max_attempts = 3
base_delay_ms = 50
max_delay_ms = 200
"#;

async fn start() -> (TestApp, Fixture) {
    let fx = Fixture::start().await;
    let app = TestApp::builder()
        .config(common::fixture::FETCH_CONFIG)
        .config(CONFIG)
        .start()
        .await;
    (app, fx)
}

async fn post_import(app: &TestApp, body: reqwest::RequestBuilder) -> (u16, Value) {
    let res = body.bearer_auth(&app.key).send().await.expect("import");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

fn json_import(app: &TestApp, body: &Value) -> reqwest::RequestBuilder {
    app.client.post(app.url("/v1/imports")).json(body)
}

async fn product(app: &TestApp, external_id: &str) -> Value {
    let page = app
        .get_json(&format!("/v1/products?external_id={external_id}"))
        .await;
    let products = page["products"].as_array().unwrap();
    assert_eq!(products.len(), 1, "{page}");
    products[0].clone()
}

#[tokio::test]
async fn an_import_downloads_processes_and_reports_each_product() {
    let (app, fx) = start().await;
    let body = json!({"products": [
        {"external_id": "sku-ok", "name": "Two good images",
         "images": [fx.url(&format!("/img/{A}")), fx.url(&format!("/chain/2/{B}"))]},
        {"external_id": "sku-missing", "name": "One image gone",
         "images": [fx.url(&format!("/img/{A}")), fx.url("/status/404")]},
        {"external_id": "sku-flaky", "images": [fx.url(&format!("/flaky/x/{A}"))]},
        {"external_id": "sku-limited", "images": [fx.url(&format!("/limited/x/{B}"))]},
        {"external_id": "sku-html", "images": [fx.url("/html-as-jpeg")]},
    ]});
    let (status, accepted) = post_import(&app, json_import(&app, &body)).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["import_id"].as_str().unwrap();
    assert_eq!(accepted["products"].as_array().unwrap().len(), 5);
    assert_eq!(accepted["products"][0]["images"][1]["state"], "queued");

    let import = app.wait_import(id).await;
    assert_eq!(import["state"], "completed_with_errors", "{import}");
    assert_eq!(import["products"]["processed"], 3, "{import}");
    assert_eq!(import["products"]["process_error"], 2, "{import}");
    assert_eq!(import["images"]["completed"], 5, "{import}");
    assert_eq!(import["images"]["failed"], 2, "{import}");

    // The import's event stream tells each product's way: first `processing`, then its
    // end, once, after the images it depends on.
    let page = app
        .get_json(&format!("/v1/batches/{id}/events?after=0&wait=0"))
        .await;
    let events = page["events"].as_array().unwrap();
    for p in accepted["products"].as_array().unwrap() {
        let pid = &p["id"];
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| &e["product_id"] == pid)
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.first(),
            Some(&"product.processing"),
            "{pid}: {kinds:?}"
        );
        assert_eq!(kinds.len(), 2, "{pid}: {kinds:?}");
        assert!(
            ["product.processed", "product.process_error"].contains(&kinds[1]),
            "{kinds:?}"
        );
    }
    let ends: Vec<&str> = events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| photoq::events::ends_batch(t))
        .collect();
    assert_eq!(ends, ["batch.completed_with_errors"]);

    // Processed: every image with the variants and the full-size compressed rendition.
    let ok = product(&app, "sku-ok").await;
    assert_eq!(ok["state"], "processed");
    assert_eq!(ok["name"], "Two good images");
    for image in ok["images"].as_array().unwrap() {
        assert_eq!(image["state"], "completed");
        let names: Vec<&str> = image["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"compressed") && names.contains(&"thumbnail"),
            "{names:?}"
        );
        let compressed = image["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "compressed")
            .unwrap();
        assert_eq!(compressed["width"], image["original"]["width"]);
        assert_eq!(compressed["height"], image["original"]["height"]);
        // The rendition keeps the camera's EXIF (upright now), the thumbnail nothing.
        let kept = app.bytes(compressed["url"].as_str().unwrap()).await;
        let exif = rexif::parse_buffer(&kept).expect("EXIF kept");
        let tag = |t| exif.entries.iter().find(|e| e.tag == t);
        assert!(tag(rexif::ExifTag::Make).is_some());
        if let Some(o) = tag(rexif::ExifTag::Orientation) {
            assert_eq!(o.value.to_i64(0), Some(1));
        }
        let thumb = image["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "thumbnail")
            .unwrap();
        let thumb = app.bytes(thumb["url"].as_str().unwrap()).await;
        assert!(
            rexif::parse_buffer(&thumb).is_err(),
            "thumbnail without metadata"
        );
        assert_eq!(image["original"]["content_type"], "image/jpeg");
        assert!(image["exif"].is_object(), "{image}");
        // The original bytes are stored, as downloaded.
        let original = app.bytes(image["original"]["url"].as_str().unwrap()).await;
        assert_eq!(
            original.len() as u64,
            image["original"]["bytes"].as_u64().unwrap()
        );
    }
    let source = common::read(common::corpus_dir().join("jpg").join(B));
    let second = &ok["images"][1];
    assert_eq!(second["original"]["bytes"], source.len());
    assert!(second["source_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/chain/2/{B}")));

    // One image gone: the product reports which and why.
    let missing = product(&app, "sku-missing").await;
    assert_eq!(missing["state"], "process_error");
    assert_eq!(missing["errors"].as_array().unwrap().len(), 1, "{missing}");
    assert_eq!(missing["errors"][0]["position"], 1);
    assert_eq!(missing["errors"][0]["code"], "download_not_found");
    assert_eq!(missing["images"][1]["attempts"], 1, "a 404 is not retried");

    // 500 then 200, and 429 with Retry-After: retried, then completed.
    let flaky = product(&app, "sku-flaky").await;
    assert_eq!(flaky["state"], "processed", "{flaky}");
    assert_eq!(flaky["images"][0]["attempts"], 2);
    let limited = product(&app, "sku-limited").await;
    assert_eq!(limited["state"], "processed", "{limited}");
    let history = app
        .get_json(&format!(
            "/v1/photos/{}",
            limited["images"][0]["id"].as_str().unwrap()
        ))
        .await;
    let first = &history["history"][0];
    assert_eq!(first["outcome"], "retry");
    let second_start: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(history["history"][1]["started_at"].clone()).unwrap();
    let first_end: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(first["finished_at"].clone()).unwrap();
    assert!(
        second_start - first_end >= chrono::Duration::milliseconds(900),
        "Retry-After: 1 was not honoured: {history}"
    );

    // HTML served as image/jpeg: failed at once, with a machine-readable reason.
    let html = product(&app, "sku-html").await;
    assert_eq!(html["errors"][0]["code"], "download_not_an_image");
    assert_eq!(html["images"][0]["attempts"], 1);

    // Filters and keyset pagination.
    let errors = app.get_json("/v1/products?state=process_error").await;
    assert_eq!(errors["products"].as_array().unwrap().len(), 2);
    let mut seen = Vec::new();
    let mut path = format!("/v1/products?import={id}&limit=2");
    loop {
        let page = app.get_json(&path).await;
        for p in page["products"].as_array().unwrap() {
            seen.push(p["external_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/products?import={id}&limit=2&cursor={c}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "sku-flaky",
            "sku-html",
            "sku-limited",
            "sku-missing",
            "sku-ok"
        ]
    );
    app.finish().await;
    fx.stop().await;
}

#[tokio::test]
async fn reimporting_updates_products_and_an_idempotency_key_replays_the_answer() {
    let (app, fx) = start().await;
    let a = fx.url(&format!("/img/{A}"));
    let b = fx.url(&format!("/img/{B}"));
    let first = json!({"products": [{"external_id": "sku-1", "name": "Mug", "images": [a]}]});
    let keyed = |body: &Value| json_import(&app, body).header("Idempotency-Key", "import-1");
    let (status, answer) = post_import(&app, keyed(&first)).await;
    assert_eq!(status, 202);
    // The same key again: the first answer, nothing new.
    let (status, again) = post_import(&app, keyed(&first)).await;
    assert_eq!((status, &again), (202, &answer));
    app.wait_import(answer["import_id"].as_str().unwrap()).await;

    // The same product again, renamed and with a second image: updated, not duplicated;
    // the image it had keeps its photo.
    let second =
        json!({"products": [{"external_id": "sku-1", "name": "Blue mug", "images": [a, b]}]});
    let (status, updated) = post_import(&app, json_import(&app, &second)).await;
    assert_eq!(status, 202, "{updated}");
    let p = &updated["products"][0];
    assert_eq!(p["id"], answer["products"][0]["id"]);
    assert_eq!(p["created"], false);
    assert_eq!(
        p["images"][0]["id"],
        answer["products"][0]["images"][0]["id"]
    );
    assert_eq!(p["images"][0]["state"], "completed");
    assert_ne!(p["images"][1]["id"], p["images"][0]["id"]);
    app.wait_import(updated["import_id"].as_str().unwrap())
        .await;
    let product = product(&app, "sku-1").await;
    assert_eq!(product["name"], "Blue mug");
    assert_eq!(product["state"], "processed");
    assert_eq!(product["images"].as_array().unwrap().len(), 2);
    // Both imports name the product.
    let earlier = app
        .get_json(&format!(
            "/v1/imports/{}",
            answer["import_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(earlier["products"]["total"], 1);

    // An upload's key sent with an import is a conflict, not a replay.
    let res = app
        .client
        .post(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "upload-1")
        .multipart(
            reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(common::read(
                    common::corpus_dir().join("jpg").join(A),
                ))
                .file_name("a.jpg"),
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let res = json_import(&app, &first)
        .header("Idempotency-Key", "upload-1")
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    app.finish().await;
    fx.stop().await;
}

#[tokio::test]
async fn csv_imports_as_json_does_and_bad_items_refuse_the_whole_import() {
    let (app, fx) = start().await;
    let a = fx.url(&format!("/img/{A}"));
    let b = fx.url(&format!("/img/{B}"));
    let csv = format!("external_id,name,images\ncsv-1,\"Mug, blue\",{a} {b}\ncsv-2,,{b}\n");
    let (status, answer) = post_import(
        &app,
        app.client
            .post(app.url("/v1/imports"))
            .header("content-type", "text/csv")
            .body(csv),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let products = answer["products"].as_array().unwrap();
    let shape: Vec<(&str, usize)> = products
        .iter()
        .map(|p| {
            (
                p["external_id"].as_str().unwrap(),
                p["images"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(shape, [("csv-1", 2), ("csv-2", 1)]);
    assert_eq!(products[0]["images"][1]["source_url"], b);
    let import = app.wait_import(answer["import_id"].as_str().unwrap()).await;
    assert_eq!(import["state"], "completed", "{import}");
    assert_eq!(product(&app, "csv-1").await["name"], "Mug, blue");

    // Every problem at once, with its index and field; nothing stored.
    let bad = json!({"products": [
        {"external_id": "fine", "images": [a]},
        {"external_id": "", "images": []},
        {"external_id": "x", "images": ["http://10.0.0.1/a.jpg", "ftp://example.com/a.jpg", "not a url"]},
    ]});
    let (status, refused) = post_import(&app, json_import(&app, &bad)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_items");
    let where_: Vec<(u64, &str)> = refused["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), p["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        where_,
        [
            (1, "external_id"),
            (1, "images"),
            (2, "images[0]"),
            (2, "images[1]"),
            (2, "images[2]")
        ]
    );
    let fine = app.get_json("/v1/products?external_id=fine").await;
    assert_eq!(fine["products"].as_array().unwrap().len(), 0);

    // Malformed bodies and other types.
    for (ctype, body, code) in [
        ("application/json", "{\"products\": [", "bad_json"),
        ("text/csv", "price\n1\n", "bad_csv"),
        ("text/plain", "hello", "bad_content_type"),
        ("application/json", "{\"products\": []}", "no_products"),
    ] {
        let res = app
            .client
            .post(app.url("/v1/imports"))
            .bearer_auth(&app.key)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{ctype} {body}");
        assert_eq!(common::error_code(res).await, code);
    }
    // Another key sees none of it.
    let (_, other) = app.new_key("other").await;
    let res = app
        .get_as(
            &other,
            &format!("/v1/imports/{}", answer["import_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(res.status(), 404);
    let page: Value = app
        .get_as(&other, "/v1/products")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["products"].as_array().unwrap().len(), 0);
    app.finish().await;
    fx.stop().await;
}
