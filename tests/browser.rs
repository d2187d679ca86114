//! The dashboard in a real browser: Debian's Chromium, headless, driven through ChromeDriver
//! (both installed by `deploy/dev.sh test`), against a real photoq. A person's path: sign in
//! (a wrong key first), upload through the page and watch the batch complete live, open a
//! photo, redrive a dead one, sign in as an operator, and use it on a phone-sized screen.
//! A screenshot of every page is saved under the test's target directory
//! (`CARGO_TARGET_TMPDIR/screenshots`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture::Fixture;
use common::{corpus_dir, TestApp};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// One attempt, so a failed download is dead at once (downloads from the fixture:
/// `FETCH_CONFIG`).
const CONFIG: &str = "[retry]\nmax_attempts = 1";
/// How long the page may take to show what the service did.
const PAGE_WAIT: Duration = Duration::from_secs(60);

/// ChromeDriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    async fn start() -> Driver {
        let port = common::free_port();
        // A process group of its own: on drop the whole group goes, the Chromium it started
        // included, even when a failed test never closed its session.
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (deploy/dev.sh test installs chromium-driver)");
        let profile =
            std::env::temp_dir().join(format!("photoq-chromium-{}", uuid::Uuid::new_v4()));
        let driver = Driver {
            child,
            port,
            profile,
        };
        let http = common::http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
            {
                let status: Value = res.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless Chromium session.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Saves a screenshot of the page as `NN-name.png`.
async fn screenshot(browser: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
}

async fn css(browser: &Client, selector: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector} never appeared: {e}"))
}

