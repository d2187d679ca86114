//! The outgoing-HTTP guard (`photoq::fetch`) against a real server on loopback: what
//! suppliers do to downloads, and the SSRF table — URLs that must be refused without any
//! connection reaching their target.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fixture::Fixture;
use photoq::config::{Config, FetchConfig};
use photoq::fetch::{FetchError, Fetcher, StaticLookup};
use photoq::pipeline::sniff::SourceFormat;

const IMAGE: &str = "Canon_40D.jpg";

/// The defaults, with short timeouts, and the given allow-list.
fn config(allow: &[&str]) -> FetchConfig {
    let mut c = Config::load(None).expect("defaults").fetch;
    c.connect_timeout_ms = 1000;
    c.read_timeout_ms = 400;
    c.total_timeout_ms = 3000;
    c.max_bytes = 2 * 1024 * 1024;
    c.allow = allow.iter().map(|s| (*s).to_owned()).collect();
    c
}

/// Names the tests resolve (there is no public DNS here).
fn names() -> StaticLookup {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let table: HashMap<String, Vec<IpAddr>> = [
        ("fixture.test", vec![ip("127.0.0.1")]),
        ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
        ("localhost.", vec![ip("127.0.0.1")]),
        ("evil.test", vec![ip("127.0.0.1")]),
        ("rebind.test", vec![ip("93.184.216.34"), ip("127.0.0.1")]),
        ("v6.test", vec![ip("::1")]),
        ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ("metadata.test", vec![ip("169.254.169.254")]),
        ("private.test", vec![ip("10.0.0.7")]),
        ("zero.test", vec![ip("0.0.0.0")]),
    ]
    .into_iter()
    .map(|(n, a)| (n.to_owned(), a))
    .collect();
    StaticLookup(table)
}

fn fetcher(config: &FetchConfig) -> Fetcher {
    Fetcher::new(config, Arc::new(names())).expect("fetcher")
}

/// A fetcher that may reach the fixture on 127.0.0.1 directly.
fn open_fetcher() -> Fetcher {
    fetcher(&config(&["127.0.0.1"]))
}

