//! Who may do what, on the real service: every route refuses a key without the scope it
//! needs (403) and lets one with it through; keys made for the same owner see the same
//! photos, so a key is rotated without losing data; a key cannot give a scope it lacks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{error_code, three_photos, TestApp};
use photoq::auth::{Scope, Scopes};
use serde_json::{json, Value};

/// `POST /v1/keys` with `key`.
async fn make_key(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/keys"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A body the route would accept: a refusal must come from the scope, not from the body
/// (extractors run side by side, and a malformed body could answer first).
fn body_for(method: &str, template: &str) -> Value {
    match (method, template) {
        ("post", "/v1/keys") => json!({"name": "x"}),
        ("post", "/v1/webhooks") => json!({"url": "https://hooks.example.com/x"}),
        ("post", "/v1/imports") => json!({"products": [
            {"external_id": "a", "images": ["https://images.example.com/a.jpg"]}
        ]}),
        _ => json!({}),
    }
}

/// `template` with its parameters filled in: ids that name nothing, a variant name.
fn concrete(template: &str) -> String {
    let nobody = uuid::Uuid::now_v7().to_string();
    template
        .replace("{id}", &nobody)
        .replace("{name}", "thumbnail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_key_without_its_scope() {
    let app = TestApp::builder().workers(None).start().await;
    let spec: Value = app.get_public("/openapi.json").await.json().await.unwrap();
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let m: actix_web::http::Method = method.to_uppercase().parse().unwrap();
            let Some(scope) = photoq::api::auth::required_scope(&m, path) else {
                continue;
            };
            // Every scope but the one the route needs.
            let (_, key) = app
                .new_key_as(
                    "short",
                    Scopes::of(Scope::ALL.into_iter().filter(|s| *s != scope)),
                )
                .await;
            let res = app
                .client
                .request(
                    reqwest::Method::from_bytes(m.as_str().as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .bearer_auth(&key)
                .json(&body_for(method, path))
                .send()
                .await
                .unwrap();
            let what = format!("{method} {path} without {}", scope.as_str());
            assert_eq!(res.status(), 403, "{what}");
            assert_eq!(error_code(res).await, "forbidden", "{what}");
            checked += 1;
        }
    }
    // Reading, adding work, managing and the queue overview all have routes.
    assert!(checked >= 30, "only {checked} routes checked");

    // The description names the scope, and a key with only that scope gets through.
    let overview = &spec["paths"]["/v1/operator/overview"]["get"];
    assert!(overview["description"]
        .as_str()
        .unwrap()
        .contains("`operator` scope"));
    let (_, reader) = app.new_key_as("reader", Scopes::of([Scope::Read])).await;
    assert_eq!(app.get_as(&reader, "/v1/photos").await.status(), 200);
    assert_eq!(app.get_as(&reader, "/v1/me").await.status(), 200);
    let res = app.upload_with(&reader, three_photos()).await;
    assert_eq!(res.status(), 403);
    let (_, uploader) = app
        .new_key_as("uploader", Scopes::of([Scope::Upload]))
        .await;
    let res = app.upload_with(&uploader, three_photos()).await;
    assert_eq!(res.status(), 202);
    assert_eq!(app.get_as(&uploader, "/v1/photos").await.status(), 403);
    // `GET /v1/me` answers any key, with its scopes.
    let me: Value = app.get_as(&uploader, "/v1/me").await.json().await.unwrap();
    assert_eq!(me["scopes"], json!(["upload"]));
    assert_eq!(me["operator"], false);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_keeps_its_owners_photos() {
    let app = TestApp::builder().workers(None).start().await;
    let batch = app.upload_ok(three_photos()).await;
    let photo = batch["photos"][0]["id"].as_str().unwrap().to_owned();
    let me: Value = app.get_json("/v1/me").await;

    // The successor, made by the key it replaces.
    let res = make_key(&app, &app.key, json!({"name": "successor"})).await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await.unwrap();
    let successor = made["key"].as_str().unwrap().to_owned();
    assert_eq!(made["details"]["owner_id"], me["owner_id"]);
    assert_eq!(made["details"]["scopes"], me["scopes"]);

    // The old key revoked (by the new one): its owner's photos stay, for the new key.
    let res = app
        .client
        .delete(app.url(&format!("/v1/keys/{}", me["id"].as_str().unwrap())))
        .bearer_auth(&successor)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(app.get("/v1/photos").await.status(), 401);
    let res = app.get_as(&successor, &format!("/v1/photos/{photo}")).await;
    assert_eq!(res.status(), 200);
    let listed: Value = app
        .get_as(&successor, "/v1/keys")
        .await
        .json()
        .await
        .unwrap();
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{listed}");
    assert!(keys[0]["revoked_at"].is_string() && keys[1]["revoked_at"].is_null());

    // Another owner's key sees none of it, and cannot revoke the owner's keys.
    let (_, stranger) = app.new_key("stranger").await;
    let res = app.get_as(&stranger, &format!("/v1/photos/{photo}")).await;
    assert_eq!(res.status(), 404);
    let res = app
        .client
        .delete(app.url(&format!(
            "/v1/keys/{}",
            made["details"]["id"].as_str().unwrap()
        )))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // A key with fewer scopes cannot make a key with more.
    let res = make_key(
        &app,
        &successor,
        json!({"name": "reader", "scopes": ["read"]}),
    )
    .await;
    let reader: Value = res.json().await.unwrap();
    let reader = reader["key"].as_str().unwrap().to_owned();
    let res = make_key(
        &app,
        &reader,
        json!({"name": "escalate", "scopes": ["read"]}),
    )
    .await;
    // Making keys is managing: `admin`, which the reader lacks.
    assert_eq!(res.status(), 403);
    let res = make_key(
        &app,
        &successor,
        json!({"name": "escalate", "scopes": ["operator"]}),
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "forbidden");
    app.finish().await;
}

const SIGNING: &str = "k1:an-example-secret-of-more-than-32-bytes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_url_opens_an_image_until_it_expires_and_not_when_altered() {
    let app = TestApp::builder().signing_keys(SIGNING).start().await;
    let batch = app.upload_ok(three_photos()).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let id = batch["photos"][0]["id"].as_str().unwrap();
    let photo = app.get_json(&format!("/v1/photos/{id}")).await;
    let variant = &photo["variants"][0];
    let signed = variant["signed_url"].as_str().unwrap();
    assert!(
        signed.starts_with(variant["url"].as_str().unwrap()),
        "{signed}"
    );
    let with_key = app.bytes(variant["url"].as_str().unwrap()).await;

    // No key: the signed URL alone opens the image, the plain one does not.
    let open = |path: &str| app.client.get(app.url(path)).send();
    let res = open(signed).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), with_key.as_slice());
    assert_eq!(
        open(variant["url"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        401
    );
    let original = photo["original"]["signed_url"].as_str().unwrap();
    assert_eq!(open(original).await.unwrap().status(), 200);

    // Altered: another variant's path with the same query, a later expiry, a flipped
    // signature character.
    // The paths without their `v` (which names the bytes, and is no part of a signature).
    let path = |url: &Value| url.as_str().unwrap().split('?').next().unwrap().to_owned();
    let other = path(&photo["variants"][1]["url"]);
    let query = &signed[signed.find('?').unwrap()..];
    let exp: i64 = query
        .split('&')
        .find_map(|p| p.trim_start_matches('?').strip_prefix("exp="))
        .unwrap()
        .parse()
        .unwrap();
    let later = signed.replace(&format!("exp={exp}"), &format!("exp={}", exp + 86_400));
    let sig_at = signed.find("sig=").unwrap() + 4;
    let mut flipped = signed.to_owned().into_bytes();
    flipped[sig_at] = if flipped[sig_at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for altered in [format!("{other}{query}"), later, flipped] {
        let res = open(&altered).await.unwrap();
        assert_eq!(res.status(), 403, "{altered}");
        assert_eq!(error_code(res).await, "bad_signature", "{altered}");
    }

    // Signed by the server's key, an hour ago, for a minute: expired.
    let signer = photoq::signing::UrlSigner::parse(SIGNING).unwrap();
    let an_hour_ago = chrono::Utc::now().timestamp() - 3600;
    let expired = signer
        .sign(&path(&variant["url"]), an_hour_ago, 60)
        .unwrap();
    let res = open(&expired).await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "url_expired");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_signing_keys_no_url_is_signed_and_none_opens() {
    let app = TestApp::builder().start().await;
    let batch = app.upload_ok(three_photos()).await;
    app.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    let id = batch["photos"][0]["id"].as_str().unwrap();
    let photo = app.get_json(&format!("/v1/photos/{id}")).await;
    assert!(photo["variants"][0]["signed_url"].is_null(), "{photo}");
    assert!(photo["original"]["signed_url"].is_null(), "{photo}");
    // A URL signed with some key: refused, as signing is off here.
    let signer = photoq::signing::UrlSigner::parse(SIGNING).unwrap();
    let url = signer
        .sign(
            photo["variants"][0]["url"]
                .as_str()
                .unwrap()
                .split('?')
                .next()
                .unwrap(),
            chrono::Utc::now().timestamp(),
            60,
        )
        .unwrap();
    let res = app.client.get(app.url(&url)).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "bad_signature");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_the_allowed_origin_only_and_never_with_credentials() {
    let allowed = "https://app.example.com";
    let app = TestApp::builder()
        .workers(None)
        .config(&format!(
            "[cors]\nallowed_origins = [\"{allowed}\"]\nmax_age_secs = 600"
        ))
        .start()
        .await;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/photos"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,idempotency-key",
            )
            .send()
    };
    let res = preflight(allowed).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], allowed);
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("idempotency-key"),
        "{headers}"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.get("access-control-allow-credentials").is_none());

    // Another origin gets no CORS headers: its page cannot read the answer.
    let res = preflight("https://elsewhere.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // A real request from the page: allowed, with the headers a client reads exposed.
    let res = app
        .client
        .get(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .header("Origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], allowed);
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let app = app.restart("[cors]\nallowed_origins = [\"*\"]").await;
    let res = app
        .client
        .get(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .header("Origin", "https://anywhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(res
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    app.finish().await;
}
