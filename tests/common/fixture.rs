//! A real HTTP server on loopback serving corpus images, and misbehaving as suppliers do:
//! slow and endless bodies, redirect chains, error statuses, rate limits, wrong types; and a
//! webhook receiver that records what it is sent. photoq reaches it through `fetch.allow`.
//! It listens on 127.0.0.1 and on 127.0.0.2 (loopback too, for a private address that is
//! not allow-listed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use futures_util::stream;

/// Configuration that lets photoq download from the fixture (on 127.0.0.1), with short
/// timeouts.
pub const FETCH_CONFIG: &str = r#"
[fetch]
allow = ["127.0.0.1"]
connect_timeout_ms = 1000
read_timeout_ms = 1000
total_timeout_ms = 5000
"#;

/// Bytes of each chunk of the endless body.
const CHUNK: usize = 64 * 1024;
/// How long `/hold/...` keeps each request open, so concurrent ones overlap.
const HOLD: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Shared {
    /// Where `/img/{name}` and the others find their files.
    dir: std::path::PathBuf,
    hits: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Every POST to `/hook/...`: its path, headers and body.
    received: Mutex<Vec<Received>>,
}

/// A request the webhook receiver got.
#[derive(Clone)]
pub struct Received {
    pub path: String,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: Bytes,
}

pub struct Fixture {
    pub port: u16,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

impl Fixture {
    /// Serves the corpus's camera JPEGs.
    pub async fn start() -> Fixture {
        Self::serving(super::corpus_dir().join("jpg")).await
    }

    /// Serves the files of `dir`.
    pub async fn serving(dir: std::path::PathBuf) -> Fixture {
        let shared = Arc::new(Shared {
            dir,
            ..Shared::default()
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/img/{name}", web::get().to(img))
                .route("/typed/{type}/{sub}/{name}", web::get().to(typed))
                .route("/html-as-jpeg", web::get().to(html_as_jpeg))
                .route("/page", web::get().to(page))
                .route("/slow", web::get().to(slow))
                .route("/endless", web::get().to(endless))
                .route("/declared-huge", web::get().to(declared_huge))
                .route("/chain/{n}/{name}", web::get().to(chain))
                .route("/to", web::get().to(redirect_to))
                .route("/status/{code}", web::get().to(status))
                .route("/flaky/{key}/{name}", web::get().to(flaky))
                .route("/limited/{key}/{name}", web::get().to(limited))
                .route("/hold/{name}", web::get().to(hold))
                .route("/hook/{fails}/{name}", web::post().to(hook))
        })
        .workers(2)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("fixture binds");
        let port = server.addrs()[0].port();
        let server = server
            .bind(("127.0.0.2", port))
            .expect("fixture binds 127.0.0.2");
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Fixture {
            port,
            shared,
            handle,
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests seen for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request the webhook receiver got, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Most `/hold/...` requests open at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn count(shared: &Shared, req: &HttpRequest) -> usize {
    let mut hits = shared.hits.lock().unwrap();
    let n = hits.entry(req.path().to_owned()).or_default();
    *n += 1;
    *n
}

fn corpus(s: &Shared, name: &str) -> Option<Vec<u8>> {
    if name.contains('/') || name.contains("..") {
        return None;
    }
    std::fs::read(s.dir.join(name)).ok()
}

fn jpeg(s: &Shared, name: &str) -> HttpResponse {
    match corpus(s, name) {
        Some(b) => HttpResponse::Ok().content_type("image/jpeg").body(b),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn img(s: web::Data<Shared>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    count(&s, &req);
    jpeg(&s, &name)
}

/// A corpus image declared as any type (`/typed/text/plain/x.jpg`).
async fn typed(
    s: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    count(&s, &req);
    let (t, sub, name) = path.into_inner();
    match corpus(&s, &name) {
        Some(b) => HttpResponse::Ok()
            .insert_header(("content-type", format!("{t}/{sub}")))
            .body(b),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn html_as_jpeg(s: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    count(&s, &req);
    HttpResponse::Ok()
        .content_type("image/jpeg")
        .body("<!doctype html><html><body>Not found, but 200</body></html>")
}

async fn page(s: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    count(&s, &req);
    HttpResponse::Ok()
        .content_type("text/html")
        .body("<!doctype html><html><body>a product page</body></html>")
}

/// Headers and the first bytes of a JPEG, then nothing for a long time.
async fn slow(s: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    count(&s, &req);
    let body = stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((
                Ok::<_, actix_web::Error>(Bytes::from_static(&[0xFF, 0xD8, 0xFF, 0xE0])),
                1,
            )),
            _ => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                None
            }
        }
    });
    HttpResponse::Ok()
        .content_type("image/jpeg")
        .streaming(body)
}

/// A JPEG start, then zeros forever, without a length.
async fn endless(s: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    count(&s, &req);
    let body = stream::unfold(true, |first| async move {
        let mut chunk = vec![0u8; CHUNK];
        if first {
            chunk[..4].copy_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
        }
        Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), false))
    });
    HttpResponse::Ok()
        .content_type("image/jpeg")
        .streaming(body)
}

/// Declares 1 GiB up front.
async fn declared_huge(s: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    count(&s, &req);
    let body = stream::repeat_with(|| Ok::<_, actix_web::Error>(Bytes::from(vec![0u8; CHUNK])));
    HttpResponse::Ok()
        .content_type("image/jpeg")
        .body(actix_web::body::SizedStream::new(1 << 30, body))
}

/// `n` redirects (relative Locations), then the image.
async fn chain(
    s: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<(u32, String)>,
) -> HttpResponse {
    count(&s, &req);
    let (n, name) = path.into_inner();
    if n == 0 {
        return jpeg(&s, &name);
    }
    HttpResponse::Found()
        .insert_header(("location", format!("/chain/{}/{name}", n - 1)))
        .finish()
}

#[derive(serde::Deserialize)]
struct To {
    url: String,
}

/// A redirect to any URL.
async fn redirect_to(s: web::Data<Shared>, req: HttpRequest, q: web::Query<To>) -> HttpResponse {
    count(&s, &req);
    HttpResponse::Found()
        .insert_header(("location", q.url.clone()))
        .finish()
}

async fn status(s: web::Data<Shared>, req: HttpRequest, code: web::Path<u16>) -> HttpResponse {
    count(&s, &req);
    let code = actix_web::http::StatusCode::from_u16(*code).unwrap();
    HttpResponse::build(code).body("no image here")
}

/// 500 on the first request, the image after.
async fn flaky(
    s: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if count(&s, &req) == 1 {
        return HttpResponse::InternalServerError().body("try again");
    }
    jpeg(&s, &path.1)
}

/// 429 with `Retry-After: 1` on the first request, the image after.
async fn limited(
    s: web::Data<Shared>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if count(&s, &req) == 1 {
        return HttpResponse::TooManyRequests()
            .insert_header(("retry-after", "1"))
            .body("slow down");
    }
    jpeg(&s, &path.1)
}

/// The image, after holding the request open a moment; records how many were open at once.
async fn hold(s: web::Data<Shared>, req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    count(&s, &req);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(HOLD).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    jpeg(&s, &name)
}

/// `POST /hook/{fails}/{name}`: a webhook receiver that records the request, answers 500 to
/// the first `fails` requests on the path, then 204.
async fn hook(req: HttpRequest, s: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let n = count(&s, &req);
    s.received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        headers: req.headers().clone(),
        body,
    });
    let fails: usize = req.match_info().query("fails").parse().unwrap_or(0);
    if n <= fails {
        HttpResponse::InternalServerError().body("not yet")
    } else {
        HttpResponse::NoContent().finish()
    }
}