async fn fetch_err(f: &Fetcher, url: &str) -> FetchError {
    match f.image(url).await {
        Ok(_) => panic!("{url} was fetched"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn downloads_an_image_and_sniffs_it_whatever_its_declared_type() {
    let fx = Fixture::start().await;
    let f = open_fetcher();
    let want = common::read(common::corpus_dir().join("jpg").join(IMAGE));
    let got = f.image(&fx.url(&format!("/img/{IMAGE}"))).await.unwrap();
    assert_eq!(got.format, SourceFormat::Jpeg);
    assert_eq!(got.bytes.as_ref(), want.as_slice());
    // Declared as text: judged by its bytes, accepted.
    let got = f
        .image(&fx.url(&format!("/typed/text/plain/{IMAGE}")))
        .await
        .unwrap();
    assert_eq!(got.bytes.len(), want.len());
    fx.stop().await;
}

#[tokio::test]
async fn what_is_not_an_image_fails_permanently() {
    let fx = Fixture::start().await;
    let f = open_fetcher();
    for path in ["/html-as-jpeg", "/page"] {
        let e = fetch_err(&f, &fx.url(path)).await;
        assert_eq!(e.code(), "download_not_an_image", "{path}: {e}");
        assert!(!e.is_transient());
    }
    fx.stop().await;
}

#[tokio::test]
async fn statuses_are_sorted_into_permanent_and_transient() {
    let fx = Fixture::start().await;
    let f = open_fetcher();
    for (code, want, transient) in [
        (404, "download_not_found", false),
        (410, "download_gone", false),
        (403, "download_http_status", false),
        (500, "download_server_error", true),
        (503, "download_server_error", true),
        (408, "download_http_status", true),
    ] {
        let e = fetch_err(&f, &fx.url(&format!("/status/{code}"))).await;
        assert_eq!((e.code(), e.is_transient()), (want, transient), "{code}");
    }
    // 500, then the image on the next try.
    let url = fx.url(&format!("/flaky/a/{IMAGE}"));
    assert_eq!(fetch_err(&f, &url).await.code(), "download_server_error");
    assert!(f.image(&url).await.is_ok());
    assert_eq!(fx.hits(&format!("/flaky/a/{IMAGE}")), 2);
    // 429 with Retry-After: transient, and the wait is kept.
    let url = fx.url(&format!("/limited/a/{IMAGE}"));
    let e = fetch_err(&f, &url).await;
    assert_eq!(e.code(), "download_rate_limited");
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    fx.stop().await;
}

#[tokio::test]
async fn slow_endless_and_huge_bodies_are_cut_off() {
    let fx = Fixture::start().await;
    let f = open_fetcher();
    let e = fetch_err(&f, &fx.url("/slow")).await;
    assert_eq!(e.code(), "download_timeout", "{e}");
    assert!(e.is_transient());
    let e = fetch_err(&f, &fx.url("/endless")).await;
    assert_eq!(e.code(), "download_too_large", "{e}");
    assert!(!e.is_transient());
    let e = fetch_err(&f, &fx.url("/declared-huge")).await;
    assert_eq!(e.code(), "download_too_large", "{e}");
    // A total limit holds even when bytes keep coming.
    let mut c = config(&["127.0.0.1"]);
    c.max_bytes = u64::MAX / 2;
    c.total_timeout_ms = 500;
    let e = fetch_err(&fetcher(&c), &fx.url("/endless")).await;
    assert_eq!(e.code(), "download_timeout", "{e}");
    fx.stop().await;
}

#[tokio::test]
async fn redirects_are_followed_up_to_the_limit() {
    let fx = Fixture::start().await;
    let f = open_fetcher();
    let got = f
        .image(&fx.url(&format!("/chain/5/{IMAGE}")))
        .await
        .unwrap();
    assert_eq!(got.url.path(), format!("/chain/0/{IMAGE}"));
    let e = fetch_err(&f, &fx.url(&format!("/chain/6/{IMAGE}"))).await;
    assert_eq!(e.code(), "download_too_many_redirects");
    assert_eq!(fx.hits(&format!("/chain/0/{IMAGE}")), 1);
    fx.stop().await;
}

#[tokio::test]
async fn one_host_gets_at_most_its_share_of_concurrent_requests() {
    let fx = Fixture::start().await;
    let mut c = config(&["127.0.0.1"]);
    c.per_host = 2;
    let f = fetcher(&c);
    let url = fx.url(&format!("/hold/{IMAGE}"));
    let all = futures_util::future::join_all((0..6).map(|_| f.image(&url))).await;
    assert!(all.iter().all(Result::is_ok));
    assert_eq!(fx.hits(&format!("/hold/{IMAGE}")), 6);
    assert!(fx.max_in_flight() <= 2, "{} at once", fx.max_in_flight());
    fx.stop().await;
}

/// Counts every connection made to it, on IPv4 and IPv6 loopback alike.
struct Recorder {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        // Dual-stack: also takes 127.0.0.1 and ::ffff:127.0.0.1, and 0.0.0.0 (which Linux
        // connects to the local host).
        let listener = TcpListener::bind("[::]:0").expect("recorder binds");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if conn.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Recorder { port, connections }
    }

    fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Connects directly and waits until the recorder has counted it.
fn control_connection(addr: &str, rec: &Recorder) {
    let before = rec.count();
    let _c = std::net::TcpStream::connect(addr).expect("control connection");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rec.count() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "recorder missed {addr}"
        );
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn ssrf_table_is_refused_without_any_connection() {
    let fx = Fixture::start().await;
    let rec = Recorder::start();
    let r = rec.port;
    let p = fx.port;
    // The recorder does see what reaches it, by every loopback spelling.
    for addr in [
        format!("127.0.0.1:{r}"),
        format!("[::1]:{r}"),
        format!("0.0.0.0:{r}"),
    ] {
        control_connection(&addr, &rec);
    }
    let seen_before = rec.count();

    let via = |target: &str| format!("http://fixture.test:{p}/to?url={}", urlencode(target));
    let direct = [
        // Loopback, spelled every way a URL parser accepts.
        format!("http://127.0.0.1:{r}/"),
        format!("http://127.1:{r}/"),
        format!("http://2130706433:{r}/"),
        format!("http://0x7f000001:{r}/"),
        format!("http://0x7f.0.0.1:{r}/"),
        format!("http://0177.0.0.1:{r}/"),
        format!("http://017700000001:{r}/"),
        format!("http://127.000.000.001:{r}/"),
        format!("http://%31%32%37.0.0.1:{r}/"),
        format!("http://127.0.0.1.:{r}/"),
        format!("https://127.0.0.1:{r}/"),
        // Unspecified: Linux connects it to the local host (imgproxy's CVE-2025-24354).
        format!("http://0.0.0.0:{r}/"),
        format!("http://0:{r}/"),
        format!("http://[::]:{r}/"),
        // IPv6 loopback, and IPv4 loopback inside IPv6.
        format!("http://[::1]:{r}/"),
        format!("http://[0:0:0:0:0:0:0:1]:{r}/"),
        format!("http://[::ffff:127.0.0.1]:{r}/"),
        format!("http://[::ffff:7f00:1]:{r}/"),
        format!("http://[::127.0.0.1]:{r}/"),
        format!("http://[64:ff9b::7f00:1]:{r}/"),
        format!("http://[2002:7f00:1::]:{r}/"),
        // Names that resolve to loopback, or to a public and a loopback address.
        format!("http://localhost:{r}/"),
        format!("http://LOCALHOST:{r}/"),
        format!("http://localhost.:{r}/"),
        format!("http://evil.test:{r}/"),
        format!("http://rebind.test:{r}/"),
        format!("http://v6.test:{r}/"),
        format!("http://mapped.test:{r}/"),
        format!("http://zero.test:{r}/"),
        // Credentials and `user@host` tricks.
        format!("http://user@127.0.0.1:{r}/"),
        format!("http://fixture.test@127.0.0.1:{r}/"),
        format!("http://fixture.test:{p}@127.0.0.1:{r}/"),
        format!("http://user:secret@fixture.test:{p}/img/{IMAGE}"),
        // Other schemes.
        format!("ftp://127.0.0.1:{r}/"),
        format!("gopher://127.0.0.1:{r}/_GET"),
        "file:///etc/passwd".to_owned(),
        format!("ws://127.0.0.1:{r}/"),
        "data:image/jpeg;base64,/9j/4AAQ".to_owned(),
        // Private, link-local, shared, multicast, documentation and reserved ranges.
        "http://10.0.0.1/".to_owned(),
        "http://172.16.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://metadata.test/latest/meta-data/".to_owned(),
        "http://private.test/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://224.0.0.1/".to_owned(),
        "http://255.255.255.255/".to_owned(),
        "http://192.0.2.10/".to_owned(),
        "http://198.51.100.7/".to_owned(),
        "http://203.0.113.9/".to_owned(),
        "http://198.18.0.1/".to_owned(),
        "http://240.0.0.1/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://[ff02::1]/".to_owned(),
        "http://[2001:db8::1]/".to_owned(),
        "http://[::ffff:10.0.0.1]/".to_owned(),
        "http://[::ffff:a9fe:a9fe]/".to_owned(),
    ];
    let redirected = [
        via(&format!("http://127.0.0.1:{r}/")),
        via(&format!("http://2130706433:{r}/")),
        via(&format!("http://localhost:{r}/")),
        via(&format!("http://[::1]:{r}/")),
        via(&format!("http://0.0.0.0:{r}/")),
        via(&format!("http://evil.test:{r}/")),
        via(&format!("http://user@fixture.test:{p}/img/{IMAGE}")),
        via("http://169.254.169.254/latest/meta-data/"),
        via("file:///etc/passwd"),
        // Two hops: the second one is checked too.
        via(&via(&format!("http://127.1:{r}/"))),
    ];
    // The fixture is reached by name only: its address itself is not allowed.
    let f = fetcher(&config(&["fixture.test"]));
    assert!(
        f.image(&format!("http://fixture.test:{p}/img/{IMAGE}"))
            .await
            .is_ok(),
        "the allowed fixture is reachable"
    );
    let refusals = [
        "download_refused_address",
        "download_bad_scheme",
        "download_credentials",
    ];
    let mut table = 0;
    for url in direct.iter().chain(&redirected) {
        let e = fetch_err(&f, url).await;
        assert!(refusals.contains(&e.code()), "{url}: {} ({e})", e.code());
        assert!(!e.is_transient(), "{url}");
        table += 1;
    }
    assert!(table >= 40, "{table} cases");
    // Every redirect was served by the fixture, and went nowhere.
    assert!(fx.hits("/to") >= redirected.len());
    assert_eq!(
        rec.count(),
        seen_before,
        "a refused URL reached the recorder"
    );
    fx.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