/// Waits until `script` (a function body returning a boolean) returns true in the page.
async fn until(browser: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let value = browser.execute(script, vec![]).await.expect("script runs");
        if value == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never true");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(browser: &Client, selector: &str, what: &str) {
    css(browser, selector)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

async fn text(browser: &Client, selector: &str) -> String {
    css(browser, selector).await.text().await.expect("text")
}

async fn sign_in(browser: &Client, key: &str) {
    let input = css(browser, "#api-key").await;
    input.clear().await.expect("clear");
    // Typed and submitted from the keyboard (Enter), as a person would.
    input
        .send_keys(&format!("{key}\u{E007}"))
        .await
        .expect("type the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uses_the_dashboard() {
    let app = TestApp::builder()
        .config(common::fixture::FETCH_CONFIG)
        .config(CONFIG)
        .start()
        .await;
    let fx = Fixture::start().await;
    let pool = photoq::db::pool(&app.config.database).expect("pool");
    let (_, operator_key) = photoq::auth::create_key(&pool, "ops", photoq::auth::Scopes::OPERATOR)
        .await
        .expect("operator key");
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/dashboard"))
        .await
        .expect("dashboard opens");

    // Sign in: a wrong key is refused with a message, the right one opens the dashboard.
    css(&browser, "#sign-in:not([hidden])").await;
    for signed_in_only in ["#nav", "#sign-out"] {
        let element = css(&browser, signed_in_only).await;
        assert!(
            !element.is_displayed().await.expect("displayed"),
            "{signed_in_only} is not shown before signing in"
        );
    }
    screenshot(&browser, "01-sign-in").await;
    sign_in(&browser, "pq_not_a_key").await;
    until(
        &browser,
        "the wrong key is refused",
        "return document.getElementById('sign-in-error').textContent.includes('not accepted')",
    )
    .await;
    sign_in(&browser, &app.key).await;
    css(&browser, "#nav:not([hidden])").await;
    assert_eq!(text(&browser, "#key-name").await, "test");
    let operator_link = css(&browser, "#nav-operator").await;
    assert!(
        !operator_link.is_displayed().await.expect("displayed"),
        "a client key sees no operator view"
    );
    let stored: Value = browser
        .execute("return sessionStorage.getItem('photoq.key')", vec![])
        .await
        .expect("script");
    assert_eq!(stored, json!(app.key), "the key is kept in session storage");
    let local: Value = browser
        .execute("return localStorage.length", vec![])
        .await
        .expect("script");
    assert_eq!(local, json!(0), "and nowhere else");
    until(
        &browser,
        "every input has a label",
        "return [...document.querySelectorAll('input')].every(i => i.labels.length > 0)",
    )
    .await;

    // Upload two photos through the page; the batch page follows them to completion from
    // the event stream (it does not poll).
    let files = ["Canon_40D.jpg", "Nikon_D70.jpg"]
        .map(|f| {
            // ChromeDriver takes canonical paths only.
            let path = corpus_dir().join("jpg").join(f);
            path.canonicalize()
                .expect("corpus file")
                .display()
                .to_string()
        })
        .join("\n");
    css(&browser, "#upload-files")
        .await
        .send_keys(&files)
        .await
        .expect("choose files");
    click(&browser, "#upload-files ~ button[type=submit]", "upload").await;
    css(&browser, "#batch-counts").await;
    let url = browser.current_url().await.expect("url");
    let batch_id = url
        .fragment()
        .and_then(|f| f.strip_prefix("/batches/"))
        .expect("the batch page")
        .to_owned();
    css(&browser, "section.card p .state[data-state='completed']").await;
    until(
        &browser,
        "the progress bar is full",
        "const p = document.querySelector('progress'); return p.value === 2 && p.max === 2",
    )
    .await;
    let batch = app.get_json(&format!("/v1/batches/{batch_id}")).await;
    assert_eq!(batch["completed"], 2, "{batch}");
    screenshot(&browser, "02-batch").await;

    // The overview: the charts have drawn the photos that just finished, and the batch is
    // among the recent ones.
    click(&browser, "nav a[data-view='overview']", "overview").await;
    css(
        &browser,
        &format!("tr[data-batch='{batch_id}'][data-state='completed']"),
    )
    .await;
    // The throughput chart counted the two completions from the event stream.
    until(
        &browser,
        "the throughput chart saw the photos finish",
        "const charts = document.querySelectorAll('svg.chart'); \
         return charts.length === 2 && Number(charts[1].dataset.peak) > 0 \
           && charts[1].getAttribute('aria-label').startsWith('Finished: ')",
    )
    .await;
    screenshot(&browser, "03-overview").await;
    browser
        .goto(&app.url(&format!("/dashboard#/batches/{batch_id}")))
        .await
        .expect("back to the batch");

    // A photo's page: its variants load, its EXIF and its attempt are shown.
    click(&browser, "tr[data-photo] a", "open a photo").await;
    css(&browser, ".variants img").await;
    until(
        &browser,
        "every variant image loads",
        "const imgs = [...document.querySelectorAll('.variants img')]; \
         return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)",
    )
    .await;
    // EXIF as a list of names and values; the camera's make among them.
    until(
        &browser,
        "the camera's make is shown",
        "const dts = [...document.querySelectorAll('dl.exif dt')]; \
         const make = dts.find(dt => dt.textContent === 'make'); \
         return !!make && /canon|nikon/i.test(make.nextElementSibling.textContent)",
    )
    .await;
    let attempts = text(&browser, "main section:last-of-type tbody").await;
    assert!(
        attempts.contains("completed"),
        "the attempt is listed: {attempts}"
    );
    until(
        &browser,
        "the photo page fits the window",
        "return document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    screenshot(&browser, "04-photo").await;

    // A dead letter (its download failed and there is one attempt), redriven from the page.
    let import = app
        .client
        .post(app.url("/v1/imports"))
        .bearer_auth(&app.key)
        .json(&json!({"products": [
            {"external_id": "sku-1", "images": [fx.url("/flaky/dash/Canon_40D.jpg")]}
        ]}))
        .send()
        .await
        .expect("import");
    assert_eq!(import.status(), 202);
    let import: Value = import.json().await.expect("json");
    let dead_id = import["products"][0]["images"][0]["id"]
        .as_str()
        .expect("image id")
        .to_owned();
    browser
        .goto(&app.url("/dashboard#/dead-letters"))
        .await
        .expect("dead letters");
    css(&browser, &format!("tr[data-photo='{dead_id}']")).await;
    screenshot(&browser, "05-dead-letters").await;
    click(&browser, "#redrive-all", "redrive").await;
    css(&browser, "#no-dead").await;
    until(
        &browser,
        "the redrive is confirmed",
        "return document.querySelector('main').textContent.includes('1 photo(s) queued again')",
    )
    .await;
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let photo = app.get_json(&format!("/v1/photos/{dead_id}")).await;
        if photo["state"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the redriven photo: {photo}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The operator view: aggregates for an operator key, and none of the client's photos.
    click(&browser, "#sign-out", "sign out").await;
    sign_in(&browser, &operator_key).await;
    click(&browser, "#nav-operator:not([hidden])", "operator view").await;
    until(
        &browser,
        "the operator view lists workers",
        "const text = document.querySelector('main').textContent; \
         return text.includes('Workers seen') && text.includes('interactive') \
           && text.includes('bulk') && document.querySelectorAll('main table').length >= 2",
    )
    .await;
    let page = text(&browser, "main").await;
    assert!(
        !page.contains(&batch_id) && !page.contains(&dead_id),
        "no owner's photos in the operator view: {page}"
    );
    screenshot(&browser, "06-operator").await;

    // A phone-sized screen: nothing wider than the screen.
    click(&browser, "#sign-out", "sign out").await;
    sign_in(&browser, &app.key).await;
    css(&browser, "#nav:not([hidden])").await;
    browser.set_window_size(390, 844).await.expect("resize");
    browser
        .goto(&app.url("/dashboard#/batches"))
        .await
        .expect("batches");
    css(&browser, "tr[data-batch]").await;
    // A batch uploaded elsewhere appears in the open list, and completes there.
    let elsewhere = app
        .upload_ok(vec![(
            "e.jpg".to_owned(),
            common::read(corpus_dir().join("jpg/Canon_40D.jpg")),
        )])
        .await;
    let elsewhere = elsewhere["batch_id"].as_str().expect("batch id");
    css(
        &browser,
        &format!("tr[data-batch='{elsewhere}'][data-state='completed']"),
    )
    .await;
    until(
        &browser,
        "the page fits a phone's width",
        "return document.documentElement.scrollWidth <= window.innerWidth",
    )
    .await;
    screenshot(&browser, "07-phone").await;

    browser.close().await.expect("close");
    drop(driver);
    fx.stop().await;
    app.finish().await;
}
