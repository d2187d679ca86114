//! Bad input gets a clear JSON error and loses nothing; nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus_dir, error_code, read, TestApp};
use nix::sys::resource::{getrusage, UsageWho};

fn sample() -> Vec<u8> {
    read(corpus_dir().join("jpg/Canon_40D.jpg"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_named_jpg_is_415() {
    let app = TestApp::start().await;
    let res = app
        .upload(vec![(
            "x.jpg".into(),
            b"just some text, not an image\n".to_vec(),
        )])
        .await;
    assert_eq!(res.status(), 415);
    assert_eq!(error_code(res).await, "unsupported_media_type");

    // One bad file refuses the whole request: no batch, no photo left behind.
    let res = app
        .upload(vec![
            ("good.jpg".into(), sample()),
            ("bad.jpg".into(), b"GIF89a not supported".to_vec()),
        ])
        .await;
    assert_eq!(res.status(), 415);
    let page = app.get_json("/v1/photos").await;
    assert_eq!(page["photos"].as_array().unwrap().len(), 0);
    assert_eq!(
        std::fs::read_dir(app.config.storage.root.join("originals"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "originals of a refused request are removed"
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_uploads_are_400() {
    let app = TestApp::start().await;
    // No field at all (a multipart body with only its closing boundary).
    let res = app.upload(vec![]).await;
    assert_eq!(res.status(), 400);
    error_code(res).await;
    // A file field with no bytes.
    let res = app.upload(vec![("empty.jpg".into(), Vec::new())]).await;
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "empty_file");
    // Not multipart at all.
    let res = app
        .client
        .post(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "bad_multipart");
    // A field with another name.
    let form = reqwest::multipart::Form::new().part(
        "photo",
        reqwest::multipart::Part::bytes(sample()).file_name("a.jpg"),
    );
    let res = app
        .client
        .post(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(res).await, "unknown_field");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_file_and_too_many_files_are_413() {
    let app = TestApp::builder()
        .config("[upload]\nmax_file_bytes = 20000\nmax_files = 2")
        .start()
        .await;
    let big = read(corpus_dir().join("jpg/hdr/canon_hdr_NO.jpg"));
    assert!(big.len() > 20000);
    let res = app.upload(vec![("big.jpg".into(), big)]).await;
    assert_eq!(res.status(), 413);
    assert_eq!(error_code(res).await, "file_too_large");

    let small = read(corpus_dir().join("jpg/Kodak_CX7530.jpg"));
    assert!(small.len() < 20000);
    let res = app
        .upload(vec![
            ("1.jpg".into(), small.clone()),
            ("2.jpg".into(), small.clone()),
            ("3.jpg".into(), small.clone()),
        ])
        .await;
    assert_eq!(res.status(), 413);
    assert_eq!(error_code(res).await, "too_many_files");

    // The limits still let through what fits.
    let body = app
        .upload_ok(vec![
            ("1.jpg".into(), small.clone()),
            ("2.jpg".into(), small),
        ])
        .await;
    let batch = app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["completed"], 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_and_revoked_keys_are_401() {
    let app = TestApp::start().await;
    let no_key = app.client.get(app.url("/v1/photos")).send().await.unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(error_code(no_key).await, "unauthorized");

    let wrong = app
        .client
        .get(app.url("/v1/photos"))
        .bearer_auth("pq_0000000000000000000000000000000000000000000000000000000000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let (id, key) = app.new_key("to-revoke").await;
    let ok = app
        .client
        .get(app.url("/v1/photos"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    app.revoke(id).await;
    let revoked = app
        .upload_with(&key, vec![("a.jpg".into(), sample())])
        .await;
    assert_eq!(revoked.status(), 401);
    assert_eq!(error_code(revoked).await, "unauthorized");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_photo_is_404() {
    let app = TestApp::start().await;
    let body = app.upload_ok(vec![("a.jpg".into(), sample())]).await;
    let batch_id = body["batch_id"].as_str().unwrap().to_owned();
    let photo_id = body["photos"][0]["id"].as_str().unwrap().to_owned();
    app.wait_batch(&batch_id).await;

    let (_, other) = app.new_key("other").await;
    for path in [
        format!("/v1/photos/{photo_id}"),
        format!("/v1/photos/{photo_id}/variants/thumbnail"),
        format!("/v1/photos/{photo_id}/original"),
        format!("/v1/batches/{batch_id}"),
    ] {
        let mine = app.get(&path).await;
        assert_eq!(mine.status(), 200, "{path} for its owner");
        let res = app.get_as(&other, &path).await;
        assert_eq!(res.status(), 404, "{path} for another key");
        assert_eq!(error_code(res).await, "not_found");
    }
    let list = app
        .client
        .get(app.url("/v1/photos"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    let list: serde_json::Value = list.json().await.unwrap();
    assert!(list["photos"].as_array().unwrap().is_empty());
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_hostile_images_fail_and_the_worker_goes_on() {
    let app = TestApp::builder()
        .config("[pipeline]\nmax_pixels = 50000000")
        .start()
        .await;
    let full = sample();
    let truncated = full[..full.len() / 2].to_vec();
    // A PNG whose header claims 20000 x 20000 pixels (400 MP): refused before decoding.
    let mut bomb = Vec::new();
    bomb.extend(b"\x89PNG\r\n\x1a\n");
    let mut ihdr = Vec::new();
    ihdr.extend(b"IHDR");
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    bomb.extend(13u32.to_be_bytes());
    bomb.extend(&ihdr);
    bomb.extend(crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &b"\x78\x9c\x03\x00\x00\x00\x00\x01"[..]),
        (b"IEND", b""),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        bomb.extend((data.len() as u32).to_be_bytes());
        bomb.extend(&chunk);
        bomb.extend(crc32(&chunk).to_be_bytes());
    }
    // JPEG magic followed by noise.
    let mut noise = vec![0xFF, 0xD8, 0xFF, 0xE0];
    noise.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));

    let body = app
        .upload_ok(vec![
            ("truncated.jpg".into(), truncated),
            ("bomb.png".into(), bomb),
            ("noise.jpg".into(), noise),
            ("good.jpg".into(), full.clone()),
        ])
        .await;
    let batch = app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["failed"], 3, "{batch}");
    assert_eq!(batch["completed"], 1, "{batch}");
    let photos = app.batch_photos(body["batch_id"].as_str().unwrap()).await;
    for p in &photos[..3] {
        assert_eq!(p["state"], "failed");
        assert!(!p["error"].as_str().unwrap().is_empty());
    }
    assert!(
        photos[1]["error"].as_str().unwrap().contains("20000x20000"),
        "{}",
        photos[1]["error"]
    );

    // The worker is still there: a later upload completes.
    let body = app.upload_ok(vec![("again.jpg".into(), full)]).await;
    let batch = app.wait_batch(body["batch_id"].as_str().unwrap()).await;
    assert_eq!(batch["state"], "completed");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_paths_and_queries_are_json_400() {
    let app = TestApp::start().await;
    for (path, code) in [
        ("/v1/photos/not-a-uuid", "bad_path"),
        ("/v1/batches/123", "bad_path"),
        ("/v1/photos?limit=0", "bad_query"),
        ("/v1/photos?limit=201", "bad_query"),
        ("/v1/photos?limit=abc", "bad_query"),
        ("/v1/photos?state=sleeping", "bad_query"),
        ("/v1/photos?cursor=zzz", "bad_query"),
        ("/v1/photos?stat=dead", "bad_query"),
        ("/v1/photos?batch=nope", "bad_query"),
        ("/v1/dead-letters?bach=x", "bad_query"),
        ("/v1/dead-letters?limit=-1", "bad_query"),
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(error_code(res).await, code, "{path}");
    }
    let res = app.get("/v1/nothing-here").await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
    let res = app.get("/docs/not-a-file.js").await;
    assert_eq!(res.status(), 404);
    app.finish().await;
}

/// Marks every photo of the app's database `dead`, as if each had run out of attempts.
async fn kill_all(app: &TestApp) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(&app.config.database.url)
        .await
        .unwrap();
    diesel::sql_query(
        "UPDATE photos SET state = 'dead', attempt_id = NULL, error = 'test', \
         completed_at = now() WHERE state IN ('queued', 'failed')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_redrive_bodies_change_nothing_and_other_keys_see_404() {
    // No workers: the photos stay where the test puts them.
    let app = TestApp::builder().workers(None).start().await;
    let body = app.upload_ok(vec![("a.jpg".into(), sample())]).await;
    let batch = body["batch_id"].as_str().unwrap().to_owned();
    let photo = body["photos"][0]["id"].as_str().unwrap().to_owned();
    kill_all(&app).await;
    let redrive = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/v1/dead-letters/redrive"))
            .bearer_auth(&app.key)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, code) in [
        (r#"{"bach": "x"}"#, "application/json", "bad_json"),
        (r#"{"batch": "not-a-uuid"}"#, "application/json", "bad_json"),
        (
            r#"{"include_failed": "yes"}"#,
            "application/json",
            "bad_json",
        ),
        ("{", "application/json", "bad_json"),
        ("", "application/json", "bad_json"),
        ("{}", "text/plain", "bad_content_type"),
        (
            "batch=x",
            "application/x-www-form-urlencoded",
            "bad_content_type",
        ),
    ] {
        let res = redrive(body, content_type).await.unwrap();
        assert_eq!(res.status(), 400, "{body} as {content_type}");
        assert_eq!(error_code(res).await, code, "{body} as {content_type}");
    }
    let dead = app.get_json("/v1/dead-letters").await;
    assert_eq!(
        dead["photos"].as_array().unwrap().len(),
        1,
        "still dead: {dead}"
    );

    // Another key: its requests about this key's things are 404s and touch nothing.
    let (_, other) = app.new_key("other").await;
    let res = app
        .client
        .post(app.url("/v1/dead-letters/redrive"))
        .bearer_auth(&other)
        .json(&serde_json::json!({ "batch": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
    let res = app
        .client
        .post(app.url(&format!("/v1/photos/{photo}/retry")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    for path in [
        format!("/v1/dead-letters?batch={batch}"),
        format!("/v1/photos?batch={batch}"),
    ] {
        let res = app.get_as(&other, &path).await;
        assert_eq!(res.status(), 404, "{path}");
    }
    let dead = app.get_json("/v1/dead-letters").await;
    assert_eq!(
        dead["photos"].as_array().unwrap().len(),
        1,
        "still dead: {dead}"
    );

    // `{}` is the explicit "all of mine".
    let res = redrive("{}", "application/json").await.unwrap();
    assert_eq!(res.status(), 202);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["redriven"], 1, "{answer}");
    let photo = app.get_json(&format!("/v1/photos/{photo}")).await;
    assert_eq!(photo["state"], "queued", "{photo}");
    assert_eq!(photo["attempts"], 0, "{photo}");
    app.finish().await;
}

/// CRC-32 (IEEE) for the PNG chunk above.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Waits until `/metrics` shows `n` upload bodies being read.
async fn wait_uploads_in_flight(app: &TestApp, n: u64) {
    let deadline = std::time::Instant::now() + common::SETTLE_TIMEOUT;
    loop {
        let text = app.get_public("/metrics").await.text().await.unwrap();
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix("photoq_uploads_in_flight "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if now == Some(n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "in flight: {now:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_concurrency_cap_are_503_busy_and_change_nothing() {
    let app = TestApp::builder()
        .config("[upload]\nmax_concurrent = 1")
        .workers(None)
        .start()
        .await;
    // The first upload streams its body slowly: the test sends it piece by piece.
    let boundary = "photoq-test-boundary";
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let slow = app
        .client
        .post(app.url("/v1/photos"))
        .bearer_auth(&app.key)
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let slow = tokio::spawn(slow);
    let photo = sample();
    let (head, tail) = photo.split_at(photo.len() / 2);
    let mut opening = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    opening.extend_from_slice(head);
    tx.send(Ok(opening)).await.unwrap();
    wait_uploads_in_flight(&app, 1).await;

    // A second upload meanwhile: refused, with a hint when to come back.
    let res = app.upload(vec![("b.jpg".into(), sample())]).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_code(res).await, "busy");

    // The first one finishes and is accepted; only it was recorded.
    let mut closing = tail.to_vec();
    closing.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    tx.send(Ok(closing)).await.unwrap();
    drop(tx);
    let res = slow.await.unwrap().unwrap();
    assert_eq!(res.status(), 202);
    wait_uploads_in_flight(&app, 0).await;
    let page = app.get_json("/v1/photos").await;
    let photos = page["photos"].as_array().unwrap();
    assert_eq!(photos.len(), 1, "{page}");
    assert_eq!(photos[0]["filename"], "a.jpg");
    assert_eq!(photos[0]["original"]["bytes"], photo.len());
    let original = app
        .bytes(&format!(
            "/v1/photos/{}/original",
            photos[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(original, photo, "stored whole, byte for byte");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_failed_authentications_answer_429_with_retry_after() {
    let limits = "[limits]\nrequests_per_sec = 1\nburst = 2\nauth_failures_per_min = 3";
    let app = TestApp::builder()
        .config(limits)
        .workers(None)
        .start()
        .await;
    let (_, other) = app.new_key("other").await;
    // A burst of two, then the bucket is empty for about a second.
    for _ in 0..2 {
        assert_eq!(app.get("/v1/photos").await.status(), 200);
    }
    let res = app.get("/v1/photos").await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(error_code(res).await, "rate_limited");
    // Another key has its own bucket.
    assert_eq!(app.get_as(&other, "/v1/photos").await.status(), 200);

    // Guessing keys: three failures from this address, each claiming another address in
    // X-Forwarded-For (not believed: the peer is no trusted proxy). Then the address is
    // refused, even with a good key.
    for forwarded in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(guess_as(&app, "pq_0000", forwarded).await.status(), 401);
    }
    let res = guess_as(&app, "pq_0000", "198.51.100.4").await;
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(error_code(res).await, "rate_limited");
    assert_eq!(app.get_as(&other, "/v1/photos").await.status(), 429);
    app.finish().await;

    // Behind a trusted proxy, the address it names is the one counted.
    let app = TestApp::builder()
        .config(&format!("{limits}\ntrusted_proxies = [\"127.0.0.1\"]"))
        .workers(None)
        .start()
        .await;
    for _ in 0..3 {
        let res = guess_as(&app, "pq_0000", "203.0.113.7").await;
        assert_eq!(res.status(), 401);
    }
    let res = guess_as(&app, "pq_0000", "203.0.113.7").await;
    assert_eq!(res.status(), 429);
    let res = guess_as(&app, &app.key, "203.0.113.8").await;
    assert_eq!(res.status(), 200);
    app.finish().await;
}

/// `GET /v1/photos` with `key`, through a proxy that says the client is `forwarded`.
async fn guess_as(app: &TestApp, key: &str, forwarded: &str) -> reqwest::Response {
    app.client
        .get(app.url("/v1/photos"))
        .bearer_auth(key)
        .header("X-Forwarded-For", forwarded)
        .send()
        .await
        .unwrap()
}

/// Bits written least significant first, as DEFLATE packs them.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += len;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code: its bits go most significant first.
    fn code(&mut self, code: u32, len: u32) {
        self.put(code.reverse_bits() >> (32 - len), len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A valid grey PNG of `width` × `height` zero pixels: one fixed-Huffman DEFLATE block of
/// back-references (13 bits for every 258 bytes), so a few MB inflate to hundreds.
fn zero_png(width: u32, height: u32) -> Vec<u8> {
    let raw = u64::from(height) * (u64::from(width) + 1);
    let mut bits = Bits::default();
    bits.put(0b011, 3); // the final block, fixed Huffman codes
    bits.code(0b0011_0000, 8); // literal 0
    let mut left = raw - 1;
    while left >= 258 {
        bits.code(0b1100_0101, 8); // length 258
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0b0011_0000, 8);
    }
    bits.code(0, 7); // end of block
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.finish());
    // Adler-32 of `raw` zero bytes.
    zlib.extend(((((raw % 65_521) as u32) << 16) | 1).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    for (kind, data) in [(&b"IHDR"[..], ihdr), (b"IDAT", zlib), (b"IEND", Vec::new())] {
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

/// A 5 MB PNG that inflates to 784 MB of pixels (28 000 × 28 000, past the 100 MP limit) is
/// refused from its header: `photoq render`, a process of its own, fails it with the
/// reason and never holds more than 50 MiB (its peak RSS, from the kernel).
#[test]
fn a_png_bomb_is_refused_before_any_pixel_buffer() {
    let png = zero_png(28_000, 28_000);
    assert!(
        (4_500_000..6_000_000).contains(&png.len()),
        "{} bytes",
        png.len()
    );
    let header = image::ImageReader::new(std::io::Cursor::new(&png))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    assert_eq!(header, (28_000, 28_000));

    let dir = std::env::temp_dir().join(format!("pqbomb_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bomb.png");
    std::fs::write(&file, &png).unwrap();
    // The only child this test binary starts: the kernel's peak over its waited-for
    // children is this one's.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_photoq"))
        .args(["render", "--concurrency", "1", "--out"])
        .arg(dir.join("out"))
        .arg(&file)
        .output()
        .unwrap();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("28000x28000"), "{said}");
    let peak_mib = usage.max_rss() / 1024;
    eprintln!(
        "photoq render on a {} byte PNG bomb: peak RSS {peak_mib} MiB",
        png.len()
    );
    assert!(peak_mib < 50, "peak RSS {peak_mib} MiB");
}
